"""Low-rank block-diagonal empirical Fisher, never formed as a d x d (or, when N < B, a B x B) matrix.

Per block b of a layer (a contiguous chunk of B flattened weights, or the whole layer):

    F_b = lam * I + G_b^T G_b / N,                       G_b: (N, B)

Two equivalent forms, chosen per layer by cost:
- dual (N < B), Woodbury with K_b = N lam I + G_b G_b^T (N x N):
      F_b^-1 = (1/lam) [ I - G_b^T K_b^-1 G_b ]
      diag(F_b^-1) = (1 - colsum((L^-1 G_b)^2)) / lam,       K_b = L L^T
- primal (B <= N): Cholesky of the B x B matrix F_b itself.

Blocks of one layer are batched: the layer's (N, d) rows are zero-padded to nb * B columns and viewed as
(nb, N, B). Padded columns are exact zeros, which decouple (F = lam there) and are cut off on return.
Factorisations run in ``factor_dtype`` (float64 by default: the dual diagonal is a difference 1 - |z|^2).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch

from reflowbench.errors import ConfigError, FisherError
from reflowbench.hessian.gradients import GradientMatrix
from reflowbench.hessian.memory import check_budget, resolve_dtype

DAMP_MODES = ("absolute", "relative")
FORMS = ("auto", "dual", "primal")
MAX_DAMP_ESCALATIONS = 6
POWER_ITERATIONS = 50  # power-iteration steps for lam_max(F)
DIAG_CHUNK_ELEMENTS = 1 << 23  # elements of L^-1 G computed at once in diag_inverse (32 MiB in float32)


@dataclass
class FisherSpec:
    """Block structure and damping of F."""

    block_size: int = 0  # B: weights per block within a layer (0 = whole layer)
    damp: float = 1e-5  # lam (absolute), or the multiple of mean(diag(G^T G / N)) per block (relative)
    damp_mode: str = "absolute"  # absolute or relative
    form: str = "auto"  # auto (dual when N < B), dual, primal
    compute_dtype: str = "float32"  # dtype of the large products with G
    factor_dtype: str = "float64"  # dtype of the N x N / B x B factorisations

    def validate(self) -> None:
        if self.damp_mode not in DAMP_MODES:
            raise ConfigError(f"damp_mode must be one of {DAMP_MODES}, got {self.damp_mode!r}")
        if self.form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS}, got {self.form!r}")
        if not (self.damp > 0 and math.isfinite(self.damp)):
            raise ConfigError(f"damping must be a positive finite number, got {self.damp}: the damped Fisher lam*I + G^T G/N needs lam > 0")
        if self.block_size < 0:
            raise ConfigError(f"block_size must be >= 0 (0 = whole layer), got {self.block_size}")


def _cholesky_with_escalation(matrix: torch.Tensor, name: str, add_identity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], damp: torch.Tensor) -> tuple:
    """Batched Cholesky; where a block is not positive definite, multiply its damping by 10 (with a warning)."""
    for attempt in range(MAX_DAMP_ESCALATIONS + 1):
        factor, info = torch.linalg.cholesky_ex(matrix)
        failed = info != 0
        if not bool(failed.any()):
            return factor, damp
        if attempt == MAX_DAMP_ESCALATIONS:
            break
        bad = failed.nonzero().flatten().tolist()
        warnings.warn(
            f"Fisher block(s) {bad[:8]} of {name} are not positive definite at damping {damp[failed].max().item():.3g}; "
            "multiplying their damping by 10 (more gradients or a larger --<pruner>-damp avoids this)",
            RuntimeWarning,
            stacklevel=3,
        )
        extra = torch.where(failed, damp * 9.0, torch.zeros_like(damp))
        matrix = add_identity(matrix, extra)
        damp = damp + extra
    raise FisherError(
        f"the Fisher blocks of {name} stay singular after raising the damping to {damp.max().item():.3g}: "
        "the gradients are degenerate (check for non-finite or all-zero gradients) or use --<pruner>-damp-mode relative"
    )


class LayerFisher:
    """The blocks of one target layer, factorised once; all operations take and return flat (d,) vectors."""

    def __init__(self, name: str, rows: torch.Tensor, spec: FisherSpec, device: torch.device, before_factorise: Optional[Callable[[], None]] = None) -> None:
        self.name = name
        self.num_grads, self.numel = rows.shape
        self.block = self.numel if spec.block_size in (0, None) or spec.block_size >= self.numel else spec.block_size
        self.num_blocks = -(-self.numel // self.block)
        self.form = spec.form if spec.form != "auto" else ("dual" if self.num_grads < self.block else "primal")
        self.compute_dtype = resolve_dtype(spec.compute_dtype)
        self.factor_dtype = resolve_dtype(spec.factor_dtype)
        self.device = device
        if self.numel % self.block == 0:  # no padding: a view of the rows (a copy only on dtype/device change)
            padded = rows.to(device=device, dtype=self.compute_dtype)
        else:
            padded = torch.zeros(self.num_grads, self.num_blocks * self.block, dtype=self.compute_dtype, device=device)
            padded[:, : self.numel] = rows.to(device=device, dtype=self.compute_dtype)
        self.grads = padded.view(self.num_grads, self.num_blocks, self.block).transpose(0, 1)  # (nb, N, B)
        if not torch.isfinite(self.grads).all():
            raise FisherError(f"the gradients of {name} contain non-finite values: recollect them (check inputs and checkpoint)")
        self.damp = self._damping(spec)  # (nb,)
        self._factor: Optional[torch.Tensor] = None  # factorised on first use (restricted solves and products never need it)
        self._before_factorise = before_factorise
        self._diag_inverse: Optional[torch.Tensor] = None

    @property
    def factor(self) -> torch.Tensor:
        """Cholesky factor of K_b (dual, (nb, N, N)) or F_b (primal, (nb, B, B)), computed on first use;
        a block that is not positive definite has its damping raised (with a warning) before this returns."""
        if self._factor is None:
            if self._before_factorise is not None:
                self._before_factorise()
            self._factor, self.damp = self._factorise(self.grads, self.damp)
        return self._factor

    def factor_bytes(self) -> int:
        """Bytes of the factor of this layer (allocated or not)."""
        side = self.num_grads if self.form == "dual" else self.block
        return self.num_blocks * side * side * torch.empty((), dtype=self.factor_dtype).element_size()

    def _damping(self, spec: FisherSpec) -> torch.Tensor:
        if spec.damp_mode == "absolute":
            return torch.full((self.num_blocks,), spec.damp, dtype=self.factor_dtype, device=self.device)
        mean_diag = self.grads.to(self.factor_dtype).pow(2).sum(dim=(1, 2)) / (self.num_grads * self.block)
        damp = spec.damp * mean_diag
        return torch.where(damp > 0, damp, torch.full_like(damp, spec.damp))

    def _factorise(self, grads: torch.Tensor, damp: torch.Tensor) -> tuple:
        n = self.num_grads
        if self.form == "dual":
            gram = _gram_rows(grads).to(self.factor_dtype)  # (nb, N, N)
            eye = torch.eye(n, dtype=self.factor_dtype, device=self.device)
            matrix = gram + (n * damp).view(-1, 1, 1) * eye
            return _cholesky_with_escalation(matrix, self.name, lambda m, extra: m + (n * extra).view(-1, 1, 1) * eye, damp)
        gram = torch.bmm(grads.transpose(1, 2), grads).to(self.factor_dtype) / n  # (nb, B, B)
        eye = torch.eye(self.block, dtype=self.factor_dtype, device=self.device)
        matrix = gram + damp.view(-1, 1, 1) * eye
        return _cholesky_with_escalation(matrix, self.name, lambda m, extra: m + extra.view(-1, 1, 1) * eye, damp)

    # -- helpers ---------------------------------------------------------------------------------
    def _blocks(self, vector: torch.Tensor) -> torch.Tensor:
        """(d,) -> (nb, B) zero-padded, in factor dtype."""
        padded = torch.zeros(self.num_blocks * self.block, dtype=self.factor_dtype, device=self.device)
        padded[: self.numel] = vector.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return padded.view(self.num_blocks, self.block)

    def _flat(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.reshape(-1)[: self.numel]

    # -- block geometry --------------------------------------------------------------------------
    def to_blocks(self, vector: torch.Tensor) -> torch.Tensor:
        """(d,) -> (nb, B), zero-padded, factor dtype, on the layer's device."""
        return self._blocks(vector)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """(nb, B) -> (d,) (the padding dropped)."""
        return self._flat(blocks)

    def block_slices(self) -> List[slice]:
        """The flat-weight slice of each block, in block order (the last may be shorter than B)."""
        return [slice(b * self.block, min((b + 1) * self.block, self.numel)) for b in range(self.num_blocks)]

    def damp_vector(self) -> torch.Tensor:
        """lam of each weight's block, shape (d,), factor dtype."""
        return self._flat(self.damp.view(-1, 1).expand(self.num_blocks, self.block))

    # -- products with G and F -------------------------------------------------------------------
    def grads_times(self, vector: torch.Tensor) -> torch.Tensor:
        """G_b v_b for every block: (d,) -> (nb, N), factor dtype."""
        v = self._blocks(vector)
        return torch.bmm(self.grads, v.to(self.grads.dtype).unsqueeze(2)).squeeze(2).to(self.factor_dtype)

    def grads_t_times(self, rows: torch.Tensor) -> torch.Tensor:
        """G_b^T u_b for every block: (nb, N) -> (d,), factor dtype."""
        return self._flat(torch.bmm(self.grads.transpose(1, 2), rows.to(self.grads.dtype).unsqueeze(2)).squeeze(2).to(self.factor_dtype))

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v = lam v + G^T (G v) / N per block, (d,) -> (d,), factor dtype; F is never formed."""
        v = vector.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return self.damp_vector() * v + self.grads_t_times(self.grads_times(v)) / self.num_grads

    def largest_eigenvalue(self, iterations: int = POWER_ITERATIONS) -> float:
        """lam_max(F) over the layer's blocks: max_b lam_b + sigma_max(G_b)^2 / N, by batched power iteration
        on G_b^T G_b (a lower estimate that converges from below; 2 N B flops per block and iteration)."""
        sigma2 = power_iteration(
            lambda v: torch.bmm(self.grads.transpose(1, 2), torch.bmm(self.grads, v)), (self.num_blocks, self.block, 1), iterations, self.grads
        )
        return float((self.damp + sigma2.to(self.factor_dtype) / self.num_grads).max())

    # -- operations ------------------------------------------------------------------------------
    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1), shape (d,), factor dtype; computed once and remembered (the Fisher does not change)."""
        if self._diag_inverse is None:
            self._diag_inverse = self._compute_diag_inverse()
        return self._diag_inverse

    def _compute_diag_inverse(self) -> torch.Tensor:
        factor = self.factor  # first: factorising may raise the damping
        lam = self.damp.view(-1, 1)
        if self.form == "dual":
            # colsum((L^-1 G_b)^2) in column chunks: the N^2 B work in the compute dtype, O(N * chunk) temporaries
            factor = factor.to(self.compute_dtype)
            captured = torch.empty(self.num_blocks, self.block, dtype=self.factor_dtype, device=self.device)
            step = max(1, DIAG_CHUNK_ELEMENTS // (self.num_blocks * self.num_grads))
            for start in range(0, self.block, step):
                z = torch.linalg.solve_triangular(factor, self.grads[:, :, start : start + step], upper=False)  # (nb, N, c)
                z = z if z.dtype in (torch.float32, torch.float64) else z.float()
                captured[:, start : start + step] = z.square_().sum(1, dtype=self.factor_dtype)
                del z
            return self._flat(self._clamp_to_lower_bound((1.0 - captured) / lam))
        inverse = torch.cholesky_inverse(self.factor)
        return self._flat(torch.diagonal(inverse, dim1=1, dim2=2))

    def _clamp_to_lower_bound(self, diag: torch.Tensor) -> torch.Tensor:
        """Keep the dual diagonal (1 - sum z^2) / lam, a difference of nearly equal numbers when lam is small,
        at or above its exact lower bound [F^-1]_qq >= 1 / F_qq = 1 / (lam + ||g_q||^2 / N) (diagonal of an
        SPD inverse), which cancellation can cross and even make non-positive; (nb, B) in, (nb, B) out."""
        col_norm2 = torch.zeros_like(diag)
        step = max(1, DIAG_CHUNK_ELEMENTS // (self.num_blocks * self.num_grads))
        for start in range(0, self.block, step):
            col_norm2[:, start : start + step] = self.grads[:, :, start : start + step].to(self.factor_dtype).pow(2).sum(1)
        lower = 1.0 / (self.damp.view(-1, 1) + col_norm2 / self.num_grads)
        below = diag < lower
        if bool(below.any()):
            warnings.warn(
                f"{self.name}: {int(below.sum())} entries of diag(F^-1) fell below their lower bound 1/F_qq through cancellation "
                f"(lam = {float(self.damp.min()):.3g}); clamped to the bound. A larger damping (--<pruner>-damp) avoids it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch.where(below, lower, diag)

    def _solve(self, grads: torch.Tensor, factor: torch.Tensor, damp: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(lam I + G^T G / N)^-1 v per block, for (nb, B) v and a factor of :meth:`_factorise`."""
        if self.form == "dual":  # products with G in the compute dtype, the N x N solve in the factor dtype
            gv = torch.bmm(grads, v.to(grads.dtype).unsqueeze(2)).to(self.factor_dtype)  # (nb, N, 1)
            solved = torch.cholesky_solve(gv, factor)
            correction = torch.bmm(grads.transpose(1, 2), solved.to(grads.dtype)).squeeze(2).to(self.factor_dtype)
            return (v - correction) / damp.view(-1, 1)
        return torch.cholesky_solve(v.unsqueeze(2), factor).squeeze(2)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v for v of shape (d,)."""
        return self._flat(self._solve(self.grads, self.factor, self.damp, self._blocks(vector)))

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """x_S = (lam I + G_S^T G_S / N)^-1 r_S on support S (bool (d,)), x = 0 off S; shape (d,).

        Per block (block-diagonal F), all blocks of the layer in one batched factorisation, never
        refactorising the layer's F and never copying all of G. Coordinates off S decouple (F = lam
        there, r zero). Two exact forms, chosen by the largest kept count m of a block:
        - m <= N (gathered primal): the kept columns of each block gathered into (nb, N, m), one m x m
          Cholesky per block (padded columns of blocks with fewer kept weights are zero and decouple);
        - m > N (dual): K_S = N lam I + G_S G_S^T (N x N) built in column chunks; with r zero off S,
          G_S r_S = G r and G_S^T u = (G^T u) on S.
        """
        keep = self._blocks(support.to(self.factor_dtype))  # (nb, B) of 0/1
        r = self._blocks(rhs) * keep
        kept_counts = keep.sum(1).long()
        widest = int(kept_counts.max()) if kept_counts.numel() else 0
        if widest == 0:
            return torch.zeros(self.numel, dtype=self.factor_dtype, device=self.device)
        if widest <= self.num_grads:
            return self._flat(self._gathered_solve(keep, kept_counts, widest, r))
        n = self.num_grads
        eye = torch.eye(n, dtype=self.factor_dtype, device=self.device)
        matrix = self._masked_gram_rows(keep) + (n * self.damp).view(-1, 1, 1) * eye
        factor, damp = _cholesky_with_escalation(matrix, self.name, lambda m, extra: m + (n * extra).view(-1, 1, 1) * eye, self.damp.clone())
        gr = torch.bmm(self.grads, r.to(self.grads.dtype).unsqueeze(2)).to(self.factor_dtype)  # (nb, N, 1)
        solved = torch.cholesky_solve(gr, factor)
        correction = torch.bmm(self.grads.transpose(1, 2), solved.to(self.grads.dtype)).squeeze(2).to(self.factor_dtype) * keep
        return self._flat((r - correction) / damp.view(-1, 1) * keep)

    def _gathered_solve(self, keep: torch.Tensor, kept_counts: torch.Tensor, widest: int, r: torch.Tensor) -> torch.Tensor:
        """The restricted solve on the gathered kept columns, (nb, B) in and out (see :meth:`restricted_solve`)."""
        order = torch.argsort((keep == 0).to(torch.int8), dim=1, stable=True)[:, :widest]  # kept indices first, (nb, m)
        valid = (torch.arange(widest, device=self.device).view(1, -1) < kept_counts.view(-1, 1)).to(self.factor_dtype)  # (nb, m)
        gathered = torch.gather(self.grads, 2, order.unsqueeze(1).expand(-1, self.num_grads, -1)).to(self.factor_dtype) * valid.unsqueeze(1)
        eye = torch.eye(widest, dtype=self.factor_dtype, device=self.device)
        matrix = torch.bmm(gathered.transpose(1, 2), gathered) / self.num_grads + self.damp.view(-1, 1, 1) * eye
        factor, _ = _cholesky_with_escalation(matrix, self.name, lambda m, extra: m + extra.view(-1, 1, 1) * eye, self.damp.clone())
        solved = torch.cholesky_solve((torch.gather(r, 1, order) * valid).unsqueeze(2), factor).squeeze(2) * valid  # (nb, m)
        return torch.zeros_like(r).scatter_add_(1, order, solved) * keep

    def _masked_gram_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """G_S G_S^T per block, (nb, N, N) in the factor dtype, accumulated over column chunks (no copy of G)."""
        gram = torch.zeros(self.num_blocks, self.num_grads, self.num_grads, dtype=self.factor_dtype, device=self.device)
        step = max(1, DIAG_CHUNK_ELEMENTS // (self.num_blocks * self.num_grads))
        for start in range(0, self.block, step):
            chunk = self.grads[:, :, start : start + step] * keep[:, start : start + step].to(self.grads.dtype).unsqueeze(1)
            gram += torch.bmm(chunk, chunk.transpose(1, 2)).to(self.factor_dtype)
        return gram

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 * delta^T F delta (block-diagonal F) for delta of shape (d,)."""
        d = self._blocks(delta)
        projected = torch.bmm(self.grads, d.to(self.grads.dtype).unsqueeze(2)).squeeze(2).to(self.factor_dtype)  # (nb, N)
        return float(0.5 * ((self.damp.view(-1, 1) * d.pow(2)).sum() + projected.pow(2).sum() / self.num_grads))


def power_iteration(apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple, iterations: int, like: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of the PSD operator ``apply`` for each leading batch index of ``shape`` (batch, n, 1);
    a fixed-seed start (reproducible), Rayleigh quotient of the last iterate, shape (batch,)."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=generator, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    value = torch.zeros(shape[0], dtype=like.dtype, device=like.device)
    for _ in range(iterations):
        w = apply(v)
        value = (v * w).sum(dim=(1, 2))
        v = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return value


def _gram_rows(grads: torch.Tensor) -> torch.Tensor:
    """G_b G_b^T for every block, (nb, N, B) -> (nb, N, N); a plain 2-D product for one block (no transposed copy of G)."""
    if grads.shape[0] == 1:
        single = grads[0]
        return (single @ single.T).unsqueeze(0)
    return torch.bmm(grads, grads.transpose(1, 2))


class BlockFisher:
    """The block-diagonal damped empirical Fisher of all target layers (one :class:`LayerFisher` each).

    Besides per-layer access (``fisher[name]``), it offers the whole-target operations on flat (p,)
    vectors in target order (the interface :class:`~reflowbench.hessian.network_fisher.NetworkFisher`
    shares): ``fisher_times``, ``inverse_times``, ``diag_inverse``, ``restricted_solve``, ``damp_vector``,
    ``quadratic``, ``largest_eigenvalue``. Factors are computed on first use; the memory budget of all
    factors is checked then, before any is allocated.
    """

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
        self._budget_gb, self._log, self._option_prefix = budget_gb, log, option_prefix
        self._budget_checked = False
        self._gradients_bytes = gradients.nbytes()
        self.layers: Dict[str, LayerFisher] = {
            name: LayerFisher(name, rows, spec, device, before_factorise=self._check_factor_budget) for name, rows in gradients.rows.items()
        }
        self.sizes = [layer.numel for layer in self.layers.values()]
        self.numel = sum(self.sizes)

    def _check_factor_budget(self) -> None:
        if self._budget_checked:
            return
        check_budget(
            sum(layer.factor_bytes() for layer in self) + _largest_factor_temporary(self),
            self._budget_gb,
            "the block Fisher factors and the largest per-layer temporary",
            f"a smaller {self._option_prefix}block-size (when N >= B) or fewer gradients ({self._option_prefix}num-grads, when N < B)",
            self._log,
        )
        self._budget_checked = True

    def __iter__(self) -> Iterator[LayerFisher]:
        return iter(self.layers.values())

    def __getitem__(self, name: str) -> LayerFisher:
        return self.layers[name]

    @property
    def names(self) -> List[str]:
        return list(self.layers)

    def describe(self) -> List[str]:
        return [f"{layer.name}: {layer.num_blocks} x {layer.block} ({layer.form})" for layer in self]

    # -- whole-target operations on flat (p,) vectors, factor dtype ------------------------------
    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """(p,) -> the per-layer (d_l,) pieces, target order."""
        return list(torch.split(flat.reshape(-1), self.sizes))

    def _per_layer(self, op: Callable[[LayerFisher, torch.Tensor], torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        pieces = [self.split(f) for f in flats]
        return torch.cat([op(layer, *(p[i] for p in pieces)) for i, layer in enumerate(self)])

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v, (p,) -> (p,)."""
        return self._per_layer(LayerFisher.fisher_times, vector)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v, (p,) -> (p,)."""
        return self._per_layer(LayerFisher.inverse_times, vector)

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """(F_SS)^-1 r_S on S, zero off S; (p,) bool and (p,) -> (p,)."""
        return self._per_layer(LayerFisher.restricted_solve, support, rhs)

    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1), (p,)."""
        return torch.cat([layer.diag_inverse() for layer in self])

    def damp_vector(self) -> torch.Tensor:
        """lam of each weight's block, (p,)."""
        return torch.cat([layer.damp_vector() for layer in self])

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 delta^T F delta, (p,) -> float."""
        return sum(layer.quadratic(piece) for layer, piece in zip(self, self.split(delta)))

    def largest_eigenvalue(self) -> float:
        """lam_max(F) = max over blocks of lam_b + sigma_max(G_b)^2 / N (exact, from the N x N or B x B Gram)."""
        return max(layer.largest_eigenvalue() for layer in self)


def _largest_factor_temporary(fisher: "BlockFisher") -> int:
    """Bytes of the largest per-layer temporary while factorising (the Gram before its Cholesky, and the diagonal's chunks)."""
    largest = 0
    for layer in fisher:
        dual = layer.form == "dual"
        largest = max(largest, layer.factor_bytes() * (2 if dual else 1) + (2 * 4 * DIAG_CHUNK_ELEMENTS if dual else layer.factor_bytes()))
    return largest
