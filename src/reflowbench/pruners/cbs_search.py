"""CBS selection (CBS-S): local search over the pruned set on the quadratic objective of the block Fisher.

The objective of a pruned set P without compensation, per block b of the Fisher:

    J(P) = 1/2 w_P^T F_PP w_P = sum_b [ lam_b/2 * ||w_{P_b}||^2 + ||r_b||^2 / (2N) ],   r_b = G_b (w * 1_P)  (N,)

computed from G and the residuals r_b, never from a formed F. With c = G^T r (per block) and the
column norms n_i = ||g_i||^2, removing i from P (keeping it) and adding j to P (pruning it) changes J by

    dJ(i, j) = -alpha_i + beta_j - gamma_ij,
    alpha_i = lam w_i^2 / 2 + (2 w_i c_i - w_i^2 n_i) / (2N)        (i in P: what keeping i saves)
    beta_j  = lam w_j^2 / 2 + (2 w_j c_j + w_j^2 n_j) / (2N)        (j not in P: what pruning j costs)
    gamma_ij = w_i w_j g_i^T g_j / N  when i and j share a block, else 0.

One iteration scores a window of the most promising pairs at once (the pruned weights with the largest
alpha against the kept weights with the smallest beta, a small matrix), accepts a batch of
non-conflicting improving swaps, and checks the exact new J: if the batch, through interactions the
pairwise scores ignore, did not lower J, only the single best swap is applied. J therefore never increases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from reflowbench.hessian import BlockFisher

LossFn = Callable[[torch.Tensor], float]  # keep-mask (p,) bool -> measured loss


@dataclass
class SearchSettings:
    """Local-search knobs (the published defaults)."""

    window: int = 10  # rho: candidates on each side scored per pruned weight (the pair matrix is (window*give_up)^2)
    epsilon: float = 1e-4  # a swap must lower J by more than this
    give_up: int = 20  # tau: pruned weights without an improving partner before an iteration stops looking
    max_iters: int = 100  # iterations at most
    patience: int = 5  # stop when the measured held-out loss has not improved for this many iterations


class SelectionObjective:
    """J(P) and its swap scores over all target layers, flat weight order (layer after layer).

    ``weights``: (p,) the current weights; ``fisher``: the block Fisher of the same targets, in the same order.
    """

    def __init__(self, fisher: BlockFisher, names: List[str], weights: torch.Tensor) -> None:
        self.layers = [fisher[name] for name in names]
        first = self.layers[0]
        self.device, self.dtype, self.num_grads = first.device, first.factor_dtype, first.num_grads
        self.w = weights.to(device=self.device, dtype=self.dtype)
        sizes = [layer.numel for layer in self.layers]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        block_ids, block_start = [], 0
        for layer in self.layers:
            block_ids.append(block_start + torch.arange(layer.numel, device=self.device) // layer.block)
            block_start += layer.num_blocks
        self.block_of = torch.cat(block_ids)  # (p,) global block id of each weight
        self.lam = torch.cat([layer.damp_vector() for layer in self.layers])  # (p,)
        self.col_norm2 = torch.cat([layer.from_blocks(layer.column_norms2()) for layer in self.layers])  # (p,)

    def _split(self, vector: torch.Tensor) -> List[torch.Tensor]:
        return [vector[self.offsets[k] : self.offsets[k + 1]] for k in range(len(self.layers))]

    def residuals(self, pruned: torch.Tensor) -> List[torch.Tensor]:
        """r_b = G_b (w * 1_P) per layer, each (nb, N)."""
        wp = torch.where(pruned, self.w, torch.zeros_like(self.w))
        return [layer.grads_times(part) for layer, part in zip(self.layers, self._split(wp))]

    def value(self, pruned: torch.Tensor, residuals: Optional[List[torch.Tensor]] = None) -> float:
        """J(P) for the bool pruned-mask ``pruned`` (p,)."""
        residuals = residuals if residuals is not None else self.residuals(pruned)
        ridge = 0.5 * float((self.lam * self.w.pow(2))[pruned].sum())
        return ridge + sum(float(r.pow(2).sum()) for r in residuals) / (2 * self.num_grads)

    def correlations(self, residuals: List[torch.Tensor]) -> torch.Tensor:
        """c = G^T r per block, (p,)."""
        return torch.cat([layer.grads_t_times(r) for layer, r in zip(self.layers, residuals)])

    def alpha_beta(self, pruned: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta), each (p,): alpha meaningful on P, beta off P."""
        w, n, two_n = self.w, self.col_norm2, 2 * self.num_grads
        ridge = 0.5 * self.lam * w.pow(2)
        alpha = ridge + (2 * w * c - w.pow(2) * n) / two_n
        beta = ridge + (2 * w * c + w.pow(2) * n) / two_n
        return alpha, beta

    def columns(self, indices: torch.Tensor) -> torch.Tensor:
        """The Fisher-gradient columns g_i of flat weights ``indices`` (m,), as (N, m) in the factor dtype."""
        out = torch.zeros(self.num_grads, len(indices), dtype=self.dtype, device=self.device)
        for k, layer in enumerate(self.layers):
            inside = (indices >= self.offsets[k]) & (indices < self.offsets[k + 1])
            if bool(inside.any()):
                local = indices[inside] - self.offsets[k]
                out[:, inside] = layer.columns(local)
        return out

    def gamma(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """gamma_ij = w_i w_j g_i^T g_j / N for i in ``rows``, j in ``cols`` sharing a block (0 otherwise), (len(rows), len(cols))."""
        gi, gj = self.columns(rows), self.columns(cols)
        same_block = self.block_of[rows].view(-1, 1) == self.block_of[cols].view(1, -1)
        products = (gi.T @ gj) * (self.w[rows].view(-1, 1) * self.w[cols].view(1, -1)) / self.num_grads
        return torch.where(same_block, products, torch.zeros_like(products))

    def swap_scores(self, pruned: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """dJ of swapping pruned ``rows`` (kept after) with kept ``cols`` (pruned after), (len(rows), len(cols))."""
        c = c if c is not None else self.correlations(self.residuals(pruned))
        alpha, beta = self.alpha_beta(pruned, c)
        return -alpha[rows].view(-1, 1) + beta[cols].view(1, -1) - self.gamma(rows, cols)


def _pick_swaps(scores: torch.Tensor, epsilon: float) -> List[Tuple[int, int]]:
    """Greedy non-conflicting swaps (row, col), best first, each lowering J by more than epsilon."""
    flat_scores = scores.flatten()
    order = torch.argsort(flat_scores)
    used_rows, used_cols, chosen = set(), set(), []
    n_cols = scores.shape[1]
    for flat, value in zip(order.tolist(), flat_scores[order].tolist()):
        if value >= -epsilon:
            break
        row, col = divmod(flat, n_cols)
        if row in used_rows or col in used_cols:
            continue
        used_rows.add(row)
        used_cols.add(col)
        chosen.append((row, col))
    return chosen


def group_candidates(pruned: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, members: torch.Tensor, side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Under N:M, swaps stay inside a group (``members``: (groups, M) flat indices): every (pruned, kept) pair of every
    group is scored without gamma (-alpha_i + beta_j), and the ``side`` most promising are returned for the exact
    scores. Returns (rows, cols): the pairs' pruned and kept flat indices."""
    m = members.shape[1]
    first, second = zip(*[(a, b) for a in range(m) for b in range(m) if a != b])
    rows, cols = members[:, list(first)].reshape(-1), members[:, list(second)].reshape(-1)
    valid = pruned[rows] & ~pruned[cols]
    rows, cols = rows[valid], cols[valid]
    chosen = torch.argsort(-alpha[rows] + beta[cols], stable=True)[:side]
    return rows[chosen], cols[chosen]


def _pick_pairs(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, epsilon: float) -> List[Tuple[int, int]]:
    """Greedy swaps among candidate pairs ``k`` (pruned ``rows[k]`` kept, kept ``cols[k]`` pruned), best first, each
    lowering J by more than epsilon and touching weights no earlier accepted swap touches; as (k, k) positions."""
    used, chosen = set(), []
    for k in torch.argsort(scores, stable=True).tolist():
        if float(scores[k]) >= -epsilon:
            break
        i, j = int(rows[k]), int(cols[k])
        if i in used or j in used:
            continue
        used.update((i, j))
        chosen.append((k, k))
    return chosen


def local_search(
    objective: SelectionObjective,
    pruned: torch.Tensor,
    frozen: torch.Tensor,
    settings: SearchSettings,
    measure_loss: Optional[LossFn] = None,
    members: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, dict]:
    """Improve the pruned-mask ``pruned`` (p,) by swaps; weights in ``frozen`` (already pruned earlier) never move.
    With ``members`` ((groups, M) flat indices: an N:M pattern) a swap exchanges a pruned and a kept weight of one
    group, so the pattern holds after every swap; weights in no group never move.

    Returns (the pruned-mask with the lowest measured loss, or the last one when ``measure_loss`` is None;
    a summary dict). J never increases from one iteration to the next.
    """
    pruned = pruned.clone()
    residuals = objective.residuals(pruned)  # of the current mask, carried from the accepted trial (one pass over G saved per iteration)
    current_j = objective.value(pruned, residuals)
    history = [current_j]
    best_mask, best_loss, since_best = pruned.clone(), (measure_loss(~pruned) if measure_loss else None), 0
    losses = [best_loss] if best_loss is not None else []
    side = max(1, settings.window * settings.give_up)
    movable = ~frozen
    iterations = 0
    for _ in range(settings.max_iters):
        alpha, beta = objective.alpha_beta(pruned, objective.correlations(residuals))
        if members is not None:  # pairs inside a group only, each scored exactly; a weight in at most one accepted swap
            rows, cols = group_candidates(pruned, alpha, beta, members, side)
            exact = -alpha[rows] + beta[cols] - objective.gamma(rows, cols).diagonal()
            swaps = _pick_pairs(exact, rows, cols, settings.epsilon)
        else:
            candidates_in = torch.nonzero(pruned & movable).flatten()
            candidates_out = torch.nonzero(~pruned).flatten()
            if len(candidates_in) == 0 or len(candidates_out) == 0:
                break
            rows = candidates_in[torch.argsort(alpha[candidates_in], descending=True)[:side]]
            cols = candidates_out[torch.argsort(beta[candidates_out])[:side]]
            scores = -alpha[rows].view(-1, 1) + beta[cols].view(1, -1) - objective.gamma(rows, cols)
            swaps = _pick_swaps(scores, settings.epsilon)
        if not swaps:
            break
        trial = _swapped(pruned, rows, cols, swaps)
        trial_residuals = objective.residuals(trial)
        trial_j = objective.value(trial, trial_residuals)
        if trial_j > current_j - settings.epsilon and len(swaps) > 1:  # interactions undid the batch: the best single swap
            trial = _swapped(pruned, rows, cols, swaps[:1])
            trial_residuals = objective.residuals(trial)
            trial_j = objective.value(trial, trial_residuals)
        if trial_j > current_j:
            break
        pruned, current_j, residuals = trial, trial_j, trial_residuals
        history.append(current_j)
        iterations += 1
        if measure_loss is not None:
            loss = measure_loss(~pruned)
            losses.append(loss)
            if loss < best_loss:
                best_mask, best_loss, since_best = pruned.clone(), loss, 0
            else:
                since_best += 1
                if since_best >= settings.patience:
                    break
        else:
            best_mask = pruned.clone()
    summary = {"iterations": iterations, "objective_start": history[0], "objective_end": history[-1], "objective_chosen": objective.value(best_mask)}
    if losses:
        summary.update({"loss_start": losses[0], "loss_chosen": best_loss})
    return best_mask, summary


def _swapped(pruned: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, swaps: List[Tuple[int, int]]) -> torch.Tensor:
    trial = pruned.clone()
    keep_again = rows[[r for r, _ in swaps]]
    prune_now = cols[[c for _, c in swaps]]
    trial[keep_again] = False
    trial[prune_now] = True
    return trial


def perturbed_magnitude_masks(magnitudes: torch.Tensor, frozen: torch.Tensor, num_pruned: int, count: int, generator: torch.Generator) -> List[torch.Tensor]:
    """``count`` random magnitude perturbations (RMP): shuffle the weights into about sqrt(p) chunks (at most
    1000) and prune the smallest |w| inside each chunk, the chunk shares (largest remainder) summing to
    exactly ``num_pruned``. Weights in ``frozen`` are pruned in every candidate. Returns pruned-masks (p,) bool.
    Vectorised: one permutation, two stable sorts and a bincount per candidate."""
    p = len(magnitudes)
    device = magnitudes.device
    chunks = max(1, min(1000, int(p**0.5)))
    movable = torch.nonzero(~frozen).flatten()
    free_to_prune = num_pruned - int(frozen.sum())
    by_magnitude = movable[torch.argsort(magnitudes[movable], stable=True)]  # movable weights, ascending |w|
    masks = []
    for _ in range(count):
        chunk_of = torch.empty(p, dtype=torch.long, device=device)
        chunk_of[torch.randperm(p, generator=generator).to(device)] = torch.arange(p, device=device) * chunks // p
        grouped = by_magnitude[torch.argsort(chunk_of[by_magnitude], stable=True)]  # by chunk, ascending |w| inside
        sizes = torch.bincount(chunk_of[grouped], minlength=chunks)
        exact = sizes.to(torch.float64) * free_to_prune / max(1, len(movable))
        quotas = exact.floor().long()
        short = free_to_prune - int(quotas.sum())
        quotas[torch.argsort(-(exact - quotas), stable=True)[:short]] += 1
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(len(grouped), device=device) - starts[chunk_of[grouped]]
        pruned = frozen.clone()
        pruned[grouped[rank < quotas[chunk_of[grouped]]]] = True
        masks.append(pruned)
    return masks
