"""Planning a sweep: every setting range-checked, the dataset resolved, the pruners built, the output
folder tried, all before any model or data is loaded.

Settings reach :func:`plan_sweep` type-checked (:func:`~reflowbench.config.build_settings`, the one trip from defaults,
preset, file and flags); a one-method command's own spec (prune, tune, ablate-reflow) is validated before it narrows the
sweep. The code below the plan trusts the :class:`SweepPlan` it returns.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

import torch

from reflowbench.config import SweepSettings, validate_spec
from reflowbench.datasets import DATASETS, dataset_of_path, require_data_path
from reflowbench.datasets.cifar10 import NORMALIZATIONS
from reflowbench.errors import CheckpointError, ConfigError, DatasetError
from reflowbench.models import BUILTIN_MODELS, default_dataset_for, torchvision_names
from reflowbench.pruners import PRUNERS, Pruner, make_pruner
from reflowbench.schema.results import RUNS_FOLDER
from reflowbench.utils.env import resolve_device


@dataclass
class SweepPlan:
    """A validated sweep: the spec (with ``data.dataset`` resolved), its device and its pruners."""

    spec: SweepSettings
    device: torch.device
    pruners: List[Pruner]
    dataset_inferred: bool = False  # True when the dataset was read from --data and the model, not given


def resolve_dataset(spec: SweepSettings) -> str:
    """The dataset name: ``--dataset`` when given, else what ``--data`` holds, else the model's own data.

    Raises :class:`ConfigError` where that is ambiguous, naming ``--dataset``/``--preset``.
    """
    model, data = spec.model, spec.data
    if data.dataset is not None:
        if data.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {data.dataset!r}: choose one of {sorted(DATASETS)}")
        return data.dataset
    model_data = default_dataset_for(model.model)
    if data.data is None:
        if model_data == "digits":
            return "digits"
        if model_data == "cifar10" and data.download:
            return "cifar10"
        if model_data == "cifar10":
            raise ConfigError(
                f"--model {model.model} is a CIFAR-10 model and no --data was given: pass --data PATH (a CIFAR-10 .tar.gz, "
                "ImageFolder tree or torchvision root), or --download to fetch CIFAR-10 with torchvision"
            )
        raise ConfigError(f"--model {model.model} needs images: pass --data PATH to an ImageFolder tree with train/ and val/ (or --dataset)")
    path = Path(data.data)
    if not path.exists() and not data.download:
        raise DatasetError(f"dataset path {path} does not exist: pass --data PATH to a CIFAR-10 .tar.gz, an ImageFolder tree or a torchvision root")
    found = dataset_of_path(path) if path.exists() else None
    if found is None and data.download and model_data == "cifar10":
        return "cifar10"  # an empty or new torchvision root to download into
    if found is None:
        raise ConfigError(
            f"cannot tell which dataset --data {path} holds (not a .tar.gz, a torchvision CIFAR-10 root, or a folder with "
            "train/<class>/ and val/ or test/): name it with --dataset cifar10|imagenet|imagefolder, or --preset cifar10"
        )
    return found


def _check_model_name(spec: SweepSettings) -> None:
    name = spec.model.model
    if name not in BUILTIN_MODELS and name not in torchvision_names():
        raise ConfigError(f"unknown model {name!r}: see `reflowbench list` for the built-in and torchvision models")


def _check_checkpoint(spec: SweepSettings) -> None:
    checkpoint = spec.model.checkpoint
    if checkpoint is None:
        return
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass --checkpoint PATH to an existing file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file: pass --checkpoint PATH to the .pt/.pth/.safetensors file")


def check_writable_folder(folder: Path, flag: str) -> None:
    """Prove ``folder`` can hold results, creating nothing; else a :class:`ConfigError` naming ``flag``.

    The folder itself is made by the first file written into it (``atomic_write_text``), so a run that
    stops on a later check (a missing dataset, say) leaves no empty folders behind: the test write goes
    to the deepest folder of the path that already exists.
    """
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == folder else f"is under {existing}, which is a file, not a folder"
        raise ConfigError(f"{flag} {folder} {what}: choose a folder name for the results")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {folder} cannot be written ({exc.strerror or exc}): choose a folder you can write to") from None


def check_output_file(path: Optional[str], flag: str) -> None:
    """``path`` (when given) can be created: its folder exists and is writable, and it is not a folder."""
    if path is None:
        return
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise ConfigError(f"{flag} {target} is a folder: give a file name, e.g. {target / 'pruned.pt'}")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {target}: folder {parent} does not exist; create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {target}: folder {parent} is not writable; choose another path")


def plan_sweep(spec: SweepSettings, check_out: bool = True) -> SweepPlan:
    """Validate ``spec`` completely and return its plan; nothing heavy is loaded.

    ``check_out``: also create and test-write ``--out`` (the ``prune`` command writes no folder).
    """
    validate_spec(spec)
    device = resolve_device(spec.sweep.device)
    _check_model_name(spec)
    _check_checkpoint(spec)
    inferred = spec.data.dataset is None
    dataset = resolve_dataset(spec)
    if dataset == "cifar10" and spec.data.norm is not None and spec.data.norm not in NORMALIZATIONS:
        raise ConfigError(f"unknown CIFAR-10 normalisation --norm {spec.data.norm!r}: choose one of {sorted(NORMALIZATIONS)}")
    pruners = [make_pruner(name, spec.method_options.get(name)) for name in spec.sweep.methods]
    pattern = spec.targets.sparsity_pattern()
    refusals = [(p.name, p.pattern_refusal(pattern)) for p in pruners]
    refusals = [(name, why) for name, why in refusals if why is not None]
    if refusals:
        able = sorted(name for name, cls in PRUNERS.items() if pattern.kind in cls.PATTERNS)
        shown = "; ".join(f"{name} {why}" for name, why in refusals)
        raise ConfigError(f"--pattern {pattern}: {shown}; the pruners that can (some only with certain options): {', '.join(able)}")
    if pattern.kind == "channels":
        others = [name for name in spec.corrections.applied() if name != "reflow"]
        if others:
            raise ConfigError(
                f"--pattern channels: --corrections {','.join(others)} match each channel to the dense model's same channel, and channel pruning "
                "removes channels (the rest are renumbered): use --corrections none,reflow"
            )
    for name, options in spec.method_options.items():
        make_pruner(name, options)  # options of a pruner outside --methods are checked too
    if check_out:  # about to run: the data must be there (a dry run still plans without it)
        require_data_path(dataset, spec.data.data)
        check_writable_folder(Path(spec.sweep.out), "--out")
        check_writable_folder(Path(spec.sweep.out) / RUNS_FOLDER, "--out (its runs/ folder)")
    resolved = replace(spec, data=replace(spec.data, dataset=dataset))
    return SweepPlan(spec=resolved, device=device, pruners=pruners, dataset_inferred=inferred)
