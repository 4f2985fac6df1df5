"""The interface both curvature forms share (block-diagonal :class:`BlockFisher`, whole-network
:class:`NetworkFisher`): the damped Fisher F = lam I + G^T G / N over all targets, on flat (p,) vectors
in target order. Updates and sparse-regression solvers are written against it, not against a form."""

from __future__ import annotations

from typing import Callable, List, Protocol

import torch


class Curvature(Protocol):
    numel: int  # p: weights over all targets
    sizes: List[int]  # d_l of each target, target order

    @property
    def names(self) -> List[str]: ...

    def split(self, flat: torch.Tensor) -> List[torch.Tensor]: ...

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor: ...

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, p): (m, p), factor dtype. Every form reads G the same number of
        times for all m as for one vector (two passes), so a batch of m costs well under m products."""
        ...

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j (twice :meth:`quadratic`) for the m rows of ``vectors`` (m, p): (m,), factor dtype; one pass over G."""
        ...

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor: ...

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor: ...

    def diag_inverse(self) -> torch.Tensor: ...

    def damp_vector(self) -> torch.Tensor: ...

    def quadratic(self, delta: torch.Tensor) -> float: ...

    def largest_eigenvalue(self) -> float: ...

    def describe(self) -> List[str]: ...

    def map_layers(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        """``op(part, *its pieces of the (p,) flats)`` on every independent part of F, concatenated (p,): each layer of a
        block-diagonal F (one gradient pass when streamed), the whole of a whole-network F."""
        ...


def split_rows(vectors: torch.Tensor, sizes: List[int]) -> List[torch.Tensor]:
    """(m, p) -> the per-target (m, d_l) column blocks, target order (the batched forms' counterpart of ``split``)."""
    return list(torch.split(vectors.reshape(len(vectors), -1), sizes, dim=1))
