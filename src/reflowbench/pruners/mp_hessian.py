"""Magnitude selection followed by a Hessian update: the 'magnitude' row of the selection x update grid.

``mp-hessian --mp-hessian-update joint`` is global magnitude pruning plus the exact multi-weight OBS update
per block (the single-pass "backsolve" of the CBS and CHITA papers); ``obs-sum`` and ``none`` are the other
columns (``none`` gives the same weights as ``mp``, on the Hessian pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from reflowbench.config import SparsityPattern
from reflowbench.hessian import BlockFisher
from reflowbench.pruners.base import PruneContext, register_pruner
from reflowbench.pruners.hessian_base import HessianOptions, HessianPruner
from reflowbench.pruners.masks import Masks, masks_from_scores
from reflowbench.pruners.nm import nm_masks_from_scores
from reflowbench.schema.targets import TargetSet

_FISHER_SOURCE = "WoodFisher's ResNet-20 setting (REFERENCES.md §2(h)): mp-hessian is the suite's selection x update ablation, not a published pruner"


@dataclass
class MagnitudeHessianOptions(HessianOptions):
    update: str = "joint"  # update of the kept weights: none, obs-sum (summed single-weight OBS), joint (exact multi-weight OBS per block)


@register_pruner("mp-hessian", "magnitude selection, then a Hessian update of the kept weights (joint by default)")
class MagnitudeHessianPruner(HessianPruner):
    """Global (or per-layer) magnitude selection on the Hessian-pruner pipeline."""

    Options = MagnitudeHessianOptions
    REFERENCE = {
        **HessianPruner.REFERENCE,
        **{name: _FISHER_SOURCE for name in ("num_grads", "minibatch", "block_size", "damp", "damp_mode")},
        "scope": "REFERENCES.md §1: global magnitude",
        "update": "REFERENCES.md §4(d): the exact joint OBS update (CBS-U) on the magnitude mask (pitfall 9: CHITA's backsolve is the same idea)",
    }

    PATTERNS = ("unstructured", "n:m")

    def pattern_refusal(self, pattern: SparsityPattern) -> Optional[str]:
        if pattern.kind == "n:m" and self.options.recompute_steps != 1:
            return f"reaches N:M in one step only (--{self.name}-recompute-steps 1)"
        return super().pattern_refusal(pattern)

    def select(self, model: nn.Module, targets: TargetSet, fisher: BlockFisher, masks: Masks, sparsity: float, ctx: PruneContext) -> Masks:
        scores = {t.param_name: torch.where(masks[t.param_name], t.weight.detach().abs(), torch.full_like(t.weight, -1.0)) for t in targets}
        if ctx is not None and ctx.pattern.kind == "n:m":  # the N largest |w| of every group, then the update restricted to that support
            return nm_masks_from_scores(targets, scores, ctx.pattern)
        return masks_from_scores(targets, scores, sparsity, self.options.scope)
