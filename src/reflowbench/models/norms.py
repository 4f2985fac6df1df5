"""Which normalisation a built-in network uses after each convolution: BatchNorm, GroupNorm or a per-sample LayerNorm.

``bn``: ``nn.BatchNorm2d(C)`` (running statistics; the form of the shared checkpoints).
``gn``: ``nn.GroupNorm(GN_GROUPS, C)``, statistics per sample over groups of channels (Wu & He 2018 use 32 groups of
ImageNet-width layers; CIFAR ResNets are 16 to 64 channels wide, so 8 groups: 2 to 8 channels each).
``ln``: the LayerNorm of a convolutional network: ``nn.GroupNorm(1, C)``, one mean and variance per sample over all
channels and positions, with a per-channel affine (``nn.LayerNorm`` over (C, H, W) would tie its affine to the image
size). Neither ``gn`` nor ``ln`` keeps running statistics: nothing for REFLOW to re-estimate.
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

GN_GROUPS = 8
NORMS = ("bn", "gn", "ln")
NORM_NAMES = {"bn": "BatchNorm", "gn": f"GroupNorm ({GN_GROUPS} groups)", "ln": "LayerNorm (GroupNorm with 1 group)"}


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(min(GN_GROUPS, channels), channels)


NORM_LAYERS: Dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "gn": _group_norm,
    "ln": lambda channels: nn.GroupNorm(1, channels),
}


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """The constructor ``channels -> module`` of normalisation ``kind`` (one of :data:`NORMS`)."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"normalisation must be one of {NORMS}, got {kind!r}")
    return NORM_LAYERS[kind]
