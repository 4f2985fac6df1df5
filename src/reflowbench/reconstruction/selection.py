"""Exact-k selections the solvers share: the lowest scores of a block, counts split between rows, the N highest of every
group of M (N:M)."""

from __future__ import annotations

import torch


def lowest_k_keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask shaped like ``scores`` that prunes exactly its ``k`` lowest entries (ties: the lower flat index first)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.view_as(scores)


def row_counts(total: int, rows: int) -> torch.Tensor:
    """``total`` prunings split as evenly as possible between ``rows`` rows (the first ``total % rows`` get one more)."""
    counts = torch.full((rows,), total // rows, dtype=torch.long)
    counts[: total % rows] += 1
    return counts


def lowest_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep-mask (N, d) pruning the ``counts[i]`` lowest scores of each row i of ``scores`` (N, d)."""
    rank = torch.argsort(torch.argsort(scores, dim=1, stable=True), dim=1)  # each entry's rank within its row
    return rank >= counts.to(scores.device).unsqueeze(1)


def prefix_keep(order: torch.Tensor, counts: torch.Tensor, columns: int) -> torch.Tensor:
    """Keep-mask (N, columns) removing the first ``counts[i]`` entries of each row's removal ``order`` (N, steps)."""
    n, steps = order.shape
    taken = torch.arange(steps, device=order.device).unsqueeze(0) < counts.to(order.device).unsqueeze(1)
    keep = torch.ones(n, columns, dtype=torch.bool, device=order.device)
    keep.scatter_(1, order, ~taken)
    return keep


def counts_from_traces(losses: torch.Tensor, total: int) -> torch.Tensor:
    """How many of each row's traced removals to take so that exactly ``total`` are taken with the least summed error:
    the ``total`` lowest of every row's running maximum of its step errors (running maximum: a row's chosen steps are
    always a prefix of its order). losses (N, steps) -> counts (N,)."""
    running = torch.cummax(losses, dim=1).values
    keep = lowest_k_keep(running, total)
    return (~keep).sum(dim=1)


def as_groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """``tensor`` (out, ...) viewed as (out, columns / m, m)."""
    return tensor.reshape(tensor.shape[0], -1, m)


def keep_top_n(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask shaped like ``scores`` keeping the ``n`` highest scores of every group of ``m`` (ties: the lower index)."""
    groups = as_groups(scores.detach(), m)
    order = torch.argsort(-groups, dim=-1, stable=True)  # NaN sorts first among -scores: a NaN score is never kept over a number
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.view_as(scores)
