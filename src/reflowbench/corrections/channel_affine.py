"""Per-channel affine maps folded into a layer or a normalisation layer, and the scale that matches two spreads."""

from __future__ import annotations

import torch
from torch import nn

# A pruned channel whose output spread is below this fraction of the dense one's carries no signal to rescale (all its
# weights pruned, say): its scale is left at 1 and only its mean is moved.
DEAD_FRACTION = 1e-6


def matching_scale(dense_std: torch.Tensor, pruned_std: torch.Tensor) -> torch.Tensor:
    """(C,) float64 scales s = dense_std / pruned_std that give a channel of spread ``pruned_std`` the spread
    ``dense_std``; 1 where the pruned channel is dead (spread at most :data:`DEAD_FRACTION` of the dense one, or 0)."""
    dead = pruned_std <= DEAD_FRACTION * dense_std.clamp_min(1e-30)
    return torch.where(dead, torch.ones_like(dense_std), dense_std / pruned_std.clamp_min(1e-30))


def fold_into_layer(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``layer`` (a convolution or linear layer) output ``scale * y + shift`` per output channel, where y is its
    output now: its weight rows are multiplied by ``scale`` (a zero stays zero) and its bias becomes
    ``scale * bias + shift`` (a layer without a bias gets one). ``scale``, ``shift``: (C_out,)."""
    with torch.no_grad():
        weight = layer.weight
        view = (-1,) + (1,) * (weight.dim() - 1)
        weight.mul_(scale.to(weight.dtype).view(view))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
        layer.bias.mul_(scale.to(weight.dtype)).add_(shift.to(weight.dtype))


def fold_into_norm(norm: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make a normalisation layer with an affine output ``scale * y + shift`` per channel (per element of a
    LayerNorm's normalised shape): gamma <- scale * gamma, beta <- scale * beta + shift."""
    with torch.no_grad():
        weight, bias = norm.weight, norm.bias
        weight.mul_(scale.to(weight.dtype).view(weight.shape))
        bias.mul_(scale.to(bias.dtype).view(bias.shape)).add_(shift.to(bias.dtype).view(bias.shape))
