"""The Pruner base class, its per-run context, and the one registry every entry point reads.

A pruner registered with ``@register_pruner("name")`` appears in the CLI (with its options as
``--name-option`` flags), in the harness and sweep, in the report, and in the contract tests.
"""

from __future__ import annotations

import re
import typing
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type

import numpy as np
import torch
from torch import nn

from reflowbench.channels import ChannelGroup
from reflowbench.config import SparsityPattern, type_name, value_matches
from reflowbench.errors import ConfigError
from reflowbench.pruners.masks import SCOPES, Masks
from reflowbench.schema.results import option_in_key
from reflowbench.schema.targets import TargetSet
from reflowbench.utils.cost import CostLedger
from reflowbench.utils.io import atomic_write
from reflowbench.utils.known_names import refuse_unknown


@dataclass
class StageCheckpoint:
    """Where a multi-step pruner keeps the state after each finished step of one run (``torch.save`` of a dict: the
    steps done, keep-masks and target weights on the CPU, the notes and phase costs so far), so an interrupted run
    resumes at its next step instead of its first. ``key`` is the run key: a file written for other settings is ignored.
    The harness removes the file once the run's record is written."""

    path: Path
    key: str

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state for this run key, or None (no file, another key, or an unreadable file: start over)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain containers only: no code runs on load
        except Exception:  # a torn or foreign file (or one holding objects): the steps are recomputed, never trusted
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: Dict[str, Any]) -> None:
        """Write ``state`` (plus the key) atomically: readers see the previous step's file or this one, whole."""
        atomic_write(self.path, lambda tmp: torch.save({**state, "key": self.key}, tmp))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class WorkingSet:
    """What a pruner holds at its peak besides the model (bytes), what that is, and the settings that lower it: the
    suite's cost plan reads it before anything runs (an estimate from the pruner's own formulas, not a measurement)."""

    bytes: int = 0
    what: str = "no working memory beyond the model"
    knobs: str = ""


@dataclass
class NoOptions:
    """A pruner without options."""


@dataclass
class PruneContext:
    """What a pruner may use besides the model: device, seed, the Fisher subset of the training
    split (never the test split), the cost ledger, a memory budget and a per-suite cache.

    ``fisher_indices`` are indices into ``train`` reserved for gradients (disjoint from the REFLOW
    calibration images); ``heldout_indices`` are training images for loss-based scoring.
    """

    device: torch.device
    seed: int
    ledger: CostLedger = field(default_factory=CostLedger)
    train: Any = None
    fisher_indices: Optional[np.ndarray] = None
    heldout_indices: Optional[np.ndarray] = None
    memory_budget_gb: float = 8.0
    cache: Dict[Any, Any] = field(default_factory=dict)
    progress: bool = False
    notes: Dict[str, Any] = field(default_factory=dict)
    log: Optional[Callable[[str], None]] = None  # where pruners announce large allocations
    # whether a later run of this suite reuses this seed's dense curvature (the harness knows its plan): when False the
    # pruner neither keeps it in ``cache`` nor leaves it there, so it is freed before the evaluations of this run
    keep_curvature: bool = True
    stages: Optional[StageCheckpoint] = None  # where a multi-step pruner saves each finished step (None: not saved)
    pattern: SparsityPattern = field(default_factory=SparsityPattern)  # unstructured, N:M or channels (only for pruners whose PATTERNS has it)
    channel_groups: Sequence[ChannelGroup] = ()  # under --pattern channels: the prunable channel groups (channels/groups.py)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self.ledger.phase(name, self.device):
            yield

    def fisher_batches(self, batch_size: int, count: Optional[int] = None, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``count`` Fisher images from the ``start``-th on (fixed order, no augmentation)."""
        if self.train is None or self.fisher_indices is None:
            raise ConfigError("this pruner needs training images for gradients, but the context has no Fisher subset")
        indices = self.fisher_indices[start:] if count is None else self.fisher_indices[start : start + count]
        if count is not None and len(indices) < count:
            raise ConfigError(f"the pruner asked for {count} Fisher images but only {len(self.fisher_indices)} were reserved")
        return self.train.batches(indices, batch_size, shuffle=False, augment=False, seed=self.seed)


class Pruner(ABC):
    """Base class. Subclasses set ``Options`` (a dataclass) and implement :meth:`prune`.

    ``prune`` may update kept weights in place and must return keep-masks for every target; the
    harness applies and verifies them (pruned weights exactly zero, exact requested sparsity).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    Options: ClassVar[Type[Any]] = NoOptions
    KEY_NEUTRAL: ClassVar[Tuple[str, ...]] = ()  # options left out of a run's key (see :func:`key_options`)
    # Where each option's default comes from (option -> a section of ../shared/REFERENCES.md, or "suite choice: why"):
    # the "reference settings" table of a comparison prints it beside the value (see :func:`option_sources`).
    REFERENCE: ClassVar[Dict[str, str]] = {}
    # Whether the defaults are the authors' published settings (a report then names a configuration with exactly these
    # options "reference"); False where they are a settings search's choice (the layer-wise pruners: their published
    # setting is a suite's explicit reference row instead).
    DEFAULTS_PUBLISHED: ClassVar[bool] = True
    # The sparsity patterns this pruner can produce ("unstructured", "n:m", "channels"); the harness refuses any other --pattern for it.
    PATTERNS: ClassVar[Tuple[str, ...]] = ("unstructured",)

    def __init__(self, options: Optional[Any] = None) -> None:
        self.options = options if options is not None else self.Options()
        self.check_options()

    def check_options(self) -> None:
        """Raise :class:`ConfigError` for an invalid option (called on construction, before any work).

        The base checks ``scope`` where the options have one; override and call ``super()`` to add more.
        """
        scope = getattr(self.options, "scope", None)
        if scope is not None and scope not in SCOPES:
            raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")

    @classmethod
    def flag(cls, option: str) -> str:
        """The command-line flag of ``option``, e.g. ``--woodfisher-num-grads``."""
        return f"--{cls.name}-{option}".replace("_", "-")

    def unused_options(self) -> Set[str]:
        """The options these settings never read (e.g. IHT's iterations under a backsolve): still in the run key, but
        listed as "not used" in the reference-settings tables."""
        return set()

    def fisher_images(self) -> int:
        """Training images this pruner draws gradients from (0 when it needs none)."""
        return 0

    def working_set(self, targets: TargetSet, activation_bytes: int, budget_bytes: int = 0) -> WorkingSet:
        """Its peak memory besides the model, for the cost plan (``activation_bytes``: what one image keeps for a backward
        pass; ``budget_bytes``: --memory-budget-gb, which sizes what the pruner sizes from it). Pruners with large state
        (gradients, curvature, Hessians) override it."""
        return WorkingSet()

    def forward_passes(self, targets: TargetSet) -> Tuple[float, float]:
        """(images through a forward pass, images through a forward and backward pass) one run of this pruner costs,
        for the cost plan's time estimate (linear algebra not counted)."""
        return 0.0, 0.0

    def pattern_refusal(self, pattern: SparsityPattern) -> Optional[str]:
        """Why this pruner, with these options, cannot produce ``pattern`` (one line), or None when it can."""
        if pattern.kind in self.PATTERNS:
            return None
        return "cannot prune to this pattern yet"

    def mask_scope(self) -> str:
        """'global' when the sparsity is exact over all targets, 'layer' when exact per layer."""
        return getattr(self.options, "scope", "global")

    @abstractmethod
    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        """Return keep-masks (param name -> bool tensor) with the requested sparsity."""


PRUNERS: Dict[str, Type[Pruner]] = {}


def key_options(pruner: "Pruner") -> Dict[str, Any]:
    """The pruner's options as they enter a run's key: all but those in ``KEY_NEUTRAL`` (settings of how the work is
    done that leave its result unchanged) and options added later at the value that reproduces the earlier behaviour
    (``schema.results.LATER_OPTIONS``), so that adding such a setting keeps every finished run's key."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(pruner.options).items() if k not in pruner.KEY_NEUTRAL and option_in_key(k, v)}


NO_SOURCE = "suite choice (no published value named)"
UNUSED = "not used with these settings"


def option_sources(pruner: "Pruner", overrides: Optional[Dict[str, str]] = None) -> List[Tuple[str, Any, str]]:
    """(option, value, where the value comes from) for every option of ``pruner`` that enters a run's key: :data:`UNUSED`
    for the options these settings never read, then the ``overrides`` (option -> source, for options a suite sets per
    model), then the class's ``REFERENCE`` for options at their default, else :data:`NO_SOURCE` (a non-default value
    without an override: "set by the run")."""
    from dataclasses import asdict

    defaults = asdict(type(pruner).Options())
    overrides = overrides or {}
    unused = pruner.unused_options()
    rows = []
    for name, value in key_options(pruner).items():
        if name in unused:
            source = UNUSED
        elif name in overrides:
            source = overrides[name]
        elif value == defaults.get(name):
            source = pruner.REFERENCE.get(name, NO_SOURCE)
        else:
            source = f"set by the run (the default {defaults.get(name)!r}: {pruner.REFERENCE.get(name, NO_SOURCE)})"
        rows.append((name, value, source))
    return rows


SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")  # a pruner's name is part of run file names and of --<name>-<option> flags


def _flags(cls: Type[Pruner], name: str) -> Dict[str, str]:
    """flag -> option for every option of ``cls`` registered as ``name``."""
    return {f"--{name}-{f.name}".replace("_", "-"): f.name for f in fields(cls.Options)}


def _check_registration(name: str, cls: Type[Pruner]) -> None:
    """Refuse, with one line naming the fix, a name that is taken, not a safe file name, or whose option flags collide
    with another pruner's (which would break every command, ``list`` included)."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"pruner name {name!r} (class {cls.__name__}) is not a safe name: it names run files and flags, so use lower-case "
            "letters, digits and + . _ - only, starting with a letter or digit (e.g. 'my-pruner')"
        )
    if name in PRUNERS and PRUNERS[name] is not cls:
        taken = PRUNERS[name]
        raise ConfigError(f"a pruner named {name!r} is already registered ({taken.__module__}.{taken.__name__}): register {cls.__name__} under another name")
    mine = _flags(cls, name)
    for other_name, other in PRUNERS.items():
        if other_name == name:
            continue
        clash = sorted(set(mine) & set(_flags(other, other_name)))
        if clash:
            raise ConfigError(
                f"pruner {name!r} (class {cls.__name__}): option flag {clash[0]} is also pruner {other_name!r}'s flag: rename the option or the pruner"
            )


def register_pruner(name: str, description: str = ""):
    """Class decorator: register a :class:`Pruner` subclass under ``name`` (checked: a safe, free name whose option flags
    are its own)."""

    def decorate(cls: Type[Pruner]) -> Type[Pruner]:
        _check_registration(name, cls)
        cls.name = name
        cls.description = description or (cls.__doc__ or "").strip().splitlines()[0]
        PRUNERS[name] = cls
        return cls

    return decorate


PLUGIN_GROUP = "reflowbench.pruners"
PLUGIN_ENV = "REFLOWBENCH_PLUGINS"


def load_plugins() -> List[str]:
    """Import third-party pruners: modules named in ``$REFLOWBENCH_PLUGINS`` (comma-separated) and
    entry points of group ``reflowbench.pruners``. Importing a module registers its pruners."""
    import importlib
    import os
    from functools import partial
    from importlib.metadata import entry_points

    loaded = []
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        _import_plugin(partial(importlib.import_module, module), f"{PLUGIN_ENV} names module {module!r}", f"fix it or remove it from {PLUGIN_ENV}")
        loaded.append(module)
    for entry in entry_points(group=PLUGIN_GROUP):
        _import_plugin(entry.load, f"the {PLUGIN_GROUP} entry point {entry.name!r} ({entry.value})", "fix the plugin or uninstall its package")
        loaded.append(entry.value)
    return loaded


def _import_plugin(load: Callable[[], Any], what: str, fix: str) -> None:
    """Run ``load`` (an import); any failure is a one-line :class:`ConfigError` naming the plugin, where it failed and ``fix``."""
    import traceback

    try:
        load()
    except ConfigError as exc:  # a registration refused (name taken, unsafe, flags that collide)
        raise ConfigError(f"{what}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"{what}, which cannot be imported ({exc}); fix PYTHONPATH or the name") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug, reported in one line instead of a traceback
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        raise ConfigError(f"{what}, which raised {type(exc).__name__}: {exc}{where} while being imported; {fix}") from None


def pruner_names() -> List[str]:
    return sorted(PRUNERS)


def get_pruner_class(name: str) -> Type[Pruner]:
    if name not in PRUNERS:
        raise ConfigError(f"unknown pruner {name!r}: choose from {', '.join(pruner_names())} (see `reflowbench list`)")
    return PRUNERS[name]


def make_pruner(name: str, overrides: Optional[Dict[str, Any]] = None) -> Pruner:
    """Instantiate pruner ``name`` with option overrides (unknown option names are an error)."""
    cls = get_pruner_class(name)
    refuse_unknown(overrides or {}, (f.name for f in fields(cls.Options)), f"pruner {name}", "option")
    hints = typing.get_type_hints(cls.Options)
    for option, value in (overrides or {}).items():
        if not value_matches(value, hints[option]):
            raise ConfigError(f"pruner {name}: option {option} ({cls.flag(option)}) must be {type_name(hints[option])}, got {value!r}")
    try:
        return cls(cls.Options(**(overrides or {})))
    except ConfigError as exc:
        hint = "" if f"--{name}-" in str(exc) else f" (set its options with {cls.flag('<option>')})"
        raise ConfigError(f"pruner {name}: {exc}{hint}") from None
