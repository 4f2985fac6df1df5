"""Magnitude pruning (MP): keep the largest |w|, globally or uniformly per layer; no weight update."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reflowbench.errors import ConfigError
from reflowbench.pruners.base import PruneContext, Pruner, register_pruner
from reflowbench.pruners.channels import channel_masks, filter_norms, lowest_channels
from reflowbench.pruners.masks import Masks, masks_from_scores
from reflowbench.pruners.nm import nm_masks_from_scores
from reflowbench.schema.targets import TargetSet


@dataclass
class MagnitudeOptions:
    scope: str = "global"  # 'global': one threshold across all targets; 'layer': the same sparsity in every layer
    channel_norm: str = "l1"  # --pattern channels only: each channel's filter norm, l1 (sum |w|, Li et al. 2017) or l2


CHANNEL_NORMS = ("l1", "l2")


@register_pruner("mp", "magnitude, one global threshold over all targets")
class MagnitudePruner(Pruner):
    """Magnitude pruning: prune the smallest |w|."""

    Options = MagnitudeOptions
    REFERENCE = {
        "scope": "REFERENCES.md §1: global magnitude (WoodFisher `globalmagni`, M-FAC `MagPruner`), the paper's MP",
        "channel_norm": "Li et al. 2017 (Pruning Filters for Efficient ConvNets): the L1 norm of each filter",
    }
    PATTERNS = ("unstructured", "n:m", "channels")

    def check_options(self) -> None:
        super().check_options()
        if getattr(self.options, "channel_norm", "l1") not in CHANNEL_NORMS:
            raise ConfigError(f"--{self.name}-channel-norm must be one of {CHANNEL_NORMS}, got {self.options.channel_norm!r}")

    def unused_options(self) -> set:
        return {"channel_norm"}  # read only under --pattern channels

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        with ctx.phase("selection"):
            if ctx.pattern.kind == "channels":  # the same fraction of every group, lowest filter norms first (the scope plays no part)
                scores = filter_norms(ctx.channel_groups, targets, self.options.channel_norm)
                return channel_masks(targets, ctx.channel_groups, lowest_channels(scores, ctx.channel_groups, sparsity))
            scores = {t.param_name: t.weight.detach().abs() for t in targets}
            if ctx.pattern.kind == "n:m":  # the N largest |w| of every group (the scope plays no part)
                return nm_masks_from_scores(targets, scores, ctx.pattern)
            return masks_from_scores(targets, scores, sparsity, self.options.scope)


@dataclass
class LayerMagnitudeOptions:
    scope: str = "layer"


@register_pruner("mp-layer", "magnitude, the same sparsity in every target layer")
class LayerMagnitudePruner(MagnitudePruner):
    """Uniform per-layer magnitude pruning."""

    Options = LayerMagnitudeOptions
    REFERENCE = {"scope": "REFERENCES.md §1: per-layer magnitude (WoodFisher `magni`)"}
    PATTERNS = ("unstructured", "n:m")
