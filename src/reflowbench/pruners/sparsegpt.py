"""SparseGPT (Frantar & Alistarh, 2023) on convolutions and linear layers, from the paper's equations: per layer, the
columns of W are swept left to right in blocks; when the sweep reaches a block, its mask is chosen by the OBS error
w^2 / [U]_jj^2 (U the upper Cholesky factor of H^-1, so U_jj^2 is [H^-1]_jj with the columns before j fixed), every
pruned weight's error is compensated on the columns to its right through row j of U, and the updates of later blocks
are applied once per block (lazy batched updates). See :mod:`reflowbench.reconstruction.obs`.

``mask``: ``adaptive`` (the sweep above) or ``magnitude`` (the layer's lowest |w|, every row then re-fitted exactly on
its support: with ``--sparsity-rule global-magnitude`` this is MP's global mask with an exact per-row update).
``refit``: after the sweep, every row re-fitted exactly on the mask the sweep chose. The sweep fixes each kept weight
when it passes it, so the errors of columns pruned later reach only the columns to their right; on the small CNN's
layers at 0.7 that leaves about four times the exact re-fit's reconstruction error on the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Set, Tuple

import torch

from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError
from reflowbench.pruners.base import PruneContext, register_pruner
from reflowbench.pruners.layerwise import SEARCHED, LayerwiseOptions, LayerwisePruner
from reflowbench.pruners.nm import keep_top_n
from reflowbench.reconstruction import InputHessian, damped, inverse_upper, lowest_k_keep, nm_sweep, refit_rows, sweep

MASKS = ("adaptive", "magnitude")


@dataclass
class SparseGPTOptions(LayerwiseOptions):
    num_images: int = 512  # the ResNet-20 search's choice (published: 128)
    sparsity_rule: str = "global-magnitude"  # the ResNet-20 search's choice (published: uniform)
    target: str = "dense-outputs"  # the ResNet-20 search's choice (published: pruned-inputs)
    block_size: int = 128  # columns per lazy-update block, each with its own adaptive mask (0: the whole row at once)
    mask: str = "magnitude"  # magnitude (lowest |w|, rows re-fitted exactly: the ResNet-20 search's choice) or adaptive (OBS error per block, during the sweep: the paper)
    refit: bool = True  # the ResNet-20 search's choice (published: no re-fit); after the sweep, re-fit every row exactly on the mask it chose (the sweep fixes each kept weight when it passes it)


@register_pruner("sparsegpt", "SparseGPT: layer-wise OBS column sweep with adaptive block masks and lazy updates (no gradients)")
class SparseGPTPruner(LayerwisePruner):
    """SparseGPT: each layer's outputs kept by an OBS sweep over its input columns."""

    Options = SparseGPTOptions
    REFERENCE = {
        **LayerwisePruner.REFERENCE,
        "block_size": "REFERENCES.md §6 (SparseGPT): the mask chosen per 128-column block",
        "mask": SEARCHED.format("sparsegpt") + " (adaptive: w^2 / [chol(H^-1)]_cc^2 per block, REFERENCES.md §6)",
        "num_images": SEARCHED.format("sparsegpt") + " (128 calibration samples, REFERENCES.md §6)",
        "sparsity_rule": SEARCHED.format("sparsegpt") + " (uniform, REFERENCES.md §6)",
        "target": SEARCHED.format("sparsegpt") + " (pruned-inputs, REFERENCES.md §6)",
        "refit": SEARCHED.format("sparsegpt") + " (none: the sweep's own compensation, REFERENCES.md §6)",
    }
    TUNING_GRID: ClassVar[Dict[str, List[Dict[str, object]]]] = {
        **{axis: cells for axis, cells in LayerwisePruner.TUNING_GRID.items() if axis != "mode"},
        "inputs": [
            {"mode": "sequential", "target": "pruned-inputs"},
            {"mode": "sequential", "target": "dense-outputs"},
            {"mode": "parallel", "target": "pruned-inputs"},
        ],
        "structure": [
            {"mask": "adaptive", "block_size": 128, "refit": False},
            {"mask": "adaptive", "block_size": 128, "refit": True},
            {"mask": "magnitude", "block_size": 128, "refit": True},
        ],
    }

    PATTERNS = ("unstructured", "n:m")

    def check_options(self) -> None:
        super().check_options()
        o = self.options
        if not (isinstance(o.block_size, int) and o.block_size >= 0):
            raise ConfigError(f"{self.flag('block_size')} must be an integer >= 0 (0 = the whole row), got {o.block_size!r}")
        if o.mask not in MASKS:
            raise ConfigError(f"{self.flag('mask')} must be one of {MASKS}, got {o.mask!r}")

    def unused_options(self) -> Set[str]:
        return super().unused_options() | ({"block_size", "refit"} if self.options.mask == "magnitude" else set())

    def refits_rows(self) -> bool:
        return self.options.mask == "magnitude" or self.options.refit

    def prune_layer(self, name: str, rows: torch.Tensor, hessian: InputHessian, count: int, ctx: PruneContext) -> Tuple[torch.Tensor, torch.Tensor]:
        matrix, lower = damped(hessian.matrix(), self.options.damp, name)
        if self.options.mask == "magnitude":
            keep = lowest_k_keep(rows.abs(), count)
            return refit_rows(rows, matrix, keep), keep
        swept, keep = sweep(rows, inverse_upper(lower), count, self.options.block_size)
        return (refit_rows(rows, matrix, keep) if self.options.refit else swept), keep

    def prune_layer_nm(self, name: str, rows: torch.Tensor, hessian: InputHessian, pattern: SparsityPattern) -> Tuple[torch.Tensor, torch.Tensor]:
        """N:M: ``magnitude``: the N largest |w| of every group, each row re-fitted exactly on that support; ``adaptive``:
        the paper's sweep with the mask of each group of M columns chosen when the sweep reaches it (the N highest
        OBS errors w^2 / U_jj^2 kept, at the weights the sweep has reached), then the re-fit if ``refit``."""
        matrix, lower = damped(hessian.matrix(), self.options.damp, name)
        g, r, d = rows.shape
        if self.options.mask == "magnitude":
            keep = keep_top_n(rows.abs().reshape(g * r, d), pattern.n, pattern.m).view(g, r, d)
            return refit_rows(rows, matrix, keep), keep

        swept, keep = nm_sweep(rows, inverse_upper(lower), pattern.n, pattern.m)
        return (refit_rows(rows, matrix, keep) if self.options.refit else swept), keep
