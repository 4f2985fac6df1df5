"""ExactOBS / OBC (Frantar & Alistarh, 2022), row-wise, from the paper's equations: in every row of a layer, remove one
weight at a time, the one whose removal raises the row's reconstruction error least (w_q^2 / [H^-1]_qq), re-fit the
rest by the OBS update and downdate H^-1; the layer's count is split between rows by the traced errors (the lowest
errors over the whole layer, each row's removals taken as a prefix of its order), and every row is finally re-fitted
exactly on its support (which is what the sequence of exact OBS steps reaches, without its rounding).

Cost O(rows * d^3) per layer: meant for small layers. A layer with more than ``max_columns`` inputs per row is pruned by
SparseGPT's sweep (blocks of 128) instead, and the run's notes name it.

N:M (the paper's rule): the same greedy removal, a weight a candidate only while its group of M has lost fewer than M - N,
d (M - N) / M removals per row (so every row holds the pattern, no split between rows), then the exact re-fit; a layer
over ``max_columns`` gets SparseGPT's adaptive N:M sweep and the same re-fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch

from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError
from reflowbench.pruners.base import PruneContext, register_pruner
from reflowbench.pruners.layerwise import SEARCHED, LayerwiseOptions, LayerwisePruner
from reflowbench.reconstruction import InputHessian, counts_from_traces, damped, greedy_obs, inverse_upper, nm_sweep, prefix_keep, refit_rows, sweep

FALLBACK_BLOCK = 128


@dataclass
class OBCOptions(LayerwiseOptions):
    num_images: int = 512  # the ResNet-20 search's choice (published: 1024 samples x 10 augmentation rounds)
    sparsity_rule: str = "uniform"  # the ResNet-20 search's choice (published: every layer at one sparsity)
    target: str = "dense-outputs"  # the ResNet-20 search's choice (published: the layer's own inputs, pruned-inputs)
    max_columns: int = 1152  # layers with more inputs per row than this get SparseGPT's sweep instead (O(rows d^3) otherwise)


@register_pruner("obc", "ExactOBS/OBC: greedy row-wise OBS on the layer-wise Hessian, exact re-fit per row (no gradients)")
class OBCPruner(LayerwisePruner):
    """ExactOBS: the optimal greedy mask and update of every row."""

    Options = OBCOptions
    PATTERNS = ("unstructured", "n:m")
    REFERENCE = {
        **LayerwisePruner.REFERENCE,
        "num_images": SEARCHED.format("obc") + " (1024 samples x 10 augmentation rounds, REFERENCES.md §6)",
        "damp": SEARCHED.format("obc") + " (rel_damp 0, + I where Cholesky fails, REFERENCES.md §6)",
        "mode": SEARCHED.format("obc") + " (REFERENCES.md §6 does not state OBC's; the family's default is sequential)",
        "sparsity_rule": SEARCHED.format("obc") + " (every layer to one sparsity, its count split between rows by their traced errors, REFERENCES.md §6)",
        "target": SEARCHED.format("obc") + " (the layer reconstructed on its own inputs, pruned-inputs, REFERENCES.md §6)",
        "max_columns": "suite choice: the cost O(rows d^3) of a layer with more inputs per row is out of reach on a CPU",
    }
    TUNING_GRID: ClassVar[Dict[str, List[Dict[str, object]]]] = {
        **{axis: cells for axis, cells in LayerwisePruner.TUNING_GRID.items() if axis != "mode"},
        "inputs": [
            {"mode": "sequential", "target": "pruned-inputs"},
            {"mode": "sequential", "target": "dense-outputs"},
            {"mode": "parallel", "target": "pruned-inputs"},
        ],
    }

    def check_options(self) -> None:
        super().check_options()
        if not (isinstance(self.options.max_columns, int) and self.options.max_columns >= 1):
            raise ConfigError(f"{self.flag('max_columns')} must be an integer >= 1, got {self.options.max_columns!r}")

    def prune_layer(self, name: str, rows: torch.Tensor, hessian: InputHessian, count: int, ctx: PruneContext) -> Tuple[torch.Tensor, torch.Tensor]:
        matrix, lower = damped(hessian.matrix(), self.options.damp, name)
        if rows.shape[2] > self.options.max_columns:
            ctx.notes.setdefault("obc_sweep_layers", []).append(name)
            return sweep(rows, inverse_upper(lower), count, FALLBACK_BLOCK)
        g, r, d = rows.shape
        order, losses = greedy_obs(rows, torch.cholesky_inverse(lower).to(torch.float32))
        counts = counts_from_traces(losses.reshape(g * r, d), count)
        keep = prefix_keep(order.reshape(g * r, d), counts, d).view(g, r, d)
        return refit_rows(rows, matrix, keep), keep

    def prune_layer_nm(self, name: str, rows: torch.Tensor, hessian: InputHessian, pattern: SparsityPattern) -> Tuple[torch.Tensor, torch.Tensor]:
        """N:M: the greedy removal restricted to the groups of M still holding more than N (see the module), then the
        exact re-fit of every row on its support."""
        matrix, lower = damped(hessian.matrix(), self.options.damp, name)
        g, r, d = rows.shape
        if d > self.options.max_columns:
            _, keep = nm_sweep(rows, inverse_upper(lower), pattern.n, pattern.m)
            return refit_rows(rows, matrix, keep), keep
        order, _ = greedy_obs(rows, torch.cholesky_inverse(lower).to(torch.float32), nm=(pattern.n, pattern.m))
        keep = torch.ones(g * r, d, dtype=torch.bool, device=rows.device).scatter_(1, order.reshape(g * r, -1), False).view(g, r, d)
        return refit_rows(rows, matrix, keep), keep
