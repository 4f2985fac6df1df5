"""Layer-group streaming: the block-diagonal Fisher of a model whose gradient matrix G does not fit, one group of
layers at a time.

The block-diagonal F has no terms between layers, so every operation splits into independent per-layer ones.
:class:`StreamedBlockFisher` offers the flat (p,) interface of :class:`~reflowbench.hessian.curvature.Curvature`
and runs each operation as one *pass*: for each group of consecutive target layers, collect that group's rows of
G (a full forward and backward over the N x m Fisher images that keeps only the group's weight gradients), build
its :class:`~reflowbench.hessian.block_fisher.BlockFisher`, apply the operation to its layers, free it. Results are
those of the one-pass Fisher (the same images, order, masks and weights give the same rows), at the cost of one
gradient pass per group per operation: diag(F^-1) and the damping are remembered after their first pass, so
WoodFisher (saliency, then the summed OBS update) needs two passes over the groups, where the one-pass path needs one
collection; peak memory is that of the largest group.
"""

from __future__ import annotations

import gc
from typing import Callable, Dict, List, Optional

import torch

from reflowbench.hessian.block_fisher import BlockFisher, LayerFisher
from reflowbench.hessian.curvature import split_rows
from reflowbench.utils.cost import release_freed_memory

GroupFisher = Callable[[List[str]], BlockFisher]  # the names of a group's targets -> its block Fisher at the current weights and masks


def cut_layers(sizes: Dict[str, int], cap: float) -> List[List[str]]:
    """``sizes`` (target name -> bytes of its rows of G, in target order) cut greedily into runs of consecutive targets
    of at most ``cap`` bytes each (a target larger than ``cap`` is a group of its own): the fewest groups under ``cap``."""
    out: List[List[str]] = [[]]
    filled = 0.0
    for name, size in sizes.items():
        if out[-1] and filled + size > cap:
            out.append([])
            filled = 0.0
        out[-1].append(name)
        filled += size
    return out


def partition_layers(sizes: Dict[str, int], groups: int) -> List[List[str]]:
    """``sizes`` cut into at most ``groups`` runs of consecutive targets whose largest run is as small as it can be
    (a binary search over the cap of :func:`cut_layers`)."""
    groups = max(1, min(groups, len(sizes)))
    low, high = max(sizes.values()), sum(sizes.values())
    while low < high:
        middle = (low + high) // 2
        if len(cut_layers(sizes, middle)) <= groups:
            high = middle
        else:
            low = middle + 1
    return cut_layers(sizes, low)


def choose_layer_groups(sizes: Dict[str, int], requested: int, budget_bytes: float) -> List[List[str]]:
    """The groups of target layers G is collected for at a time (``sizes``: target name -> bytes of its rows of G, in
    target order): ``requested`` groups (:func:`partition_layers`) when > 0, else the fewest whose G fits in half of
    ``budget_bytes`` (the other half: factors and temporaries), as balanced as that many can be; one group when no
    budget is given. The pruners and the cost plan both choose with it."""
    if requested:
        return partition_layers(sizes, requested)
    if budget_bytes <= 0:
        return [list(sizes)]
    return partition_layers(sizes, len(cut_layers(sizes, 0.5 * budget_bytes)))


class StreamedBlockFisher:
    """The block Fisher of all targets, built one group of layers at a time for each operation (see the module)."""

    def __init__(
        self,
        names: List[str],
        sizes: List[int],
        groups: List[List[str]],
        group_fisher: GroupFisher,
        dtype: torch.dtype,
        device: torch.device,
        absolute_damp: Optional[float] = None,
    ) -> None:
        self._names, self.sizes, self.groups = list(names), list(sizes), groups
        self.numel = sum(sizes)
        self._group_fisher = group_fisher
        self._dtype, self._device = dtype, device
        self._diag: Dict[str, torch.Tensor] = {}
        self._damp: Dict[str, torch.Tensor] = {}
        self._layout: Dict[str, str] = {}
        self._absolute_damp = absolute_damp  # lam before any factorisation (absolute damping): no pass needed for it
        self.passes = 0  # gradient passes over all groups so far

    @property
    def names(self) -> List[str]:
        return list(self._names)

    def describe(self) -> List[str]:
        layout = [self._layout.get(name, f"{name}: (not built yet)") for name in self._names]
        return [f"streamed in {len(self.groups)} layer groups, {self.passes} gradient passes so far"] + layout

    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """(p,) -> the per-layer (d_l,) pieces, target order."""
        return list(torch.split(flat.reshape(-1).to(device=self._device, dtype=self._dtype), self.sizes))

    def _each_layer(self, apply: Callable[[LayerFisher, int], None]) -> None:
        """One pass: ``apply(layer, target index)`` for every layer, group by group (each group's G freed before the next)."""
        index = {name: i for i, name in enumerate(self._names)}
        for group in self.groups:
            self._apply_to_group(group, apply, index)  # a call of its own: no local outlives the group's G
            gc.collect()  # anything else that still held the group's G
            release_freed_memory()
        self.passes += 1

    def _apply_to_group(self, group: List[str], apply: Callable[[LayerFisher, int], None], index: Dict[str, int]) -> None:
        for layer in self._group_fisher(group):
            apply(layer, index[layer.name])
            self._damp[layer.name] = layer.damp_vector()
            self._layout[layer.name] = f"{layer.name}: {layer.num_blocks} x {layer.block} ({layer.form})"

    def map_layers(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        """``op(layer, *pieces)`` on every layer with the layer's pieces of the (p,) ``flats``, concatenated: one pass for
        any per-layer computation (e.g. a whole weight update), where its separate Fisher operations would take one each."""
        return self._per_layer(op, *flats)

    def _per_layer(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        pieces = [torch.split(f.reshape(-1), self.sizes) for f in flats]  # dtypes kept (bool supports stay bool)
        out: List[Optional[torch.Tensor]] = [None] * len(self._names)

        def apply(layer: LayerFisher, i: int) -> None:
            out[i] = op(layer, *(p[i] for p in pieces))

        self._each_layer(apply)
        return torch.cat([o for o in out if o is not None])

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v, (p,) -> (p,): one pass."""
        return self._per_layer(LayerFisher.fisher_times, vector)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v, (p,) -> (p,): one pass (diag(F^-1) of each layer is remembered on the way)."""

        def op(layer: LayerFisher, v: torch.Tensor) -> torch.Tensor:
            result = layer.inverse_times(v)
            self._diag.setdefault(layer.name, layer.diag_inverse())
            return result

        return self._per_layer(op, vector)

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, p): (m, p), one pass for all m."""
        pieces = split_rows(vectors, self.sizes)
        out: List[Optional[torch.Tensor]] = [None] * len(self._names)
        self._each_layer(lambda layer, i: out.__setitem__(i, layer.fisher_products(pieces[i])))
        return torch.cat([o for o in out if o is not None], dim=1)

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j for the m rows of ``vectors`` (m, p): (m,), one pass for all m."""
        pieces = split_rows(vectors, self.sizes)
        total = [torch.zeros(len(vectors), dtype=self._dtype, device=self._device)]
        self._each_layer(lambda layer, i: total.__setitem__(0, total[0] + layer.quadratic_products(pieces[i]).to(self._dtype)))
        return total[0]

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """(F_SS)^-1 r_S on S, zero off S; (p,) bool and (p,) -> (p,): one pass."""
        return self._per_layer(LayerFisher.restricted_solve, support, rhs)

    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1), (p,): one pass the first time, remembered."""
        if len(self._diag) < len(self._names):
            self._each_layer(lambda layer, i: self._diag.__setitem__(layer.name, layer.diag_inverse()))
        return torch.cat([self._diag[name] for name in self._names])

    def damp_vector(self) -> torch.Tensor:
        """lam of each weight's block, (p,): as of the last pass (with absolute damping and no pass yet, the damping given;
        else one pass)."""
        if not self._damp and self._absolute_damp is not None:
            return torch.full((self.numel,), self._absolute_damp, dtype=self._dtype, device=self._device)
        if len(self._damp) < len(self._names):
            self._each_layer(lambda layer, i: None)
        return torch.cat([self._damp[name] for name in self._names])

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 delta^T F delta, (p,) -> float: one pass."""
        pieces = self.split(delta)
        total = [0.0]
        self._each_layer(lambda layer, i: total.__setitem__(0, total[0] + layer.quadratic(pieces[i])))
        return total[0]

    def largest_eigenvalue(self) -> float:
        """lam_max(F) over all blocks: one pass."""
        largest = [0.0]
        self._each_layer(lambda layer, i: largest.__setitem__(0, max(largest[0], layer.largest_eigenvalue())))
        return largest[0]


__all__ = ["StreamedBlockFisher", "cut_layers", "partition_layers"]
