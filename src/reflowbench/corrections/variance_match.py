"""``variance-match``: rescale each pruned layer's output channels toward the dense spread, with a data-driven
shrinkage of the per-channel scales, then BN recalibration.

What the follow-up (arXiv 2605.21426, "ASR"; abstract and public description only, no code: ``../shared/REFERENCES.md``
6b) states: a per-channel variance-matching step with a data-driven shrinkage rule, forward passes on a small
calibration set, applied before BN recalibration; naive per-channel matching alone is not enough. What it does not
state, and what this suite chose:

- *Where*: at the output of every pruned convolution and linear layer (the issue's reading), in forward order, each
  layer measured with the layers before it already rescaled; the scale is folded into the layer's weight rows and
  bias, so no pruned weight is revived.
- *The target*: the dense layer's per-channel standard deviation on the same calibration images (means untouched:
  that is ``repair``).
- *The shrinkage* (``split-half``, the default): each channel's log-ratio l_c = log(sigma_d,c / sigma_p,c) is shrunk
  toward the layer's mean log-ratio m, log s_c = m + lambda (l_c - m), with a James-Stein-style factor
  lambda = max(0, 1 - noise / spread): ``spread`` the variance of l_c over the layer's channels, ``noise`` the mean
  over channels of the sampling variance of l_c, estimated from the calibration batches dealt into two halves as
  (l_c(half A) - l_c(half B))^2 / 4. Channels whose ratios are mostly noise keep the layer's common factor; a layer
  whose channels differ reliably keeps them. ``none``: lambda = 1 (naive per-channel matching).
- *Then* REFLOW (the sweep's settings) when the network has BatchNorm with running statistics; without it, the
  rescaled network is evaluated as it is.

Note what follows from the algebra: a rescaled channel that feeds its own BatchNorm is normalised back by the
recalibrated statistics (BN(s x) = BN(x) up to BN's epsilon), so in a network where every pruned layer has its own BN,
variance-match + REFLOW differs from REFLOW only at the layers without one (the classifier). The measured rows say how
much that is.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

from reflowbench.config import CorrectionSpec
from reflowbench.corrections.base import Correction, CorrectionContext, CorrectionCost, layer_by_layer_passes, register_correction
from reflowbench.corrections.channel_affine import DEAD_FRACTION, fold_into_layer
from reflowbench.reflow import batchnorm_layers


def shrunk_log_scales(log_ratio: torch.Tensor, log_ratio_a: torch.Tensor, log_ratio_b: torch.Tensor, rule: str = "split-half") -> Tuple[torch.Tensor, float]:
    """(log s per channel, lambda) from the full-sample log-ratios (C,) and the two halves' (C,) (see the module
    docstring); channels whose ratio is not finite (dead channels) get log s = 0 and take no part in the estimate."""
    usable = log_ratio.isfinite() & log_ratio_a.isfinite() & log_ratio_b.isfinite()
    log_scale = torch.zeros_like(log_ratio)
    if not bool(usable.any()):
        return log_scale, 0.0
    values = log_ratio[usable]
    centre = values.mean()
    if rule == "none":
        shrink = 1.0
    else:
        spread = float(values.var(correction=0)) if values.numel() > 1 else 0.0
        noise = float(((log_ratio_a[usable] - log_ratio_b[usable]) ** 2 / 4).mean())
        shrink = max(0.0, 1.0 - noise / spread) if spread > 0 else 0.0
    log_scale[usable] = centre + shrink * (values - centre)
    return log_scale, shrink


def _log_ratio(dense_std: torch.Tensor, pruned_std: torch.Tensor) -> torch.Tensor:
    """log(dense / pruned) per channel; NaN where the pruned channel is dead (see DEAD_FRACTION)."""
    dead = pruned_std <= DEAD_FRACTION * dense_std.clamp_min(1e-30)
    return torch.where(dead, torch.full_like(dense_std, math.nan), dense_std.log() - pruned_std.clamp_min(1e-30).log())


@register_correction("variance-match")
class VarianceMatch(Correction):
    layer_by_layer = True
    description = "rescale each pruned layer's output channels to the dense spread (split-half shrinkage), then REFLOW where there is BN (after ASR, 2026)"

    def __init__(self, shrinkage: str = "split-half") -> None:
        self.shrinkage = shrinkage

    @classmethod
    def from_settings(cls, settings: CorrectionSpec) -> "VarianceMatch":
        return cls(settings.variance_match_shrinkage)

    def calibration_passes(self, model: nn.Module, layers: Sequence[str], staged: bool = True) -> float:
        return 1.0 + layer_by_layer_passes(len(layers), staged) + (1.0 if batchnorm_layers(model) else 0.0)  # dense, layers, REFLOW

    def apply(self, model: nn.Module, ctx: CorrectionContext) -> CorrectionCost:
        modules = dict(model.named_modules())
        (dense, batches, images), measured = ctx.dense_moments(ctx.layers, 2)
        shrink_factors = {}
        walk = ctx.layer_by_layer(model, ctx.layers, 2)
        for name, (pruned_a, pruned_b) in walk:
            layer = modules[name]
            dense_a, dense_b = dense[name]
            full = _log_ratio(dense_a.merged(dense_b).std(), pruned_a.merged(pruned_b).std())
            log_scale, shrink = shrunk_log_scales(full, _log_ratio(dense_a.std(), pruned_a.std()), _log_ratio(dense_b.std(), pruned_b.std()), self.shrinkage)
            shrink_factors[name] = round(shrink, 6)
            fold_into_layer(layer, log_scale.exp(), torch.zeros_like(log_scale))
        passes = int(measured) + walk.passes
        if batchnorm_layers(model):
            ctx.recalibrate(model)
            passes += 1
        return CorrectionCost(images=images, batches=batches, passes=passes, details={"shrink_factors": shrink_factors})
