"""BN-scale channel pruning (Network Slimming, Liu et al. 2017): a channel's importance is |gamma| of the BatchNorm
normalising it; the same fraction of every channel group goes, lowest |gamma| first. Channels only: it scores whole
channels, never single weights, and makes no weight update."""

from __future__ import annotations

from typing import Optional

from torch import nn

from reflowbench.config import SparsityPattern
from reflowbench.pruners.base import PruneContext, Pruner, register_pruner
from reflowbench.pruners.channels import bn_scales, channel_masks, lowest_channels
from reflowbench.pruners.masks import Masks
from reflowbench.schema.targets import TargetSet


@register_pruner("bn-scale", "channels by BatchNorm scale |gamma| (Network Slimming), the same fraction of every group")
class BNScalePruner(Pruner):
    """Channel pruning by BatchNorm scale."""

    PATTERNS = ("channels",)

    def pattern_refusal(self, pattern: SparsityPattern) -> Optional[str]:
        if pattern.kind != "channels":
            return "removes whole channels only (--pattern channels)"
        return None

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        with ctx.phase("selection"):
            scores = bn_scales(model, ctx.channel_groups)
            return channel_masks(targets, ctx.channel_groups, lowest_channels(scores, ctx.channel_groups, sparsity))
