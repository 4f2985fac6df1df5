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
Factorisations run in ``factor_dtype`` (float64 by default: the dual diagonal is a difference 1 - |z|^2); the
factors are kept packed, their lower triangles only (side (side + 1) / 2 numbers a block, half a square), in the
compute dtype, and unpacked one group of blocks at a time where a solve needs them.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from reflowbench.errors import ConfigError, FisherError
from reflowbench.hessian.curvature import split_rows
from reflowbench.hessian.gradients import GradientMatrix, padded_width
from reflowbench.hessian.memory import check_budget, resolve_dtype
from reflowbench.utils.cost import release_freed_memory
from reflowbench.utils.linalg import escalating_cholesky

DAMP_MODES = ("absolute", "relative")
FORMS = ("auto", "dual", "primal")

POWER_ITERATIONS = 50  # power-iteration steps for lam_max(F), at most
POWER_TOLERANCE = 1e-8  # power iteration stops once no estimate changed by more than this fraction in a step (float32 products: ~1e-9 noise)
CHUNK_ELEMENTS = 1 << 21  # elements of G converted (or of L^-1 G computed, or of column norms measured) at once: 8 MiB in float32
FACTOR_GROUP_ELEMENTS = 1 << 21  # elements of the float64 Grams factorised (or factors unpacked) at once (16 MiB)
GATHER_GROUP_ELEMENTS = 1 << 24  # elements of a restricted solve's gathered columns and m x m systems at once (128 MiB in float64)


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
        for field_name in ("compute_dtype", "factor_dtype"):
            if getattr(self, field_name) not in ("float32", "float64"):
                raise ConfigError(
                    f"{field_name} must be float32 or float64, got {getattr(self, field_name)!r} (the storage dtype of G is the gradients' dtype)"
                )


def column_chunks(
    tensor: torch.Tensor, direct: bool, whole: bool, device: torch.device, dtype: torch.dtype, multiple: int = 1
) -> Iterator[Tuple[int, torch.Tensor]]:
    """(first index, ``tensor[..., start:start + c]`` in ``dtype`` on ``device``) covering the last dimension, c chosen so
    a piece holds at most :data:`CHUNK_ELEMENTS` elements: storage in another dtype or on another device is converted one
    piece at a time. ``direct`` (already in ``dtype`` on ``device``): the pieces are views, and with ``whole`` the
    whole tensor is one piece. ``multiple``: every piece but the last is a multiple of this many columns wide."""
    if direct and whole:
        yield 0, tensor
        return
    step = max(1, CHUNK_ELEMENTS // max(1, tensor.numel() // max(1, tensor.shape[-1])))
    step = max(multiple, step - step % multiple)
    for start in range(0, tensor.shape[-1], step):
        piece = tensor[..., start : start + step]
        yield start, piece if direct else piece.to(device=device, dtype=dtype)


def _cholesky_with_escalation(
    matrix: torch.Tensor, name: str, add_identity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], damp: torch.Tensor, first_block: int = 0
) -> tuple:
    """Batched Cholesky; where a block is not positive definite, multiply its damping by 10 (with a warning).
    ``first_block``: the layer's index of the first block of ``matrix`` (for the warning).

    A matrix with a non-finite entry is refused at once (no damping makes it definite): the gradients are finite
    (checked when collected), so their Gram products overflowed, which happens when the weights they were taken at
    have diverged."""
    if not bool(torch.isfinite(matrix).all()):
        raise FisherError(
            f"the Gram matrix G G^T of {name} is not finite although its gradients are: the gradients are too large for "
            f"{matrix.dtype} products, i.e. the weights they were taken at have diverged (a multi-step pruner's earlier "
            "updates; use fewer --<pruner>-recompute-steps or a larger --<pruner>-damp)"
        )

    def warning(failed: torch.Tensor, damp: torch.Tensor) -> str:
        bad = [first_block + b for b in failed.nonzero().flatten().tolist()]
        return (
            f"Fisher block(s) {bad[:8]} of {name} are not positive definite at damping {damp[failed].max().item():.3g}; "
            "multiplying their damping by 10 (more gradients or a larger --<pruner>-damp avoids this)"
        )

    factor, matrix, damp = escalating_cholesky(matrix, damp, add_identity, warning)
    if factor is not None:
        return factor, damp
    largest, lam = float(matrix.diagonal(dim1=-2, dim2=-1).abs().max()), damp.max().item()
    if largest * torch.finfo(matrix.dtype).eps > lam:  # the damping is below the rounding of the largest entries
        why = (
            f"so the damping is lost in {matrix.dtype} rounding: gradients that large come from weights that have diverged "
            "(a multi-step pruner's earlier updates: fewer --<pruner>-recompute-steps or a larger --<pruner>-damp)"
        )
    else:
        why = "so the gradients are degenerate (check for all-zero gradients) or use --<pruner>-damp-mode relative"
    raise FisherError(f"the Fisher blocks of {name} stay singular after raising the damping to {lam:.3g}: their largest diagonal entry is {largest:.3g}, {why}")


class LayerFisher:
    """The blocks of one target layer, factorised once; all operations take and return flat (d,) vectors.

    G stays as collected: in its storage dtype (``--<pruner>-dtype``: float32, bfloat16, float16) and on its storage
    device (host memory with ``offload``). Every product with G runs over column chunks upcast to the compute dtype on
    the compute device, at most :data:`CHUNK_ELEMENTS` elements at a time, so no float32 or on-device copy of a whole
    layer is ever made; when G already is in the compute dtype on the compute device, products use it directly.
    Factors are computed in ``factor_dtype`` (float64) one group of blocks at a time and kept packed (lower triangles
    only) in the compute dtype: a quarter of the square float64 factors' memory; solves unpack and upcast one group's
    factors at a time.
    """

    def __init__(
        self,
        name: str,
        rows: torch.Tensor,
        spec: FisherSpec,
        device: torch.device,
        before_factorise: Optional[Callable[[], None]] = None,
        storage: Optional[torch.Tensor] = None,
    ) -> None:
        self.name = name
        self.num_grads, self.numel = rows.shape
        self.block = block_of(self.numel, spec.block_size)
        self.num_blocks = -(-self.numel // self.block)
        self.form = spec.form if spec.form != "auto" else ("dual" if self.num_grads < self.block else "primal")
        self._spec = spec
        self.compute_dtype = resolve_dtype(spec.compute_dtype)
        self.factor_dtype = resolve_dtype(spec.factor_dtype)
        self.device = device
        self.grads, self.copied_bytes = _padded_blocks(rows, storage, self.num_blocks, self.block)  # (nb, N, B), storage dtype and device
        self._direct = self.grads.device == device and self.grads.dtype == self.compute_dtype
        self._column_norms2 = self._measure_column_norms2()  # (nb, B): one pass over G, which also checks it is finite
        if not bool(torch.isfinite(self._column_norms2).all()):
            raise FisherError(f"the gradients of {name} contain non-finite values: recollect them (check inputs and checkpoint)")
        self.damp = self._damping(spec)  # (nb,)
        self._factor: Optional[torch.Tensor] = None  # factorised on first use (restricted solves and products never need it)
        self._before_factorise = before_factorise
        self._diag_inverse: Optional[torch.Tensor] = None

    # -- G in chunks -----------------------------------------------------------------------------
    def _chunks(self, blocks: slice = slice(None), whole_if_direct: bool = True, multiple: int = 1) -> Iterator[Tuple[int, torch.Tensor]]:
        """(first column, (nb', N, c) columns of G in the compute dtype on the compute device) covering every column of
        ``blocks``; the whole of G at once (a view) when it needs no conversion and ``whole_if_direct``; every piece but
        the last a multiple of ``multiple`` columns wide."""
        return column_chunks(self.grads[blocks], self._direct, whole_if_direct, self.device, self.compute_dtype, multiple)

    def _block_groups(self, side: int) -> List[slice]:
        """Groups of consecutive blocks whose side x side float64 temporaries stay within :data:`FACTOR_GROUP_ELEMENTS`."""
        group = max(1, FACTOR_GROUP_ELEMENTS // (side * side))
        return [slice(b, min(b + group, self.num_blocks)) for b in range(0, self.num_blocks, group)]

    def _g_times(self, v: torch.Tensor, blocks: slice = slice(None)) -> torch.Tensor:
        """G_b v_b for the blocks in ``blocks``: (nb', B) -> (nb', N), factor dtype."""
        return self._g_times_many(v.unsqueeze(2), blocks).squeeze(2)

    def _gt_times(self, u: torch.Tensor, blocks: slice = slice(None)) -> torch.Tensor:
        """G_b^T u_b for the blocks in ``blocks``: (nb', N) -> (nb', B), factor dtype."""
        return self._gt_times_many(u.unsqueeze(2), blocks).squeeze(2)

    def _g_times_many(self, v: torch.Tensor, blocks: slice = slice(None)) -> torch.Tensor:
        """G_b V_b for m vectors at once: (nb', B, m) -> (nb', N, m), factor dtype; one pass over the blocks' G."""
        out = torch.zeros(v.shape[0], self.num_grads, v.shape[2], dtype=self.factor_dtype, device=self.device)
        for start, g in self._chunks(blocks):
            out += torch.bmm(g, v[:, start : start + g.shape[2]].to(g.dtype)).to(self.factor_dtype)
        return out

    def _gt_times_many(self, u: torch.Tensor, blocks: slice = slice(None)) -> torch.Tensor:
        """G_b^T U_b for m vectors at once: (nb', N, m) -> (nb', B, m), factor dtype; one pass over the blocks' G."""
        out = torch.empty(u.shape[0], self.block, u.shape[2], dtype=self.factor_dtype, device=self.device)
        for start, g in self._chunks(blocks):
            out[:, start : start + g.shape[2]] = torch.bmm(g.transpose(1, 2), u.to(g.dtype)).to(self.factor_dtype)
        return out

    def _row_gram(self, blocks: slice, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """G_b G_b^T (with columns off ``keep`` zeroed when given, (nb', B)) for the blocks in ``blocks``, (nb', N, N), factor dtype."""
        count = len(range(*blocks.indices(self.num_blocks)))
        gram = torch.zeros(count, self.num_grads, self.num_grads, dtype=self.factor_dtype, device=self.device)
        for start, g in self._chunks(blocks, whole_if_direct=keep is None):
            if keep is not None:
                g = g * keep[:, start : start + g.shape[2]].to(g.dtype).unsqueeze(1)
            gram += _gram_rows(g).to(self.factor_dtype)
        return gram

    def _column_gram(self, blocks: slice) -> torch.Tensor:
        """G_b^T G_b / N for the blocks in ``blocks`` (the primal form, B <= N), (nb', B, B), factor dtype."""
        grads = self.grads[blocks].to(device=self.device, dtype=self.compute_dtype)
        return torch.bmm(grads.transpose(1, 2), grads).to(self.factor_dtype) / self.num_grads

    def column_norms2(self) -> torch.Tensor:
        """|g_q|^2 of every column (sum over the N rows), (nb, B), factor dtype; measured once, when the layer is built."""
        return self._column_norms2

    def _measure_column_norms2(self) -> torch.Tensor:
        """|g_q|^2 of every column in the factor dtype, (nb, B): one pass over G (non-finite where a column holds a
        non-finite value). Converted, then squared in place and summed: ``sum(dtype=)`` is several times slower on CPU."""
        out = torch.empty(self.num_blocks, self.block, dtype=self.factor_dtype, device=self.device)
        for start, g in self._chunks(whole_if_direct=False):
            out[:, start : start + g.shape[2]] = g.to(self.factor_dtype, copy=True).square_().sum(1)
        return out

    def columns(self, local: torch.Tensor) -> torch.Tensor:
        """The gradient columns of flat weights ``local`` (m,) of this layer, (N, m) in the factor dtype."""
        index = local.to(self.grads.device)
        return self.grads[index // self.block, :, index % self.block].T.to(device=self.device, dtype=self.factor_dtype)

    # -- the factors -----------------------------------------------------------------------------
    @property
    def factor(self) -> torch.Tensor:
        """Cholesky factors of K_b (dual, side N) or F_b (primal, side B), packed: (nb, side (side + 1) / 2), the lower
        triangle of each in row-major order (:meth:`unpacked_factor` gives the squares), compute dtype; computed on first
        use; a block that is not positive definite has its damping raised (with a warning) before this returns."""
        if self._factor is None:
            if self._before_factorise is not None:
                self._before_factorise()
            self._factor, self.damp = self._factorise()
            release_freed_memory()
        return self._factor

    def _side(self) -> int:
        return factor_side(self.num_grads, self.block, self.form)

    def factor_bytes(self) -> int:
        """Bytes of the packed factors of this layer (allocated or not), kept in the compute dtype."""
        return packed_factor_bytes(self.numel, self.num_grads, self._spec)

    def unpacked_factor(self, blocks: slice = slice(None), dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The lower-triangular Cholesky factors of ``blocks`` as squares, (nb', side, side), zeros above the diagonal,
        in ``dtype`` (default: the compute dtype)."""
        packed = self.factor[blocks]
        side = self._side()
        square = torch.zeros(packed.shape[0], side * side, dtype=dtype or self.compute_dtype, device=self.device)
        square.index_copy_(1, _lower_positions(side, self.device), packed.to(square.dtype))
        return square.view(-1, side, side)

    def norms_bytes(self) -> int:
        """Bytes of the column norms held since the layer was built (factor dtype)."""
        return self._column_norms2.numel() * self._column_norms2.element_size()

    def transient_bytes(self) -> int:
        """Bytes of the largest temporary of this layer's factorisation and diagonal: one group's float64 Gram and
        Cholesky factor, its unpacked square in the compute dtype, a chunk product, a converted chunk of G, and the
        layer's lower-triangle positions (int64)."""
        side = self._side()
        group = min(self.num_blocks, max(1, FACTOR_GROUP_ELEMENTS // (side * side)))
        chunk = 0 if self._direct else 2 * CHUNK_ELEMENTS * _itemsize(self.compute_dtype)
        primal_copy = group * self.num_grads * self.block * _itemsize(self.compute_dtype) if self.form == "primal" else 0
        return group * side * side * (2 * _itemsize(self.factor_dtype) + _itemsize(self.compute_dtype)) + chunk + primal_copy + _lower_positions_bytes(side)

    def _damping(self, spec: FisherSpec) -> torch.Tensor:
        if spec.damp_mode == "absolute":
            return torch.full((self.num_blocks,), spec.damp, dtype=self.factor_dtype, device=self.device)
        damp = spec.damp * self.column_norms2().sum(1) / (self.num_grads * self.block)
        return torch.where(damp > 0, damp, torch.full_like(damp, spec.damp))

    def _factorise(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The factors of every block (compute dtype) and the damping after any escalation, one group of blocks at a time."""
        side, dual = self._side(), self.form == "dual"
        scale = float(self.num_grads) if dual else 1.0  # K = N lam I + G G^T (dual), F = lam I + G^T G / N (primal)
        eye = torch.eye(side, dtype=self.factor_dtype, device=self.device)
        positions = _lower_positions(side, self.device)
        factor = torch.empty(self.num_blocks, side * (side + 1) // 2, dtype=self.compute_dtype, device=self.device)
        damp = self.damp.clone()
        for blocks in self._block_groups(side):
            matrix = self._row_gram(blocks) if dual else self._column_gram(blocks)
            matrix.diagonal(dim1=1, dim2=2).add_((scale * damp[blocks]).view(-1, 1))
            lower, damp[blocks] = _cholesky_with_escalation(
                matrix, self.name, lambda m, extra: m + (scale * extra).view(-1, 1, 1) * eye, damp[blocks], first_block=blocks.start
            )
            factor[blocks] = lower.reshape(lower.shape[0], -1).index_select(1, positions).to(self.compute_dtype)
            del matrix, lower
        return factor, damp

    def _factor_groups(self) -> Iterator[Tuple[slice, torch.Tensor]]:
        """(blocks, their factors unpacked and upcast to the factor dtype), one group at a time."""
        _ = self.factor  # first: factorising may raise the damping
        for blocks in self._block_groups(self._side()):
            yield blocks, self.unpacked_factor(blocks, self.factor_dtype)

    # -- helpers ---------------------------------------------------------------------------------
    def _blocks(self, vector: torch.Tensor) -> torch.Tensor:
        """(d,) -> (nb, B) zero-padded, in factor dtype."""
        padded = torch.zeros(self.num_blocks * self.block, dtype=self.factor_dtype, device=self.device)
        padded[: self.numel] = vector.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return padded.view(self.num_blocks, self.block)

    def _flat(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.reshape(-1)[: self.numel]

    def _blocks_many(self, vectors: torch.Tensor) -> torch.Tensor:
        """(m, d) -> (nb, B, m) zero-padded, in factor dtype (a view of one padded (m, nb B) copy)."""
        padded = torch.zeros(len(vectors), self.num_blocks * self.block, dtype=self.factor_dtype, device=self.device)
        padded[:, : self.numel] = vectors.reshape(len(vectors), -1).to(device=self.device, dtype=self.factor_dtype)
        return padded.view(len(vectors), self.num_blocks, self.block).permute(1, 2, 0)

    def _flat_many(self, blocks: torch.Tensor) -> torch.Tensor:
        """(nb, B, m) -> (m, d) (the padding dropped)."""
        return blocks.permute(2, 0, 1).reshape(blocks.shape[2], -1)[:, : self.numel]

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
        return self._g_times(self._blocks(vector))

    def grads_t_times(self, rows: torch.Tensor) -> torch.Tensor:
        """G_b^T u_b for every block: (nb, N) -> (d,), factor dtype."""
        return self._flat(self._gt_times(rows))

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v = lam v + G^T (G v) / N per block, (d,) -> (d,), factor dtype; F is never formed."""
        v = vector.reshape(-1).to(device=self.device, dtype=self.factor_dtype)
        return self.damp_vector() * v + self.grads_t_times(self.grads_times(v)) / self.num_grads

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, d): (m, d), factor dtype, in two passes over G for all m."""
        v = self._blocks_many(vectors)  # (nb, B, m)
        back = self._gt_times_many(self._g_times_many(v)).div_(self.num_grads)
        return self._flat_many(back.add_(v * self.damp.view(-1, 1, 1)))

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j (twice :meth:`quadratic`) for the m rows of ``vectors`` (m, d): (m,), factor dtype, one pass over G."""
        v = self._blocks_many(vectors)
        return (self.damp.view(-1, 1, 1) * v * v).sum((0, 1)) + self._g_times_many(v).pow(2).sum((0, 1)) / self.num_grads

    def largest_eigenvalue(self, iterations: int = POWER_ITERATIONS) -> float:
        """lam_max(F) over the layer's blocks: max_b lam_b + sigma_max(G_b)^2 / N, by batched power iteration
        on G_b^T G_b (a lower estimate that converges from below; 2 N B flops per block and iteration)."""
        like = torch.empty(0, dtype=self.factor_dtype, device=self.device)
        sigma2 = power_iteration(lambda v: self._gt_times(self._g_times(v.squeeze(2))).unsqueeze(2), (self.num_blocks, self.block, 1), iterations, like)
        return float((self.damp + sigma2 / self.num_grads).max())

    # -- operations ------------------------------------------------------------------------------
    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1), shape (d,), factor dtype; computed once and remembered (the Fisher does not change)."""
        if self._diag_inverse is None:
            self._diag_inverse = self._compute_diag_inverse()
            release_freed_memory()
        return self._diag_inverse

    def _compute_diag_inverse(self) -> torch.Tensor:
        _ = self.factor  # first: factorising may raise the damping
        if self.form == "dual":
            # colsum((L^-1 G_b)^2) in column chunks: the N^2 B work in the compute dtype, O(N * chunk) temporaries
            captured = torch.empty(self.num_blocks, self.block, dtype=self.factor_dtype, device=self.device)
            for blocks in self._block_groups(self.num_grads):
                lower = self.unpacked_factor(blocks)
                for start, g in self._chunks(blocks, whole_if_direct=False):
                    z = torch.linalg.solve_triangular(lower, g, upper=False)  # (nb', N, c)
                    captured[blocks, start : start + g.shape[2]] = z.square_().to(self.factor_dtype).sum(1)  # = sum(1, dtype=), faster
                    del z
            return self._flat(self._clamp_to_lower_bound((1.0 - captured) / self.damp.view(-1, 1)))
        diagonal = torch.empty(self.num_blocks, self.block, dtype=self.factor_dtype, device=self.device)
        for blocks, lower in self._factor_groups():
            diagonal[blocks] = torch.diagonal(torch.cholesky_inverse(lower), dim1=1, dim2=2)
        return self._flat(diagonal)

    def group_inverse(self, m: int) -> torch.Tensor:
        """The m x m diagonal blocks of F^-1 over groups of m consecutive weights: (d / m, m, m), factor dtype.

        Needs the block size (and so the layer) to be a multiple of m: a group never straddles two Fisher blocks.
        Dual form: F_b^-1 = (I - Z^T Z) / lam with Z = L^-1 G_b (K = N lam I + G_b G_b^T = L L^T), so a group's block
        is (I - Z_g^T Z_g) / lam from its m columns of Z; primal form: the blocks of the inverse from the factor."""
        if self.block % m or self.numel % m:
            raise FisherError(f"{self.name}: Fisher blocks of {self.block} weights do not split into groups of {m}: use a block size that is a multiple of {m}")
        _ = self.factor  # first: factorising may raise the damping
        groups_per_block = self.block // m
        out = torch.empty(self.num_blocks, groups_per_block, m, m, dtype=self.factor_dtype, device=self.device)
        eye = torch.eye(m, dtype=self.factor_dtype, device=self.device)
        if self.form == "dual":
            for blocks in self._block_groups(self.num_grads):
                lower = self.unpacked_factor(blocks)
                for start, g in self._chunks(blocks, whole_if_direct=False, multiple=m):
                    z = torch.linalg.solve_triangular(lower, g, upper=False).to(self.factor_dtype)  # (nb', N, c)
                    z = z.reshape(z.shape[0], z.shape[1], -1, m)
                    gram = torch.einsum("bngi,bngj->bgij", z, z)
                    out[blocks, start // m : start // m + gram.shape[1]] = (eye - gram) / self.damp[blocks].view(-1, 1, 1, 1)
                    del z, gram
        else:
            for blocks, lower in self._factor_groups():
                inverse = torch.cholesky_inverse(lower)  # (nb', B, B)
                tiles = inverse.reshape(inverse.shape[0], groups_per_block, m, groups_per_block, m)
                out[blocks] = torch.diagonal(tiles, dim1=1, dim2=3).permute(0, 3, 1, 2)
        return out.reshape(-1, m, m)[: self.numel // m]

    def _clamp_to_lower_bound(self, diag: torch.Tensor) -> torch.Tensor:
        """Keep the dual diagonal (1 - sum z^2) / lam, a difference of nearly equal numbers when lam is small,
        at or above its exact lower bound [F^-1]_qq >= 1 / F_qq = 1 / (lam + ||g_q||^2 / N) (diagonal of an
        SPD inverse), which cancellation can cross and even make non-positive; (nb, B) in, (nb, B) out."""
        lower = 1.0 / (self.damp.view(-1, 1) + self.column_norms2() / self.num_grads)
        below = diag < lower
        if bool(below.any()):
            warnings.warn(
                f"{self.name}: {int(below.sum())} entries of diag(F^-1) fell below their lower bound 1/F_qq through cancellation "
                f"(lam = {float(self.damp.min()):.3g}); clamped to the bound. A larger damping (--<pruner>-damp) avoids it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch.where(below, lower, diag)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v for v of shape (d,): per group of blocks, (lam I + G^T G / N)^-1 v through the dual (Woodbury) or primal factor."""
        v = self._blocks(vector)
        out = torch.empty_like(v)
        for blocks, lower in self._factor_groups():
            if self.form == "dual":  # products with G in the compute dtype, the N x N solve in the factor dtype
                solved = torch.cholesky_solve(self._g_times(v[blocks], blocks).unsqueeze(2), lower).squeeze(2)
                out[blocks] = (v[blocks] - self._gt_times(solved, blocks)) / self.damp[blocks].view(-1, 1)
            else:
                out[blocks] = torch.cholesky_solve(v[blocks].unsqueeze(2), lower).squeeze(2)
        return self._flat(out)

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """x_S = (lam I + G_S^T G_S / N)^-1 r_S on support S (bool (d,)), x = 0 off S; shape (d,).

        Per block (block-diagonal F), never refactorising the layer's F and never copying all of G. Coordinates
        off S decouple (F = lam there, r zero). Two exact forms, chosen by the largest kept count m of a block:
        - m <= N (gathered primal): the kept columns of each block gathered into (nb, N, m), one m x m
          Cholesky per block (padded columns of blocks with fewer kept weights are zero and decouple);
        - m > N (dual): per group of blocks, K_S = N lam I + G_S G_S^T (N x N) built in column chunks; with r
          zero off S, G_S r_S = G r and G_S^T u = (G^T u) on S.
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
        out = torch.empty_like(r)
        for blocks in self._block_groups(n):
            matrix = self._row_gram(blocks, keep[blocks])
            matrix.diagonal(dim1=1, dim2=2).add_((n * self.damp[blocks]).view(-1, 1))
            lower, damp = _cholesky_with_escalation(
                matrix, self.name, lambda m, extra: m + (n * extra).view(-1, 1, 1) * eye, self.damp[blocks].clone(), first_block=blocks.start
            )
            solved = torch.cholesky_solve(self._g_times(r[blocks], blocks).unsqueeze(2), lower).squeeze(2)
            out[blocks] = (r[blocks] - self._gt_times(solved, blocks) * keep[blocks]) / damp.view(-1, 1) * keep[blocks]
        return self._flat(out)

    def _gathered_solve(self, keep: torch.Tensor, kept_counts: torch.Tensor, widest: int, r: torch.Tensor) -> torch.Tensor:
        """The restricted solve on the gathered kept columns, (nb, B) in and out (see :meth:`restricted_solve`), one
        group of blocks at a time (:meth:`gathered_group_blocks`): each block's system is its own, so the groups give
        the one-batch result while the gathered columns and the m x m systems of a group stay within
        :data:`GATHER_GROUP_ELEMENTS` (all blocks at once held 4 GB on MobileNetV1's widest layer at 50 %)."""
        order = torch.argsort((keep == 0).to(torch.int8), dim=1, stable=True)[:, :widest]  # kept indices first, (nb, m)
        valid = (torch.arange(widest, device=self.device).view(1, -1) < kept_counts.view(-1, 1)).to(self.factor_dtype)  # (nb, m)
        eye = torch.eye(widest, dtype=self.factor_dtype, device=self.device)
        solved = torch.empty(self.num_blocks, widest, dtype=self.factor_dtype, device=self.device)
        group = self.gathered_group_blocks(widest)
        for start in range(0, self.num_blocks, group):
            blocks = slice(start, min(start + group, self.num_blocks))
            index = order[blocks].to(self.grads.device).unsqueeze(1).expand(-1, self.num_grads, -1)
            gathered = torch.gather(self.grads[blocks], 2, index).to(device=self.device, dtype=self.factor_dtype) * valid[blocks].unsqueeze(1)
            matrix = torch.bmm(gathered.transpose(1, 2), gathered) / self.num_grads + self.damp[blocks].view(-1, 1, 1) * eye
            del gathered
            factor, _ = _cholesky_with_escalation(
                matrix, self.name, lambda m, extra: m + extra.view(-1, 1, 1) * eye, self.damp[blocks].clone(), first_block=start
            )
            del matrix
            rhs = (torch.gather(r[blocks], 1, order[blocks]) * valid[blocks]).unsqueeze(2)
            solved[blocks] = torch.cholesky_solve(rhs, factor).squeeze(2) * valid[blocks]  # (nb', m)
        return torch.zeros_like(r).scatter_add_(1, order, solved) * keep

    def gathered_group_blocks(self, widest: int) -> int:
        """Blocks per group of the gathered restricted solve with ``widest`` kept columns (:func:`gathered_group_blocks`)."""
        return gathered_group_blocks(self.num_grads, widest)

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 * delta^T F delta (block-diagonal F) for delta of shape (d,): :meth:`quadratic_products` of one vector."""
        return 0.5 * float(self.quadratic_products(delta.reshape(1, -1))[0])


def _lower_positions(side: int, device: torch.device) -> torch.Tensor:
    """(side (side + 1) / 2,) int64: the row-major flat positions in a side x side matrix of its lower triangle
    (diagonal included), where a packed factor's numbers go. Made per call, not cached: a cache would hold device
    memory past the Fisher's life, and making them costs less than the unpacking they serve (side^2 / 2 vs side^2)."""
    rows, cols = torch.tril_indices(side, side, device=device)  # two views of one (2, side (side + 1) / 2) tensor
    return rows.mul_(side).add_(cols)


def _lower_positions_bytes(side: int) -> int:
    """Bytes :func:`_lower_positions` holds for ``side``: the (2, side (side + 1) / 2) int64 tensor its result views."""
    return 16 * (side * (side + 1) // 2)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _padded_blocks(rows: torch.Tensor, storage: Optional[torch.Tensor], num_blocks: int, block: int) -> Tuple[torch.Tensor, int]:
    """The (nb, N, B) block view of a layer's rows (N, d) zero-padded to nb * B columns, and the bytes copied to make it:
    none when d = nb * B or when ``storage`` is the padded tensor ``rows`` was cut from (gradients collected with
    ``pad_to`` = B); else one padded copy in the rows' own dtype and device."""
    num_grads, numel = rows.shape
    width = num_blocks * block
    base = _padded_view(rows, storage, width)
    if base is None:
        base = rows.new_zeros(num_grads, width)
        base[:, :numel] = rows
    copied = 0 if base.data_ptr() == rows.data_ptr() else base.numel() * base.element_size()
    return base.view(num_grads, num_blocks, block).transpose(0, 1), copied


def power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple, iterations: int, like: torch.Tensor, tolerance: float = POWER_TOLERANCE
) -> torch.Tensor:
    """Largest eigenvalue of the PSD operator ``apply`` for each leading batch index of ``shape`` (batch, n, 1);
    a fixed-seed start (reproducible), Rayleigh quotient of the last iterate, shape (batch,). Stops after
    ``iterations`` steps, or earlier once no estimate moved by more than ``tolerance`` of itself in a step
    (gradient Grams have a large top gap: ResNet-20's G G^T with N = 500 settles to 1e-8 in about 9 steps
    of the 50, each two passes over G)."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=generator, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    value = torch.zeros(shape[0], dtype=like.dtype, device=like.device)
    for _ in range(iterations):
        w = apply(v)
        previous, value = value, (v * w).sum(dim=(1, 2))
        v = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
        if bool(((value - previous).abs() <= tolerance * value.abs()).all()):
            break
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
        layer_specs = [(name, rows, gradients.storage.get(name)) for name, rows in gradients.rows.items()]
        self.layers: Dict[str, LayerFisher] = {}
        copies = sum(_padding_copy_bytes(rows, storage, spec) for _, rows, storage in layer_specs)
        if copies:
            check_budget(copies, budget_gb, "zero-padded copies of the gradients of layers whose size is not a multiple of the block size",
                         f"{option_prefix}block-size 0 or a size that divides the layers", log)  # fmt: skip
        check = weakref.WeakMethod(self._check_factor_budget)  # no reference cycle: the Fisher (and G) is freed when dropped

        def before_factorise() -> None:
            method = check()
            if method is not None:
                method()

        for name, rows, storage in layer_specs:
            self.layers[name] = LayerFisher(name, rows, spec, device, before_factorise=before_factorise, storage=storage)
        release_freed_memory()  # the column-norm pass's temporaries
        self.copied_bytes = sum(layer.copied_bytes for layer in self)
        self.sizes = [layer.numel for layer in self.layers.values()]
        self.numel = sum(self.sizes)

    def _check_factor_budget(self) -> None:
        if self._budget_checked:
            return
        check_budget(
            self._gradients_bytes
            + self.copied_bytes
            + sum(layer.factor_bytes() + layer.norms_bytes() for layer in self)
            + max((layer.transient_bytes() for layer in self), default=0),
            self._budget_gb,
            "the gradients, the block Fisher factors and column norms, the padded gradient copies and the largest per-layer temporary",
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

    def map_layers(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        """``op(layer, *pieces)`` on every layer with the layer's pieces of the (p,) ``flats``, concatenated (p,): any
        per-layer computation on the block-diagonal F (the layer-group-streamed Fisher runs it in one pass)."""
        return self._per_layer(op, *flats)

    def _per_layer(self, op: Callable[..., torch.Tensor], *flats: torch.Tensor) -> torch.Tensor:
        pieces = [self.split(f) for f in flats]
        return torch.cat([op(layer, *(p[i] for p in pieces)) for i, layer in enumerate(self)])

    def fisher_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F v, (p,) -> (p,)."""
        return self._per_layer(LayerFisher.fisher_times, vector)

    def inverse_times(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v, (p,) -> (p,)."""
        return self._per_layer(LayerFisher.inverse_times, vector)

    def fisher_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """F v_j for the m rows of ``vectors`` (m, p): (m, p), each layer's G read twice for all m."""
        pieces = split_rows(vectors, self.sizes)
        return torch.cat([layer.fisher_products(piece) for layer, piece in zip(self, pieces)], dim=1)

    def quadratic_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """v_j^T F v_j for the m rows of ``vectors`` (m, p): (m,), each layer's G read once for all m."""
        pieces = split_rows(vectors, self.sizes)
        return torch.stack([layer.quadratic_products(piece) for layer, piece in zip(self, pieces)]).sum(0)

    def restricted_solve(self, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """(F_SS)^-1 r_S on S, zero off S; (p,) bool and (p,) -> (p,)."""
        return self._per_layer(LayerFisher.restricted_solve, support, rhs)

    def diag_inverse(self) -> torch.Tensor:
        """diag(F^-1), (p,)."""
        return torch.cat([layer.diag_inverse() for layer in self])

    def group_inverse(self, m: int) -> Dict[str, torch.Tensor]:
        """Layer name -> the (d_l / m, m, m) blocks of F^-1 over groups of m consecutive weights (see LayerFisher)."""
        return {layer.name: layer.group_inverse(m) for layer in self}

    def damp_vector(self) -> torch.Tensor:
        """lam of each weight's block, (p,)."""
        return torch.cat([layer.damp_vector() for layer in self])

    def quadratic(self, delta: torch.Tensor) -> float:
        """0.5 delta^T F delta, (p,) -> float."""
        return sum(layer.quadratic(piece) for layer, piece in zip(self, self.split(delta)))

    def largest_eigenvalue(self) -> float:
        """lam_max(F) = max over blocks of lam_b + sigma_max(G_b)^2 / N (batched power iteration per layer, from below)."""
        return max(layer.largest_eigenvalue() for layer in self)


def block_of(numel: int, block_size: Optional[int]) -> int:
    """B of a layer of ``numel`` weights: ``block_size``, or the whole layer (0, None, or at least ``numel``)."""
    return numel if block_size in (0, None) or block_size >= numel else block_size


def factor_side(num_grads: int, block: int, form: str = "auto") -> int:
    """The side of a block's factor: N in the dual form (K = G G^T / N), B in the primal (F = G^T G / N); ``auto``
    takes the dual form when N < B."""
    dual = form == "dual" or (form == "auto" and num_grads < block)
    return num_grads if dual else block


def packed_factor_bytes(numel: int, num_grads: int, spec: FisherSpec) -> int:
    """Bytes of one layer's packed factors (lower triangles, side (side + 1) / 2 each) in ``spec``'s compute dtype:
    what :class:`LayerFisher` keeps, and what the pruners' memory plan counts."""
    block = block_of(numel, spec.block_size)
    side = factor_side(num_grads, block, spec.form)
    return -(-numel // block) * (side * (side + 1) // 2) * _itemsize(resolve_dtype(spec.compute_dtype))


def gathered_group_blocks(num_grads: int, widest: int) -> int:
    """Blocks per group of the gathered restricted solve with ``widest`` kept columns: its gathered columns (N x m)
    and its m x m system and factor, per block, within :data:`GATHER_GROUP_ELEMENTS`."""
    return max(1, GATHER_GROUP_ELEMENTS // (num_grads * widest + 2 * widest * widest))


def restricted_solve_bytes(numel: int, num_grads: int, spec: FisherSpec) -> int:
    """The most bytes one restricted solve of a layer of ``numel`` weights holds at once besides G: a group's gathered
    solve at the widest support it can take (m = min(N, B)), or a group's N x N systems in the dual form, plus the
    (nb, B) vectors it works on, in ``spec``'s factor dtype. What the pruners that never factorise the blocks (CBS,
    CHITA with their joint update) hold instead of the factors."""
    block = block_of(numel, spec.block_size)
    blocks = -(-numel // block)
    widest = min(num_grads, block)
    gathered = min(blocks, gathered_group_blocks(num_grads, widest)) * (num_grads * widest + 2 * widest * widest)
    dual = min(blocks, max(1, FACTOR_GROUP_ELEMENTS // (num_grads * num_grads))) * 2 * num_grads * num_grads
    return (max(gathered, dual) + 6 * blocks * block) * _itemsize(resolve_dtype(spec.factor_dtype))


def _padded_view(rows: torch.Tensor, storage: Optional[torch.Tensor], width: int) -> Optional[torch.Tensor]:
    """The (N, width) zero-padded tensor holding ``rows`` (N, d) without a copy: ``rows`` itself when d = width, the
    ``storage`` it was cut from when that is it (gradients collected with ``pad_to``); None when a copy is needed."""
    if rows.shape[1] == width and rows.is_contiguous():
        return rows
    if storage is not None and tuple(storage.shape) == (rows.shape[0], width) and storage.data_ptr() == rows.data_ptr() and storage.is_contiguous():
        return storage
    return None


def _padding_copy_bytes(rows: torch.Tensor, storage: Optional[torch.Tensor], spec: FisherSpec) -> int:
    """Bytes :func:`_padded_blocks` will copy for a layer's rows (N, d) under ``spec``'s block size."""
    width = padded_width(rows.shape[1], block_of(rows.shape[1], spec.block_size))
    return 0 if _padded_view(rows, storage, width) is not None else rows.shape[0] * width * rows.element_size()
