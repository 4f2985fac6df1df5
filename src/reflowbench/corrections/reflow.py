"""``reflow``: re-estimate every BatchNorm layer's running statistics on the calibration images (the paper's REFLOW)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from reflowbench.corrections.base import Correction, CorrectionContext, CorrectionCost, register_correction
from reflowbench.reflow import batchnorm_layers
from reflowbench.reflow.moments import norm_layers


def no_running_statistics(model: nn.Module) -> Optional[str]:
    """Why ``model`` has no BatchNorm statistics to re-estimate (naming what it has instead), or None."""
    if batchnorm_layers(model):
        return None
    kinds = sorted({type(m).__name__ for _, m in norm_layers(model)})
    has = f"its normalisation ({', '.join(kinds)}) keeps none" if kinds else "it has no normalisation layer (BatchNorm folded into its convolutions?)"
    return f"it re-estimates BatchNorm running statistics and {has}"


@register_correction("reflow")
class Reflow(Correction):
    description = "REFLOW: re-estimate BatchNorm running statistics on the calibration images (no weight changes)"

    def cannot_apply(self, model: nn.Module) -> Optional[str]:
        return no_running_statistics(model)

    def apply(self, model: nn.Module, ctx: CorrectionContext) -> CorrectionCost:
        handle = ctx.recalibrate(model)
        return CorrectionCost(images=handle.images_seen, batches=handle.batches_seen, passes=1)
