"""The whole-network low-rank damped empirical Fisher (no block-diagonal approximation).

    F = lam I + G^T G / N,     G = [G_1 ... G_L]: (N, p), kept per layer as (N, d_l) pieces

Cross-layer terms are included: G v = sum_l G_l v_l. Nothing p x p (or B x B) is ever formed; every
inverse goes through the N x N dual system (Woodbury):

    K_S = N lam I + G_S G_S^T = N lam I + sum_l G_{l,S} G_{l,S}^T,
    (lam I + G_S^T G_S / N)^-1 r_S = (r_S - G_S^T K_S^-1 G_S r_S) / lam,

with K_S built in column chunks of each layer (no masked copy of G). All methods take and return flat
(p,) vectors in target order, in ``factor_dtype``; the same interface as
:class:`~reflowbench.hessian.block_fisher.BlockFisher`'s whole-target operations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from reflowbench.errors import FisherError
from reflowbench.hessian.block_fisher import CHUNK_ELEMENTS, POWER_ITERATIONS, FisherSpec, _cholesky_with_escalation, column_chunks, power_iteration
from reflowbench.hessian.gradients import GradientMatrix
from reflowbench.hessian.memory import check_budget, resolve_dtype

KEPT_FACTORS = 2  # dual factors K_S kept for reuse (a solver's support and the magnitude one)
# A support that differs from a kept one in at most this fraction of all p weights gets its Gram G_S G_S^T from the kept
# one by a rank-d correction (N^2 d flops for the d changed columns) instead of a pass over all of G (N^2 p flops).
GRAM_UPDATE_FRACTION = 0.25


@dataclass
class _DualSystem:
    """A kept dual system: ``support`` (p,) bool (None: all columns), ``gram`` = G_S G_S^T (N, N, undamped), the
    Cholesky ``factor`` of N damp I + gram and the ``damp`` it was made with (raised where it was not definite)."""

    support: Optional[torch.Tensor]
    gram: torch.Tensor
    factor: torch.Tensor
    damp: float


class NetworkFisher:
    """lam I + G^T G / N over all targets at once; ``spec.block_size`` and ``spec.form`` are ignored (always dual)."""

    def __init__(
        self,
        gradients: GradientMatrix,
        spec: FisherSpec,
        device: torch.device,
        budget_gb: float = 8.0,
        log: Optional[Callable[[str], None]] = None,
        option_prefix: str = "--<pruner>-",
    ) -> None:
        spec.validate()
        self.spec = spec
        self.num_grads = gradients.num_grads
        self.minibatch = gradients.minibatch  # images averaged per gradient
        self.compute_dtype = resolve_dtype(spec.compute_dtype)
        self.factor_dtype = resolve_dtype(spec.factor_dtype)
        self.device = device
        self._direct = all(r.device == device and r.dtype == self.compute_dtype for r in gradients.rows.values())
        total_columns = sum(r.shape[1] for r in gradients.rows.values())  # a Gram correction gathers at most a chunk of them
        check_budget(
            ((3 + 2 * KEPT_FACTORS) * self.num_grads**2 + min(CHUNK_ELEMENTS, self.num_grads * total_columns))
            * torch.empty((), dtype=self.factor_dtype).element_size()
            + (0 if self._direct else 2 * CHUNK_ELEMENTS * 4),
            budget_gb,
            f"the whole-network Fisher ({self.num_grads} x {self.num_grads} dual systems and their temporaries)",
            f"fewer gradients ({option_prefix}num-grads)",
            log,
        )
        self.rows: Dict[str, torch.Tensor] = dict(gradients.rows)  # storage dtype and device, as collected (no copy)
        for name, rows in self.rows.items():
            if not all(bool(torch.isfinite(chunk).all()) for _, chunk in self._column_chunks(rows)):
                raise FisherError(f"the gradients of {name} contain non-finite values: recollect them (check inputs and checkpoint)")
        self.sizes = [r.shape[1] for r in self.rows.values()]
        self.numel = sum(self.sizes)
        self.damp = self._damping(spec)
        self._diag_inverse: Optional[torch.Tensor] = None
        self._recent: List[_DualSystem] = []  # the last KEPT_FACTORS dual systems, most recently used first
        self.offsets = [0, *torch.tensor(self.sizes).cumsum(0).tolist()]  # layer l holds flat columns offsets[l]:offsets[l + 1]

    @property
    def names(self) -> List[str]:
        return list(self.rows)

    def describe(self) -> List[str]:
        return [f"whole network: {self.numel:,} weights, one {self.num_grads} x {self.num_grads} dual system (lam = {self.damp:.3g})"]

    def _damping(self, spec: FisherSpec) -> float:
        if spec.damp_mode == "absolute":
            return float(spec.damp)
        total = sum(float(chunk.to(self.factor_dtype).pow(2).sum()) for r in self.rows.values() for _, chunk in self._column_chunks(r))
        mean_diag = total / (self.num_grads * self.numel)
        return float(spec.damp * mean_diag) if mean_diag > 0 else float(spec.damp)

    # -- geometry --------------------------------------------------------------------------------
    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """(p,) -> the per-layer (d_l,) pieces, target order."""
        return list(torch.split(flat.reshape(-1).to(device=self.device, dtype=self.factor_dtype), self.sizes))

    def map_layers(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        """``op(self, *flats)``: the whole-network F has one part, itself (cross-layer terms couple every layer)."""
        return op(self, *flats)

    def damp_vector(self) -> torch.Tensor:
        return torch.full((self.numel,), self.damp, dtype=self.factor_dtype, device=self.device)

    # -- products with G and F -------------------------------------------------------------------
    def grads_times(self, vector: torch.Tensor) -> torch.Tensor:
        """G v = sum_l G_l v_l, (p,) -> (N,)."""
        out = torch.zeros(self.num_grads, dtype=self.factor_dtype, device=self.device)
        for rows, piece in zip(self.rows.values(), self.split(vector)):
            for start, chunk in self._column_chunks(rows, whole_if_direct=True):
                out += (chunk @ piece[start : start + chunk.shape[1]].to(self.compute_dtype)).to(self.factor_dtype)
        return out

    def grads_t_times(self, projected: torch.Tensor) -> torch.Tensor:
        """G^T u, (N,) -> (p,)."""
        u = projected.to(device=self.device, dtype=self.compute_dtype)
        return torch.cat([(u @ chunk).to(self.factor_dtype) for rows in self.rows.values() for _, chunk in self._column_chunks(rows, whole_if_direct=True)])

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v = lam v + G^T (G v) / N, (p,) -> (p,)."""
        v = vector.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return self.damp * v + self.grads_t_times(self.grads_times(v)) / self.num_grads

    def _project_many(self, vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(V in the factor dtype (m, p), G V^T (N, m)): one pass over G for all m rows of ``vectors`` (m, p)."""
        v = vectors.reshape(len(vectors), -1).to(device=self.device, dtype=self.factor_dtype)
        projected = torch.zeros(self.num_grads, len(v), dtype=self.factor_dtype, device=self.device)
        for rows, piece in zip(self.rows.values(), torch.split(v, self.sizes, dim=1)):
            for start, chunk in self._column_chunks(rows, whole_if_direct=True):
                projected += (chunk @ piece[:, start : start + chunk.shape[1]].T.to(self.compute_dtype)).to(self.factor_dtype)
        return v, projected

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, p): (m, p), in two passes over G for all m (a pass with m vectors costs
        less than m passes: G is read once)."""
        v, projected = self._project_many(vectors)
        u = projected.T.to(self.compute_dtype)  # (m, N)
        back = torch.cat(
            [(u @ chunk).to(self.factor_dtype) for rows in self.rows.values() for _, chunk in self._column_chunks(rows, whole_if_direct=True)], dim=1
        )
        return back.div_(self.num_grads).add_(v, alpha=self.damp)  # in place: one (m, p) temporary besides V

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j = lam |v_j|^2 + |G v_j|^2 / N for the m rows of ``vectors`` (m, p): (m,), one pass over G."""
        v, projected = self._project_many(vectors)
        return self.damp * (v * v).sum(1) + projected.pow(2).sum(0) / self.num_grads

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 delta^T F delta = 0.5 lam |delta|^2 + |G delta|^2 / (2N)."""
        d = delta.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return float(0.5 * self.damp * d.pow(2).sum() + self.grads_times(d).pow(2).sum() / (2 * self.num_grads))

    def largest_eigenvalue(self, iterations: int = POWER_ITERATIONS) -> float:
        """lam + sigma_max(G)^2 / N by power iteration on G G^T (N x N, never formed)."""
        sigma2 = power_iteration(
            lambda v: self.grads_times(self.grads_t_times(v[0, :, 0])).view(1, -1, 1).to(v.dtype),
            (1, self.num_grads, 1),
            iterations,
            torch.empty(0, dtype=self.factor_dtype, device=self.device),
        )
        return float(self.damp + sigma2[0] / self.num_grads)

    # -- the dual system -------------------------------------------------------------------------
    def _column_chunks(self, rows: torch.Tensor, whole_if_direct: bool = False) -> Iterator[Tuple[int, torch.Tensor]]:
        """(first column, (N, c) columns of ``rows`` in the compute dtype on the compute device): the storage (bfloat16,
        host memory with offload) is converted one chunk at a time, never a whole layer; all of ``rows`` at once when
        no conversion is needed and ``whole_if_direct``."""
        return column_chunks(rows, self._direct, whole_if_direct, self.device, self.compute_dtype)

    def _dual_factor(self, support: Optional[torch.Tensor]) -> Tuple[torch.Tensor, float]:
        """Cholesky of K_S = N lam I + G_S G_S^T (all columns when support is None), with its damping. The last
        :data:`KEPT_FACTORS` are kept with their Grams: a solver backsolves the magnitude support and then its own,
        and the joint update that follows on whichever won needs no K_S of its own; a support close to a kept one
        (IHT moves few weights off the magnitude support) corrects that one's Gram by its changed columns instead
        of a pass over all of G (N^2 p flops)."""
        for index, kept in enumerate(self._recent):
            if (kept.support is None) if support is None else (kept.support is not None and torch.equal(kept.support, support)):
                self._recent.insert(0, self._recent.pop(index))  # most recently used first
                return kept.factor, kept.damp
        gram = self._corrected_gram(support)
        gram = self._build_gram(support) if gram is None else gram
        factor, damp = self._factorise(gram)
        self._recent = [_DualSystem(None if support is None else support.clone(), gram, factor, damp), *self._recent][:KEPT_FACTORS]
        return factor, damp

    def _build_gram(self, support: Optional[torch.Tensor]) -> torch.Tensor:
        """G_S G_S^T, (N, N) in the factor dtype, from one pass over G in column chunks."""
        n = self.num_grads
        gram = torch.zeros(n, n, dtype=self.factor_dtype, device=self.device)
        pieces = self.split(support.to(self.factor_dtype)) if support is not None else [None] * len(self.rows)
        for rows, keep in zip(self.rows.values(), pieces):
            for start, chunk in self._column_chunks(rows):
                if keep is not None:
                    chunk = chunk * keep[start : start + chunk.shape[1]].to(chunk.dtype)
                gram += (chunk @ chunk.T).to(self.factor_dtype)
        return gram

    def _corrected_gram(self, support: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """G_S G_S^T from the kept Gram whose support differs least from ``support``: + G_A G_A^T for the columns it
        adds, - G_R G_R^T for those it removes (float64-exact products of the changed columns, in chunks); None when
        nothing is kept or more than :data:`GRAM_UPDATE_FRACTION` of the columns changed."""
        wanted = torch.ones(self.numel, dtype=torch.bool, device=self.device) if support is None else support.reshape(-1).to(self.device)
        best: Optional[Tuple[int, _DualSystem, torch.Tensor]] = None
        for kept in self._recent:
            changed = wanted ^ kept.support if kept.support is not None else ~wanted
            count = int(changed.sum())
            if best is None or count < best[0]:
                best = (count, kept, changed)
        if best is None or best[0] > GRAM_UPDATE_FRACTION * self.numel:
            return None
        _, kept, changed = best
        gram = kept.gram.clone()
        for columns, sign in ((changed & wanted, 1.0), (changed & ~wanted, -1.0)):
            for block in self._gathered_columns(columns.nonzero().flatten()):
                gram.addmm_(block, block.T, alpha=sign)
        return gram

    def _gathered_columns(self, flat_indices: torch.Tensor) -> Iterator[torch.Tensor]:
        """The columns of G at sorted flat ``flat_indices``, as (N, c) blocks in the factor dtype on the compute
        device, at most :data:`CHUNK_ELEMENTS` elements each (a gather per layer; no copy of a whole layer)."""
        per_block = max(1, CHUNK_ELEMENTS // self.num_grads)
        bounds = torch.tensor(self.offsets[1:-1], device=flat_indices.device)
        layer_of = torch.bucketize(flat_indices, bounds, right=True)
        for layer, rows in enumerate(self.rows.values()):
            local = flat_indices[layer_of == layer] - self.offsets[layer]
            for start in range(0, len(local), per_block):
                index = local[start : start + per_block].to(rows.device)
                yield rows.index_select(1, index).to(device=self.device, dtype=self.factor_dtype)

    def _factorise(self, gram: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """Cholesky of N damp I + gram, the damping raised x10 where it is not definite; (factor (N, N), damp)."""
        n = self.num_grads
        eye = torch.eye(n, dtype=self.factor_dtype, device=self.device)
        damp = torch.tensor([self.damp], dtype=self.factor_dtype, device=self.device)
        factor, damp = _cholesky_with_escalation(
            (gram + n * self.damp * eye).unsqueeze(0), "the whole-network Fisher", lambda m, extra: m + n * extra.view(-1, 1, 1) * eye, damp
        )
        return factor[0], float(damp[0])

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """x_S = (lam I + G_S^T G_S / N)^-1 r_S on S (bool (p,)), zero off S; (p,). One N x N solve."""
        keep = support.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        r = rhs.reshape(-1).to(device=self.device, dtype=self.factor_dtype) * keep
        if not bool(keep.any()):
            return torch.zeros_like(r)
        factor, damp = self._dual_factor(support.reshape(-1).to(self.device))
        solved = torch.cholesky_solve(self.grads_times(r).unsqueeze(1), factor).squeeze(1)
        return (r - self.grads_t_times(solved) * keep) / damp * keep

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v, (p,) -> (p,)."""
        return self.restricted_solve(torch.ones(self.numel, dtype=torch.bool, device=self.device), vector)

    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1) = (1 - colsum((L^-1 G)^2)) / lam, clamped to the lower bound 1 / (lam + |g_q|^2 / N)
        where cancellation crosses it (with a warning); (p,), computed once."""
        if self._diag_inverse is None:
            factor, damp = self._dual_factor(None)
            factor_c = factor.to(self.compute_dtype)
            pieces = []
            for rows in self.rows.values():
                captured = torch.empty(rows.shape[1], dtype=self.factor_dtype, device=self.device)
                norms = torch.empty_like(captured)
                for start, chunk in self._column_chunks(rows):
                    z = torch.linalg.solve_triangular(factor_c, chunk, upper=False)
                    captured[start : start + chunk.shape[1]] = z.square_().sum(0, dtype=self.factor_dtype)
                    norms[start : start + chunk.shape[1]] = chunk.to(self.factor_dtype).pow(2).sum(0)
                diag = (1.0 - captured) / damp
                lower = 1.0 / (damp + norms / self.num_grads)
                below = diag < lower
                if bool(below.any()):
                    warnings.warn(
                        f"whole-network Fisher: {int(below.sum())} entries of diag(F^-1) fell below their lower bound 1/F_qq through "
                        f"cancellation (lam = {damp:.3g}); clamped to the bound. A larger damping (--<pruner>-damp) avoids it.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                pieces.append(torch.where(below, lower, diag))
            self._diag_inverse = torch.cat(pieces)
        return self._diag_inverse


__all__ = ["NetworkFisher"]
