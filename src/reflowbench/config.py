"""Dataclass specs of a suite (what the CLI is generated from), presets, and the per-run settings key.

Precedence: dataclass defaults < preset < ``--config FILE.json`` < explicit command-line flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from reflowbench.errors import ConfigError
from reflowbench.pruners.targets import TargetPolicy


@dataclass
class ModelSpec:
    """The dense network to prune."""

    model: str = "smallcnn"  # built-in name (resnet20..110, mobilenetv1, smallcnn) or any torchvision model name
    checkpoint: Optional[str] = None  # state_dict / Distiller dict / .safetensors; smallcnn on digits trains one when absent
    shortcut: str = "auto"  # CIFAR ResNet shortcuts: A (padding), B (1x1 conv), auto (from checkpoint keys)
    weights: Optional[str] = None  # torchvision weight enum name, e.g. DEFAULT or IMAGENET1K_V2
    num_classes: Optional[int] = None  # default: the dataset's


@dataclass
class DataSpec:
    """Where images come from."""

    dataset: Optional[str] = None  # digits, cifar10, imagenet, imagefolder (default: the model's)
    data: Optional[str] = None  # path: CIFAR-10 .tar.gz / ImageFolder tree / torchvision root; ImageNet tree
    download: bool = False  # let torchvision download CIFAR-10 into --data (needs the internet)
    norm: Optional[str] = None  # CIFAR-10 normalisation: cifar10 (default) or cifar10-distiller
    workers: int = 2  # DataLoader workers for ImageFolder data
    eval_batch_size: int = 500


@dataclass
class ReflowSpec:
    """REFLOW calibration and the signal-collapse diagnostics."""

    calib_batches: int = 50  # calibration batches for BN re-estimation
    calib_batch_size: int = 128
    reflow_mode: str = "cumulative"  # cumulative (reset + exact average) or ema (continues from the old statistics)
    reflow_momentum: float = 0.1  # EMA momentum (ema mode only)
    calib_augment: bool = False  # train-time augmentation on calibration images
    diag_images: int = 1000  # held-out training images for the BN variance ratios


@dataclass
class TargetSpec:
    """Which weights count as prunable (all conv + linear by default)."""

    exclude_first_conv: bool = False
    exclude_classifier: bool = False
    exclude_shortcuts: bool = False  # 1x1 convs on residual shortcuts

    def policy(self) -> TargetPolicy:
        return TargetPolicy(not self.exclude_first_conv, not self.exclude_classifier, not self.exclude_shortcuts)


@dataclass
class SweepSpec:
    """What to run and where."""

    methods: List[str] = field(default_factory=lambda: ["mp"])
    sparsities: List[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    seeds: List[int] = field(default_factory=lambda: [0])
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    out: str = "reflowbench-out"
    memory_budget_gb: float = 8.0  # largest single allocation a pruner may plan (gradients, curvature)
    report_sparsity: Optional[float] = None  # sparsity of the signal-collapse figure (default: the highest)
    progress: bool = True


@dataclass
class SuiteSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    reflow: ReflowSpec = field(default_factory=ReflowSpec)
    targets: TargetSpec = field(default_factory=TargetSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # pruner name -> option overrides


SECTIONS = ("model", "data", "reflow", "targets", "sweep")

PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # `reflowbench run` with no arguments: the embedded digits model, MP with and without REFLOW.
    "default": {
        "model": {"model": "smallcnn"},
        "data": {"dataset": "digits"},
        "reflow": {"calib_batches": 8, "calib_batch_size": 64, "diag_images": 256},
        "sweep": {"methods": ["mp"], "sparsities": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "seeds": [0, 1, 2], "out": "reflowbench-out"},
    },
    # The paper-style CIFAR-10 comparison (pass --data and --checkpoint).
    "cifar10": {
        "data": {"dataset": "cifar10"},
        "sweep": {"sparsities": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "seeds": [0, 1, 2]},
    },
}


def merge_into(spec: SuiteSpec, overrides: Dict[str, Any], source: str) -> SuiteSpec:
    """Apply nested ``{section: {field: value}}`` (or flat ``{field: value}``) overrides to ``spec`` in place."""
    by_field = {f.name: section for section in SECTIONS for f in fields(getattr(spec, section))}
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            merge_into(spec, value, source)
        elif key == "method_options" and isinstance(value, dict):
            for method, options in value.items():
                spec.method_options.setdefault(method, {}).update(options)
        elif key in by_field:
            setattr(getattr(spec, by_field[key]), key, value)
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}; known settings: {sorted(by_field)} and method_options")
    return spec


def preset(name: str) -> SuiteSpec:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return merge_into(SuiteSpec(), PRESETS[name], f"preset {name}")
