"""Model zoo: CIFAR ResNets, MobileNetV1-CIFAR, a small BN CNN, and torchvision models.

``build_model(spec)`` returns the network with its checkpoint loaded (when one is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from torch import nn

from reflowbench.errors import ConfigError
from reflowbench.models.checkpoints import StateDict, check_finite, load_into, read_checkpoint, read_state_dict
from reflowbench.models.cifar_resnet import CifarResNet
from reflowbench.models.compat import check_model_fits_data
from reflowbench.models.mobilenet import MobileNetV1
from reflowbench.models.norms import NORM_NAMES
from reflowbench.models.pruned_shapes import apply_pruned_shapes
from reflowbench.models.small_cnn import SmallBNCNN
from reflowbench.models.torchvision_models import build_torchvision, torchvision_names


@dataclass(frozen=True)
class ModelEntry:
    """A built-in architecture: how to build it and which data it expects."""

    build: Callable[..., nn.Module]
    dataset: str  # default dataset name for this architecture
    description: str


def _resnet(depth: int, norm: str = "bn") -> Callable[..., nn.Module]:
    return lambda num_classes, shortcut: CifarResNet(depth, num_classes=num_classes, shortcut=shortcut, norm=norm)


def _small_cnn(norm: str) -> Callable[..., nn.Module]:
    return lambda num_classes, shortcut: SmallBNCNN(num_classes, norm=norm)


BUILTIN_MODELS: Dict[str, ModelEntry] = {
    **{f"resnet{depth}": ModelEntry(_resnet(depth), "cifar10", f"CIFAR ResNet-{depth}, option A or B shortcuts") for depth in (20, 32, 44, 56, 110)},
    "mobilenetv1": ModelEntry(lambda num_classes, shortcut: MobileNetV1(num_classes), "cifar10", "MobileNetV1 for 32x32 inputs"),
    "smallcnn": ModelEntry(_small_cnn("bn"), "digits", "8 x (conv3x3+BN+ReLU) for 8x8 digits"),
    # Networks whose normalisation keeps no running statistics (see models/norms.py): nothing for REFLOW to re-estimate.
    **{
        f"resnet{depth}-{norm}": ModelEntry(_resnet(depth, norm), "cifar10", f"CIFAR ResNet-{depth} with {NORM_NAMES[norm]} in place of BN")
        for depth in (20, 56)
        for norm in ("gn", "ln")
    },
    **{f"smallcnn-{norm}": ModelEntry(_small_cnn(norm), "digits", f"8 x (conv3x3+{NORM_NAMES[norm]}+ReLU) for 8x8 digits") for norm in ("gn", "ln")},
}


def default_dataset_for(model_name: str) -> str:
    entry = BUILTIN_MODELS.get(model_name)
    return entry.dataset if entry else "imagenet"


def list_models() -> Dict[str, str]:
    """Model name -> one-line description (built-ins first, then torchvision classification models)."""
    names = {name: entry.description for name, entry in BUILTIN_MODELS.items()}
    for name in torchvision_names():
        names.setdefault(name, "torchvision (ImageNet weights via --weights)")
    return names


def detect_shortcut(state: StateDict) -> str:
    """'B' when the state_dict has 1x1 downsample convs, else 'A'."""
    return "B" if any(".downsample." in key for key in state) else "A"


def build_model(
    name: str,
    num_classes: int = 10,
    checkpoint: Optional[Path] = None,
    shortcut: str = "auto",
    weights: Optional[str] = None,
) -> nn.Module:
    """Build ``name`` and load ``checkpoint`` strictly (missing/unexpected keys are an error).

    ``shortcut``: 'A', 'B' or 'auto' (read from the checkpoint's keys; 'A' without a checkpoint).
    ``weights``: torchvision weight enum name, for torchvision models only.
    """
    state, shapes = read_checkpoint(checkpoint) if checkpoint else (None, None)
    if name in BUILTIN_MODELS:
        if weights:
            raise ConfigError(f"--weights applies to torchvision models only; {name} loads weights with --checkpoint")
        if shortcut not in ("auto", "A", "B"):
            raise ConfigError(f"--shortcut must be auto, A or B, got {shortcut!r}")
        resolved = detect_shortcut(state) if (shortcut == "auto" and state is not None) else ("A" if shortcut == "auto" else shortcut)
        model = BUILTIN_MODELS[name].build(num_classes=num_classes, shortcut=resolved)
    else:
        model = build_torchvision(name, weights, None if weights else num_classes)
    if shapes is not None:  # a channel-pruned network: its modules resized to the saved shapes first
        apply_pruned_shapes(model, shapes, f"checkpoint {checkpoint}")
    if state is not None:
        load_into(model, state, source=f"checkpoint {checkpoint}")
    return model.eval()


__all__ = [
    "check_finite",
    "check_model_fits_data",
    "BUILTIN_MODELS",
    "build_model",
    "list_models",
    "default_dataset_for",
    "detect_shortcut",
    "read_state_dict",
    "load_into",
    "torchvision_names",
]
