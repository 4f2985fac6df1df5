"""``repair``: fold a per-channel affine into each pruned layer so its outputs have the dense mean and spread.

REPAIR (Jordan et al. 2022; ``../shared/REFERENCES.md`` 6b), written from its description for pruned networks: for each
pruned convolution and linear layer, in forward order from the input (the layers before it already repaired), measure
on the calibration images the per-channel mean and standard deviation of the dense layer's output (mu_d, sigma_d) and of
the pruned one's (mu_p, sigma_p), and fold y <- (y - mu_p) * sigma_d / sigma_p + mu_d into the layer: its weight rows
scaled by s = sigma_d / sigma_p (zeros stay zero), its bias set to s * (b - mu_p) + mu_d (a layer without a bias gets
one). Needs no normalisation layer, so it is the correction for networks without BatchNorm (BN folded into the
convolutions, or none); in a BN network it acts before each BN, whose stored statistics then see dense-like inputs.
Cost: one dense pass, then one pass in stages (``CorrectionContext.layer_by_layer``; where it does not apply, one pass
per pruned layer, each cut short after that layer).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from reflowbench.corrections.base import Correction, CorrectionContext, CorrectionCost, layer_by_layer_passes, register_correction
from reflowbench.corrections.channel_affine import fold_into_layer, matching_scale


@register_correction("repair")
class Repair(Correction):
    layer_by_layer = True
    description = "REPAIR: fold a per-channel affine into each pruned layer so its outputs match the dense mean and std (for networks without BN)"

    def calibration_passes(self, model: nn.Module, layers: Sequence[str], staged: bool = True) -> float:
        return 1.0 + layer_by_layer_passes(len(layers), staged)  # the dense pass (once per seed), then the pruned layers

    def apply(self, model: nn.Module, ctx: CorrectionContext) -> CorrectionCost:
        modules = dict(model.named_modules())
        (dense, batches, images), measured = ctx.dense_moments(ctx.layers)
        walk = ctx.layer_by_layer(model, ctx.layers)
        for name, (pruned,) in walk:
            scale = matching_scale(dense[name][0].std(), pruned.std())
            fold_into_layer(modules[name], scale, dense[name][0].mean - scale * pruned.mean)
        return CorrectionCost(images=images, batches=batches, passes=int(measured) + walk.passes)
