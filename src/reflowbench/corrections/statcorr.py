"""``statcorr``: match each normalisation layer's per-channel output mean and standard deviation to the dense model's.

The statistics correction of the layer-wise OBS code (``../shared/REFERENCES.md`` 6b), written from its description:
on the calibration images, for each BatchNorm, GroupNorm and LayerNorm with an affine, in forward order, measure the
dense output's per-channel mean mu_d and standard deviation sigma_d and the pruned output's mu_p and sigma_p (the
layers before it already corrected), and rewrite its affine so the output becomes (y - mu_p) * sigma_d / sigma_p + mu_d:
gamma <- s * gamma, beta <- s * (beta - mu_p) + mu_d with s = sigma_d / sigma_p. BatchNorm keeps its running statistics
(eval mode throughout). After it, every corrected layer's output has the dense mean and spread on the calibration
images, channel by channel. Cost: one dense pass, then one pass in stages (``CorrectionContext.layer_by_layer``;
where it does not apply, one pass per layer, each cut short after that layer).
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from reflowbench.corrections.base import Correction, CorrectionContext, CorrectionCost, layer_by_layer_passes, register_correction
from reflowbench.corrections.channel_affine import fold_into_norm, matching_scale
from reflowbench.reflow.moments import norm_layers


def affine_norm_layers(model: nn.Module):
    return [(name, m) for name, m in norm_layers(model) if getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None]


@register_correction("statcorr")
class StatisticsCorrection(Correction):
    layer_by_layer = True
    description = "match each BN/GN/LN layer's per-channel output mean and std to the dense model's through its affine (forward passes only)"

    def cannot_apply(self, model: nn.Module) -> Optional[str]:
        if affine_norm_layers(model):
            return None
        return "it adjusts the affine of normalisation layers (BatchNorm, GroupNorm, LayerNorm) and the network has none with an affine"

    def calibration_passes(self, model: nn.Module, layers: Sequence[str], staged: bool = True) -> float:
        return 1.0 + layer_by_layer_passes(len(affine_norm_layers(model)), staged)  # the dense pass (once per seed), then the layers

    def apply(self, model: nn.Module, ctx: CorrectionContext) -> CorrectionCost:
        layers = affine_norm_layers(model)
        (dense, batches, images), measured = ctx.dense_moments([name for name, _ in layers])
        modules = dict(layers)
        walk = ctx.layer_by_layer(model, [name for name, _ in layers])
        for name, (pruned,) in walk:
            scale = matching_scale(dense[name][0].std(), pruned.std())
            fold_into_norm(modules[name], scale, dense[name][0].mean - scale * pruned.mean)
        return CorrectionCost(images=images, batches=batches, passes=int(measured) + walk.passes)
