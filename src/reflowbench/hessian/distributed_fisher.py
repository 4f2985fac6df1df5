"""The block-diagonal Fisher sharded across the processes of a ``torch.distributed`` group (``torchrun``).

With K ranks, rank r computes its share of the N gradient rows (Fisher images r*N/K .. (r+1)*N/K) for every
target layer. Layers are independent under the block-diagonal F, so each layer is given to one rank (largest
layers first, to the least-loaded rank); every rank sends its rows of a layer to the layer's owner (``gather``),
which then holds all N rows of its own layers and nothing of the others. Each rank factorises its own layers.
An operation on flat (p,) vectors runs on each rank's layers and is summed across ranks (``all_reduce``), so every
rank ends with the whole result: the saliencies for the global selection (every rank selects the same masks) and
the weight updates (every rank writes the same weights). Memory per rank: its share of G for all layers while
collecting (N/K x p), then all rows of its layers (about N x p/K).

Works with any backend that has ``gather`` and ``all_reduce`` (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from reflowbench.hessian.block_fisher import BlockFisher, FisherSpec
from reflowbench.hessian.curvature import split_rows
from reflowbench.hessian.gradients import GradientMatrix


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def row_shares(num_grads: int, world: int) -> List[range]:
    """The rows of G each rank computes: N split into ``world`` consecutive near-equal ranges."""
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(num_grads), world)])
    return [range(int(bounds[r]), int(bounds[r + 1])) for r in range(world)]


def assign_layers(sizes: Dict[str, int], world: int) -> Dict[str, int]:
    """Layer name -> owning rank: largest layers first, each to the rank with the fewest weights so far (ties: lowest rank)."""
    load = [0] * world
    owner: Dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], list(sizes).index(n))):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[name] = rank
        load[rank] += sizes[name]
    return owner


def gather_owned_rows(local: GradientMatrix, owner: Dict[str, int], num_grads: int, shares: List[range]) -> GradientMatrix:
    """Every rank's rows of each layer sent to the layer's owner; returns this rank's layers with all N rows (rank order).
    Each local share is freed once sent."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows: Dict[str, torch.Tensor] = {}
    for name in list(local.rows):
        mine = local.rows.pop(name).contiguous()
        local.storage.pop(name, None)
        if owner[name] == rank:
            parts = [torch.empty(len(shares[r]), mine.shape[1], dtype=mine.dtype, device=mine.device) for r in range(world)]
            dist.gather(mine, gather_list=parts, dst=rank)
            rows[name] = torch.cat(parts)
        else:
            dist.gather(mine, dst=owner[name])
        del mine
    return GradientMatrix(rows=rows, num_grads=num_grads, minibatch=local.minibatch)


class ShardedBlockFisher:
    """The block Fisher of all targets with each layer on its owning rank; the flat interface of
    :class:`~reflowbench.hessian.curvature.Curvature`, every result summed across ranks (see the module)."""

    def __init__(self, names: List[str], sizes: List[int], owner: Dict[str, int], local: BlockFisher, dtype: torch.dtype, device: torch.device) -> None:
        self._names, self.sizes, self.owner, self.local = list(names), list(sizes), owner, local
        self.numel = sum(sizes)
        self._dtype, self._device = dtype, device
        self._offsets = dict(zip(self._names, np.cumsum([0] + self.sizes[:-1]).tolist()))
        self._diag: Optional[torch.Tensor] = None

    @property
    def names(self) -> List[str]:
        return list(self._names)

    def describe(self) -> List[str]:
        return [f"sharded over {dist.get_world_size()} ranks (this rank {dist.get_rank()}: {len(self.local.names)} layers)"] + self.local.describe()

    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        return list(torch.split(flat.reshape(-1).to(device=self._device, dtype=self._dtype), self.sizes))

    def map_layers(self, op: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """``op(layer, *pieces)`` on this rank's layers, placed in a (p,) vector, or (m, p) when ``tensors`` are (m, p)
        (split along their last, weight axis), and summed across ranks: the whole result on every rank."""
        lead = tuple(tensors[0].shape[:-1]) if tensors and tensors[0].dim() > 1 else ()
        out = torch.zeros(*lead, self.numel, dtype=self._dtype, device=self._device)
        pieces = [dict(zip(self._names, torch.split(t.reshape(*lead, -1), self.sizes, dim=-1))) for t in tensors]
        for layer in self.local:
            start = self._offsets[layer.name]
            out[..., start : start + layer.numel] = op(layer, *(p[layer.name] for p in pieces)).to(self._dtype)
        dist.all_reduce(out)
        return out

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        return self.map_layers(lambda layer, v: layer.fisher_times(v), vector)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        return self.map_layers(lambda layer, v: layer.inverse_times(v), vector)

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, p): this rank's layers, summed across ranks; (m, p) on every rank."""
        return self.map_layers(lambda layer, v: layer.fisher_products(v), vectors.reshape(len(vectors), -1))

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j for the m rows of ``vectors`` (m, p): this rank's layers' share, summed across ranks; (m,)."""
        pieces = dict(zip(self._names, split_rows(vectors, self.sizes)))
        total = torch.zeros(len(vectors), dtype=torch.float64, device=self._device)
        for layer in self.local:
            total += layer.quadratic_products(pieces[layer.name]).to(torch.float64)
        dist.all_reduce(total)
        return total.to(self._dtype)

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        return self.map_layers(lambda layer, s, r: layer.restricted_solve(s, r), support, rhs)

    def diag_inverse(self) -> torch.Tensor:
        if self._diag is None:
            self._diag = self.map_layers(lambda layer: layer.diag_inverse())
        return self._diag

    def damp_vector(self) -> torch.Tensor:
        return self.map_layers(lambda layer: layer.damp_vector())

    def quadratic(self, delta: torch.Tensor) -> float:
        pieces = dict(zip(self._names, self.split(delta)))
        total = torch.tensor([sum(layer.quadratic(pieces[layer.name]) for layer in self.local)], dtype=torch.float64, device=self._device)
        dist.all_reduce(total)
        return float(total)

    def largest_eigenvalue(self) -> float:
        value = torch.tensor([max([layer.largest_eigenvalue() for layer in self.local], default=0.0)], dtype=torch.float64, device=self._device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value)


def build_sharded(
    names: List[str], sizes: List[int], owned: GradientMatrix, owner: Dict[str, int], spec: FisherSpec, device: torch.device, **fisher_kwargs
) -> ShardedBlockFisher:
    """This rank's block Fisher over its own layers, wrapped as the whole-target interface."""
    from reflowbench.hessian.memory import resolve_dtype

    local = BlockFisher(owned, spec, device, **fisher_kwargs)
    return ShardedBlockFisher(names, sizes, owner, local, resolve_dtype(spec.factor_dtype), device)


__all__ = ["ShardedBlockFisher", "assign_layers", "build_sharded", "gather_owned_rows", "is_distributed", "row_shares"]
