"""Wanda (Sun et al., 2023) on convolutions and linear layers: score |W_ij| * ||X_j||_2 (the input column's norm over
the calibration positions; for a convolution the unfolded patch entry j), compared within each output row, no update.
The gradient-free, update-free baseline of the layer-wise family.

``compare``: ``row`` (the paper's per-output comparison: the layer's count split evenly between its rows) or ``layer``
(one comparison over the whole layer, the default: the ResNet-20 search's choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch

from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError
from reflowbench.pruners.base import PruneContext, register_pruner
from reflowbench.pruners.layerwise import SEARCHED, LayerwiseOptions, LayerwisePruner
from reflowbench.pruners.nm import keep_top_n
from reflowbench.reconstruction import InputHessian, lowest_k_keep, lowest_per_row, row_counts

COMPARISONS = ("row", "layer")


@dataclass
class WandaOptions(LayerwiseOptions):
    mode: str = "parallel"  # the ResNet-20 search's choice (published: sequential)
    sparsity_rule: str = "global-magnitude"  # the ResNet-20 search's choice (published: uniform)
    compare: str = "layer"  # where scores compete: over the whole layer (the ResNet-20 search's choice) or within each output row (the paper)


@register_pruner("wanda", "Wanda: |w| times the input norm, per output row, no update (no gradients)")
class WandaPruner(LayerwisePruner):
    """Wanda: weights times activations, no weight update."""

    Options = WandaOptions
    uses_damping = False
    REFERENCE = {
        **LayerwisePruner.REFERENCE,
        "num_images": "REFERENCES.md §6 (Wanda): 128 calibration samples, as SparseGPT",
        "mode": SEARCHED.format("wanda") + " (sequential, as SparseGPT: REFERENCES.md §6)",
        "sparsity_rule": SEARCHED.format("wanda") + " (uniform, REFERENCES.md §6)",
        "compare": SEARCHED.format("wanda") + " (row: scores compared within each output row, REFERENCES.md §6)",
    }
    TUNING_GRID: ClassVar[Dict[str, List[Dict[str, object]]]] = {
        "num_images": [{"num_images": 128}, {"num_images": 512}],
        "mode": [{"mode": "sequential"}, {"mode": "parallel"}],
        "sparsity_rule": [{"sparsity_rule": "uniform"}, {"sparsity_rule": "global-magnitude"}],
        "compare": [{"compare": "row"}, {"compare": "layer"}],
    }

    def check_options(self) -> None:
        super().check_options()
        if self.options.compare not in COMPARISONS:
            raise ConfigError(f"{self.flag('compare')} must be one of {COMPARISONS}, got {self.options.compare!r}")
        if self.options.sparsity_rule == "global-obs":
            raise ConfigError(f"{self.flag('sparsity_rule')} global-obs needs H^-1, which Wanda does not use: choose uniform or global-magnitude")

    PATTERNS = ("unstructured", "n:m")

    def refits_rows(self) -> bool:
        return False

    def needs_full_hessian(self) -> bool:
        return False

    def prune_layer_nm(self, name: str, rows: torch.Tensor, hessian: InputHessian, pattern: SparsityPattern) -> Tuple[torch.Tensor, torch.Tensor]:
        """N:M: the N highest |w| ||x_j|| of every group of M columns kept (Wanda's own N:M rule), no update."""
        g, r, d = rows.shape
        scores = rows.abs() * hessian.diagonal().sqrt().unsqueeze(1)
        return rows, keep_top_n(scores.reshape(g * r, d), pattern.n, pattern.m).view(g, r, d)

    def prune_layer(self, name: str, rows: torch.Tensor, hessian: InputHessian, count: int, ctx: PruneContext) -> Tuple[torch.Tensor, torch.Tensor]:
        norms = hessian.diagonal().sqrt()  # (G, d): ||X_j|| / sqrt(n), the same order
        scores = rows.abs() * norms.unsqueeze(1)
        if self.options.compare == "layer":
            keep = lowest_k_keep(scores, count)
        else:
            g, r, d = rows.shape
            keep = lowest_per_row(scores.reshape(g * r, d), row_counts(count, g * r)).view(g, r, d)
        return rows, keep
