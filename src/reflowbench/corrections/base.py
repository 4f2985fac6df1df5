"""The Correction base class, what a correction may use, and the one registry every entry point reads.

A correction is a post-step applied to a pruned network (never to the dense one) with forward passes only: no
gradients, no labels. It may change normalisation statistics and affine parameters and rescale whole output channels
of a layer (weight rows and bias), never revive a pruned weight: the harness checks that every zero of every target
weight is still zero afterwards. ``@register_correction("name")`` makes it a ``--corrections`` value, a row of
results.csv and the report, and a case of the contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from reflowbench.config import CorrectionSpec
from reflowbench.errors import ConfigError, NoBatchNormError
from reflowbench.reflow import RecalibrationHandle
from reflowbench.reflow.moments import ChannelMoments, collect_split_moments
from reflowbench.reflow.staged import staged_layer_moments

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]
DenseMoments = Tuple[Dict[str, List[ChannelMoments]], int, int]  # {module: moments per part}, batches, images


@dataclass
class CorrectionContext:
    """What a correction may use besides the pruned model.

    ``dense``: the dense model (eval mode; read, never changed), whose modules have the pruned model's names.
    ``calibration``: a fresh iterator over the calibration batches on each call, the same images in the same order
    (the seed's REFLOW calibration range of the training split; never the test split).
    ``recalibrate``: REFLOW with the sweep's settings on a model, in place (BN running statistics re-estimated).
    ``layers``: names of the pruned layers (the target weights' modules), in forward order.
    ``moments_cache``: where :meth:`dense_moments` keeps what it measured (the sweep gives one per seed, shared by every
    run and correction of the seed: the dense model and the calibration images are the same for all of them).
    """

    dense: nn.Module
    calibration: Callable[[], Iterator[Tuple[torch.Tensor, torch.Tensor]]]
    recalibrate: Callable[[nn.Module], RecalibrationHandle]
    layers: List[str]
    device: torch.device
    moments_cache: Dict[Tuple[Tuple[str, ...], int], DenseMoments] = field(default_factory=dict)

    def layer_by_layer(self, model: nn.Module, names: Sequence[str], parts: int = 1) -> "LayerWalk":
        """(name, the layer's output moments per part) for the layers ``names`` of ``model`` in forward order, each
        measured on the calibration batches with the model as the caller left it after the previous item (a sequential
        correction corrects each layer in between). One forward pass in stages when it applies
        (:func:`~reflowbench.reflow.staged.staged_layer_moments`: same values), else a pass per layer cut short after
        it; the walk's :attr:`LayerWalk.passes` says how many passes it makes."""
        staged = staged_layer_moments(model, self.calibration, names, parts, self.device)
        if staged is not None:
            return LayerWalk(staged, passes=1)
        return LayerWalk(self._pass_per_layer(model, names, parts), passes=len(names))

    def _pass_per_layer(self, model: nn.Module, names: Sequence[str], parts: int) -> Iterator[Tuple[str, List[ChannelMoments]]]:
        """:meth:`layer_by_layer` without stages: a pass over the calibration batches per layer, cut short after it."""
        modules = dict(model.named_modules())
        for name in names:
            measured, _, _ = collect_split_moments(model, self.calibration(), {name: modules[name]}, parts, self.device, stop_after=modules[name])
            yield name, measured[name]

    def dense_moments(self, names: Sequence[str], parts: int = 1) -> Tuple[DenseMoments, bool]:
        """The dense model's per-channel output moments of modules ``names`` on the calibration batches, dealt into
        ``parts`` parts (:func:`~reflowbench.reflow.moments.collect_split_moments`): ({name: [moments per part]},
        batches, images), measured in one pass the first time and kept; and whether it was measured now (a pass made)."""
        key = (tuple(names), parts)
        if key in self.moments_cache:
            return self.moments_cache[key], False
        modules = dict(self.dense.named_modules())
        self.moments_cache[key] = collect_split_moments(self.dense, self.calibration(), {name: modules[name] for name in names}, parts, self.device)
        return self.moments_cache[key], True


@dataclass
class LayerWalk:
    """:meth:`CorrectionContext.layer_by_layer`'s walk: iterate it for (name, moments per part), layer after layer;
    ``passes``: the calibration passes it makes (1 in stages, else one per layer, each cut short after its layer)."""

    items: Iterator[Tuple[str, List[ChannelMoments]]]
    passes: int

    def __iter__(self) -> Iterator[Tuple[str, List[ChannelMoments]]]:
        return self.items


@dataclass
class CorrectionCost:
    """What a correction ran through the network: calibration ``images`` per pass, forward ``passes`` over them (a
    pass cut short after the layer it measures counts as one), ``batches`` per pass; ``details``: what the correction
    chose that a reader may want to see (JSON values; the run record keeps them beside its metrics)."""

    images: int
    batches: int
    passes: int
    details: Dict[str, Any] = field(default_factory=dict)


class Correction(ABC):
    """A post-pruning correction; subclasses set ``description`` and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layer_by_layer: ClassVar[bool] = False  # measures layer after layer (CorrectionContext.layer_by_layer): the stages' cache

    @classmethod
    def from_settings(cls, settings: CorrectionSpec) -> "Correction":
        """The correction with the sweep's correction settings (``--corrections`` and the correction options)."""
        return cls()

    def cannot_apply(self, model: nn.Module) -> Optional[str]:
        """Why this correction has nothing to act on in ``model`` (one line naming the fix), or None when it applies."""
        return None

    def calibration_passes(self, model: nn.Module, layers: Sequence[str], staged: bool = True) -> float:
        """Whole forward passes over the calibration images one application to ``model`` makes (``layers``: the pruned
        layers' names, forward order), for the cost plan; ``staged``: whether a layer-by-layer measurement would run in
        stages (:func:`layer_by_layer_passes`). REFLOW's one pass by default."""
        return 1.0

    @abstractmethod
    def apply(self, model: nn.Module, ctx: CorrectionContext) -> CorrectionCost:
        """Correct the pruned ``model`` in place (eval mode afterwards); return what it cost in images and passes."""


def layer_by_layer_passes(count: int, staged: bool) -> float:
    """Whole passes over the calibration images that :meth:`CorrectionContext.layer_by_layer` makes over ``count``
    layers: one when it runs in stages; else a pass per layer, the i-th cut short after the i-th layer, (count + 1) / 2
    in all, counting each layer as an equal share of the network (a plan's estimate, not a measurement)."""
    if not count:
        return 0.0
    return 1.0 if staged else (count + 1) / 2


CORRECTIONS: Dict[str, Type[Correction]] = {}


def register_correction(name: str) -> Callable[[Type[Correction]], Type[Correction]]:
    """Class decorator: make ``name`` a value of ``--corrections``."""

    def decorate(cls: Type[Correction]) -> Type[Correction]:
        if name in CORRECTIONS and CORRECTIONS[name] is not cls:
            raise ConfigError(f"correction {name!r} is registered twice ({CORRECTIONS[name].__module__} and {cls.__module__}): rename one")
        if name == "none":
            raise ConfigError("'none' names the uncorrected pruned network, not a correction: choose another name")
        cls.name = name
        CORRECTIONS[name] = cls
        return cls

    return decorate


def correction_names() -> List[str]:
    return sorted(CORRECTIONS)


def make_correction(name: str, settings: Optional[CorrectionSpec] = None) -> Correction:
    if name not in CORRECTIONS and name != "none":
        raise ConfigError(f"unknown correction {name!r} in --corrections: choose among none, {', '.join(correction_names())} (see `reflowbench list`)")
    if name == "none":
        raise ConfigError("'none' is the uncorrected pruned network (always evaluated), not a correction to make")
    return CORRECTIONS[name].from_settings(settings or CorrectionSpec())


def refuse_inapplicable(correction: Correction, model: nn.Module, model_name: str) -> None:
    """Raise :class:`NoBatchNormError` (one line) when ``correction`` has nothing to act on in ``model``."""
    why = correction.cannot_apply(model)
    if why is not None:
        usable = [name for name in correction_names() if CORRECTIONS[name]().cannot_apply(model) is None]
        raise NoBatchNormError(
            f"--corrections {correction.name} cannot apply to {model_name}: {why}; choose among those that do: --corrections none,{','.join(usable)}"
        )
