"""Magnitude pruning (MP): keep the largest |w|, globally or uniformly per layer; no weight update."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reflowbench.pruners.base import PruneContext, Pruner, register_pruner
from reflowbench.pruners.masks import Masks, masks_from_scores
from reflowbench.pruners.nm import nm_masks_from_scores
from reflowbench.schema.targets import TargetSet


@dataclass
class MagnitudeOptions:
    scope: str = "global"  # 'global': one threshold across all targets; 'layer': the same sparsity in every layer


@register_pruner("mp", "magnitude, one global threshold over all targets")
class MagnitudePruner(Pruner):
    """Magnitude pruning: prune the smallest |w|."""

    Options = MagnitudeOptions
    REFERENCE = {"scope": "REFERENCES.md §1: global magnitude (WoodFisher `globalmagni`, M-FAC `MagPruner`), the paper's MP"}
    PATTERNS = ("unstructured", "n:m")

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        with ctx.phase("selection"):
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
