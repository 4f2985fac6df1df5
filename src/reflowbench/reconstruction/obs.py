"""Exact OBS on the layer-wise reconstruction Hessian, written from the papers' equations.

One layer, one group (``G`` groups are batched): rows w (R of them) share H (d x d, damped, positive definite). Removing
weight q of a row and re-fitting the others optimally raises the row's error (w_hat - w)^T H (w_hat - w) by

    w_q^2 / [H^-1]_qq        and moves the row by   -(w_q / [H^-1]_qq) H^-1 e_q            (OBS)

after which the inverse Hessian of the remaining weights is H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq (the row and column
of q become zero). Three solvers of it:

- :func:`refit_rows`: the exact least-squares solution of each row on a given support (no order involved);
- :func:`greedy_obs`: ExactOBS/OBC per row, one weight at a time, the one that raises the error least, with the
  inverse downdated each time (the removal order and each step's error increase, from which the layer's count is split
  between rows);
- :func:`sweep`: SparseGPT: columns eliminated left to right with the rows of the upper Cholesky factor U of H^-1
  (H^-1 = U^T U; row j of U / U_jj is the OBS update of column j once the columns before it are fixed), the mask of each
  block of columns chosen when the sweep reaches it by w^2 / U_jj^2, the updates to later blocks applied lazily, once per
  block.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from reflowbench.errors import ConfigError
from reflowbench.reconstruction.selection import keep_top_n
from reflowbench.utils.linalg import escalating_cholesky

ROW_CHUNK_BYTES = 1 << 28  # per-row d x d matrices in flight at once (256 MiB) in refit_rows and greedy_obs
REFIT_PEAK_BYTES = 2 * ROW_CHUNK_BYTES  # refit_rows' transient peak at most: a chunk's rows of H, or its system and factor


def damped(hessian: torch.Tensor, relative_damp: float, name: str = "a layer") -> Tuple[torch.Tensor, torch.Tensor]:
    """H + lam * mean(diag H) * I per group, lam multiplied by 10 where the Cholesky factorisation fails (with a
    warning); (damped H (G, d, d), its lower Cholesky factor). A group whose inputs were all zero gets H = I."""
    hessian = hessian.to(torch.float64)
    if not bool(torch.isfinite(hessian).all()):
        raise ConfigError(f"the input second moment of {name} is not finite: the network's activations overflow on the calibration images")
    g, d, _ = hessian.shape
    eye = torch.eye(d, dtype=hessian.dtype, device=hessian.device)
    scale = hessian.diagonal(dim1=1, dim2=2).mean(dim=1)
    silent = scale <= 0
    hessian = torch.where(silent.view(-1, 1, 1), eye.expand(g, d, d), hessian)
    scale = torch.where(silent, torch.ones_like(scale), scale)
    absolute = torch.full_like(scale, relative_damp) * scale

    def warning(failed: torch.Tensor, damp: torch.Tensor) -> str:
        return (
            f"the input Hessian of {name} is not positive definite at relative damping {(damp / scale)[failed].max().item():.3g}; "
            "multiplying it by 10 (more calibration images or a larger damping avoids this)"
        )

    factor, matrix, absolute = escalating_cholesky(hessian + absolute.view(-1, 1, 1) * eye, absolute, lambda m, extra: m + extra.view(-1, 1, 1) * eye, warning)
    if factor is None:
        lam = (absolute / scale).max().item()
        raise ConfigError(f"the input Hessian of {name} stays singular after raising its damping to {lam:.3g}: raise the pruner's --...-damp")
    return matrix, factor


def inverse_upper(lower: torch.Tensor) -> torch.Tensor:
    """U with H^-1 = U^T U (upper triangular, (G, d, d)) from the lower Cholesky factor of H."""
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True)


def exact_counts(total: int, columns: int, starts: range, width: int) -> list:
    """``total`` prunings split between column blocks of ``width`` in proportion to their columns, exactly."""
    return [round(total * min(s + width, columns) / columns) - round(total * s / columns) for s in starts]


def sweep(
    rows: torch.Tensor,
    upper: torch.Tensor,
    count: int,
    block_size: int,
    choose: Optional[Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's column sweep over ``rows`` (G, R, d) with ``upper`` (G, d, d): prunes ``count`` weights of the layer,
    split exactly between blocks of ``block_size`` columns (0: one block); returns (new rows, keep mask (G, R, d)).

    ``choose(block_rows, block_diag, start, k)`` -> keep mask of the block (default: the k lowest w^2 / U_jj^2 of the
    block, over all its rows and groups, at the weights the sweep has reached)."""
    g, r, d = rows.shape
    width = d if block_size <= 0 else block_size
    rows = rows.to(upper.dtype).clone()
    keep = torch.ones_like(rows, dtype=torch.bool)
    starts = range(0, d, width)
    for start, k in zip(starts, exact_counts(count, d, starts, width)):
        end = min(start + width, d)
        block = rows[:, :, start:end].clone()
        block_upper = upper[:, start:end, start:end]
        diag = block_upper.diagonal(dim1=1, dim2=2)  # (G, B)
        block_keep = (choose or _lowest_saliency)(block, diag, start, k)
        errors = torch.zeros_like(block)
        for j in range(end - start):
            column = block[:, :, j]
            kept = torch.where(block_keep[:, :, j], column, torch.zeros_like(column))
            error = (column - kept) / diag[:, j : j + 1]  # (G, R)
            block[:, :, j:] -= error.unsqueeze(2) * block_upper[:, j : j + 1, j:]
            block[:, :, j] = kept
            errors[:, :, j] = error
        rows[:, :, start:end] = block
        keep[:, :, start:end] = block_keep
        if end < d:
            rows[:, :, end:] -= torch.bmm(errors, upper[:, start:end, end:])
    return rows * keep, keep


def nm_sweep(rows: torch.Tensor, upper: torch.Tensor, n: int, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's N:M sweep (blocks of M columns): each group's mask chosen when the sweep reaches it, keeping the N
    highest OBS errors w^2 / U_jj^2 of the group at the weights the sweep has reached; returns (new rows, keep mask)."""
    g, r, d = rows.shape

    def choose(block: torch.Tensor, diag: torch.Tensor, start: int, k: int) -> torch.Tensor:
        saliency = block.pow(2) / diag.pow(2).unsqueeze(1)  # (G, R, M)
        return keep_top_n(saliency.reshape(g * r, -1), n, m).view_as(block)

    return sweep(rows, upper, 0, m, choose)


def _lowest_saliency(block: torch.Tensor, diag: torch.Tensor, start: int, k: int) -> torch.Tensor:
    from reflowbench.reconstruction.selection import lowest_k_keep

    return lowest_k_keep(block.pow(2) / diag.pow(2).unsqueeze(1), k)


def _row_chunks(total_rows: int, columns: int, element_bytes: int):
    step = max(1, ROW_CHUNK_BYTES // max(1, element_bytes * columns * columns))
    return range(0, total_rows, step), step


def refit_rows(rows: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each row's exact least-squares re-fit on its support: argmin (v - w)^T H (v - w) over v with v = 0 off ``keep``,
    i.e. v_S = w_S + H_SS^-1 H_SP w_P on the support S (P: the pruned weights).

    rows (G, R, d), hessian (G, d, d) damped, keep (G, R, d) bool; float64 result. The supports of a chunk of rows are
    gathered into m x m systems (m: the chunk's largest support, shorter ones padded with identity rows), so the cost
    falls with the sparsity: O(rows m^3)."""
    g, r, d = rows.shape
    flat = rows.reshape(g * r, d).to(torch.float64)
    mask = keep.reshape(g * r, d)
    group = torch.arange(g, device=rows.device).repeat_interleave(r)
    hessian = hessian.to(torch.float64)
    out = torch.zeros_like(flat)
    sizes = mask.sum(dim=1)
    widest = max(1, int(sizes.max()))
    step = max(1, ROW_CHUNK_BYTES // (8 * widest * d))  # rows whose (m, d) slices of H are in flight at once
    for start in range(0, g * r, step):
        m_chunk, w = mask[start : start + step], flat[start : start + step]
        width = int(sizes[start : start + step].max())
        if width == 0:
            continue
        # each row's support first (stable: in column order), padded with pruned positions that are masked out below
        support = torch.argsort((~m_chunk).to(torch.int8), dim=1, stable=True)[:, :width]  # (n, m)
        valid = m_chunk.gather(1, support).to(torch.float64)  # (n, m): 1 on real support entries, 0 on padding
        h_rows = hessian[group[start : start + step].unsqueeze(1), support]  # (n, m, d): rows S of each row's H
        rhs = torch.bmm(h_rows, (w * (~m_chunk)).unsqueeze(2)).squeeze(2) * valid  # H_SP w_P
        system = h_rows.gather(2, support.unsqueeze(1).expand(-1, width, -1))  # (n, m, m): H_SS
        del h_rows  # in place from here: the chunk's peak is its (n, m, d) rows of H, then two (n, m, m) systems
        system.mul_(valid.unsqueeze(2)).mul_(valid.unsqueeze(1)).diagonal(dim1=1, dim2=2).add_(1.0 - valid)
        lower, info = torch.linalg.cholesky_ex(system)
        if bool((info != 0).any()):
            solved = torch.linalg.solve(system, rhs.unsqueeze(2)).squeeze(2)
        else:
            solved = torch.cholesky_solve(rhs.unsqueeze(2), lower).squeeze(2)
        values = (w.gather(1, support) + solved) * valid
        out[start : start + step].scatter_(1, support, values)
    return (out * mask).view(g, r, d)


LAZY_STEPS = 32  # removals whose H^-1 downdates are held as low-rank factors before they are applied in one product


def greedy_obs(
    rows: torch.Tensor, inverse: torch.Tensor, steps: Optional[int] = None, nm: Optional[Tuple[int, int]] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ExactOBS per row: (order (G, R, steps) long, error increase of each step (G, R, steps)), removing at each step the
    weight with the lowest w_q^2 / [H^-1]_qq of those left, updating the row and downdating its H^-1.

    ``inverse``: H^-1 per group (G, d, d) of the damped H. ``steps`` (default d): how many removals to trace per row.
    ``nm`` = (N, M): ExactOBS's N:M rule: a weight is a candidate only while its group of M consecutive columns has had
    fewer than M - N removals, so d (M - N) / M steps (the default then) leave exactly N of every M (d a multiple of M).
    Works in the dtype of ``inverse`` (float32 is enough for the order; the final weights come from :func:`refit_rows`).

    The downdates are lazy: the current H^-1 is B - V V^T with V the scaled columns of the last removals (at most
    :data:`LAZY_STEPS`), so a step costs O(d * LAZY_STEPS) per row, and every LAZY_STEPS steps V V^T is subtracted in one
    batched product and the removed columns are dropped (step t then works on d - t columns: about d^3 / 3 per row
    over a full trace, in matrix products)."""
    g, r, d = rows.shape
    if nm is not None and d % nm[1]:
        raise ConfigError(f"N:M {nm[0]}:{nm[1]} needs rows of a multiple of {nm[1]} columns, not {d}")
    most = d if nm is None else d // nm[1] * (nm[1] - nm[0])
    steps = most if steps is None else min(steps, most)
    dtype = inverse.dtype
    flat = rows.reshape(g * r, d).to(dtype)
    group = torch.arange(g, device=rows.device).repeat_interleave(r)
    order = torch.empty(g * r, steps, dtype=torch.long, device=rows.device)
    losses = torch.empty(g * r, steps, dtype=dtype, device=rows.device)
    starts, step = _row_chunks(g * r, d, inverse.element_size())
    for start in starts:
        w = flat[start : start + step].clone()
        base = inverse[group[start : start + step]].clone()
        n = w.shape[0]
        index = torch.arange(n, device=rows.device)
        columns = torch.arange(d, device=rows.device).expand(n, d)  # each row's remaining columns (original ids)
        removed = torch.zeros(n, d, dtype=torch.bool, device=rows.device)
        factors = torch.zeros(n, d, LAZY_STEPS, dtype=dtype, device=rows.device)
        diag = base.diagonal(dim1=1, dim2=2).clone()
        pending = 0
        group_removals = None if nm is None else torch.zeros(n, d // nm[1], dtype=torch.long, device=rows.device)  # per row and group of M
        for t in range(steps):
            closed = removed if group_removals is None else removed | (group_removals.gather(1, columns // nm[1]) >= nm[1] - nm[0])
            saliency = torch.where(closed, torch.full_like(w, float("inf")), w.pow(2) / diag.clamp_min(torch.finfo(dtype).tiny))
            q = saliency.argmin(dim=1)
            order[start + index, t] = columns[index, q]
            if group_removals is not None:
                group_removals[index, columns[index, q] // nm[1]] += 1
            losses[start + index, t] = saliency[index, q]
            column = base[index, :, q]  # (n, m): the current H^-1 e_q = B e_q - V (V^T e_q)
            if pending:
                column = column - torch.bmm(factors[:, :, :pending], factors[index, q, :pending].unsqueeze(2)).squeeze(2)
            pivot = column[index, q]
            w -= (w[index, q] / pivot).unsqueeze(1) * column
            scaled = column / pivot.clamp_min(torch.finfo(dtype).tiny).sqrt().unsqueeze(1)
            factors[:, :, pending] = scaled
            diag -= scaled.pow(2)
            removed[index, q] = True
            w[removed] = 0.0
            pending += 1
            if pending == LAZY_STEPS or t == steps - 1:
                base -= torch.bmm(factors[:, :, :pending], factors[:, :, :pending].transpose(1, 2))
                w, base, columns, removed = _drop_removed(w, base, columns, removed)
                diag = base.diagonal(dim1=1, dim2=2).clone()
                factors = torch.zeros(n, w.shape[1], LAZY_STEPS, dtype=dtype, device=rows.device)
                pending = 0
        del base, factors
    return order.view(g, r, steps), losses.view(g, r, steps)


def _drop_removed(w: torch.Tensor, h_inv: torch.Tensor, columns: torch.Tensor, removed: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The rows' state without their removed columns (every row has removed as many): (w, H^-1, columns, removed)."""
    n, m = w.shape
    kept = torch.argsort(removed.to(torch.int8), dim=1, stable=True)[:, : m - int(removed[0].sum())]  # (n, m')
    width = kept.shape[1]
    h_inv = h_inv.gather(1, kept.unsqueeze(2).expand(-1, -1, m)).gather(2, kept.unsqueeze(1).expand(-1, width, -1))
    return w.gather(1, kept), h_inv, columns.gather(1, kept), torch.zeros(n, width, dtype=torch.bool, device=w.device)
