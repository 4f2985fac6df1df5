"""Solvers of CHITA's l0-constrained ridge regression on any :class:`~reflowbench.hessian.Curvature`:

    minimise  Q(w) = 1/2 (w - w_bar)^T F (w - w_bar)                 F = lam I + G^T G / N
              = |G (w_bar - w)|^2 / (2N) + (lam / 2) |w - w_bar|^2
    subject to  |w|_0 <= k,  w = 0 outside ``allowed`` (weights pruned by an earlier step stay pruned).

Everything is a product with F (two with G); the top-k threshold runs where the weights live (no copy of
all scores to the host per iteration).

- :func:`backsolve`: the exact minimiser on a fixed support S (dw_Q = -w_bar_Q, dw_S = F_SS^-1 F_SQ w_bar_Q,
  one restricted solve: whole network through the N x N dual system, or per block);
- :func:`solve_iht`: iterative hard thresholding with a line search from the magnitude point H_k(w_bar);
- :func:`solve_active_set`: IHT on the top ceil(factor * k) magnitudes, then weights outside the set whose
  entry lowers Q are added, until none does.

Both return the support whose backsolve has the lower Q of theirs and magnitude's, so a solver is never
worse than the magnitude support (the trace says when magnitude's was kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from reflowbench.hessian import Curvature
from reflowbench.pruners.updates import joint_delta

TRIAL_BATCH_BYTES = 512 * 2**20  # IHT trial points, with their gradients, directions and products, batched per pass over G, at most


@dataclass
class IHTSettings:
    max_iters: int = 100  # IHT iterations at most
    tolerance: float = 1e-5  # stop when an iteration lowers Q by less than this fraction of Q
    search_steps: int = 4  # thresholded trial steps per iteration (eta_0 * 2^j)
    debias: bool = False  # start from the backsolve on the magnitude support and backsolve after each support change (one restricted solve each)


SOLVER_VECTORS = 10  # (p,) vectors an IHT iteration holds besides its trial batch: w_bar, w, g, F(w - w_bar), the support masks, the accepted point


def iht_working_bytes(numel: int, itemsize: int, settings: IHTSettings) -> int:
    """Bytes IHT (and the active set) hold besides G and the Fisher's own temporaries: :data:`SOLVER_VECTORS` (p,) vectors
    and one batch of trial points with their gradients, directions and products (4 (m, p) matrices, m capped by
    :data:`TRIAL_BATCH_BYTES`, at least one trial)."""
    per_trial = 4 * numel * itemsize
    trials = max(per_trial, min(TRIAL_BATCH_BYTES, settings.search_steps * per_trial))
    return SOLVER_VECTORS * numel * itemsize + trials


@dataclass
class SolverTrace:
    """What a solver did: Q after every accepted iteration (non-increasing), how the steps went."""

    objective: List[float] = field(default_factory=list)
    support_changes: int = 0  # accepted iterations that changed the support
    line_steps: int = 0  # accepted exact line-search steps on an unchanged support
    trial_steps: int = 0  # thresholded trial steps evaluated
    accepted_step_over_safe: List[float] = field(default_factory=list)  # eta / (1/L) of each support-changing step
    active_rounds: int = 0
    active_size: int = 0
    final_objective: Optional[float] = None  # Q of the backsolve on the returned support
    reference_objective: Optional[float] = None  # Q of the backsolve on the magnitude support
    kept_reference: bool = False  # the solver's support backsolved worse than magnitude's, which was returned


class SparseRidge:
    """Q and its gradient for one curvature, dense weights ``w_bar`` (p,) and an ``allowed`` (p,) bool mask."""

    def __init__(self, curvature: Curvature, w_bar: torch.Tensor, allowed: torch.Tensor) -> None:
        self.curvature = curvature
        like = curvature.damp_vector()
        self.w_bar = w_bar.reshape(-1).to(device=like.device, dtype=like.dtype)
        self.allowed = allowed.reshape(-1).to(like.device)
        self._lipschitz: Optional[float] = None

    def value(self, w: torch.Tensor) -> float:
        return self.curvature.quadratic(w - self.w_bar)

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """F (w - w_bar), (p,)."""
        return self.curvature.fisher_times(w - self.w_bar)

    def lipschitz(self) -> float:
        """L = lam_max(F) (the safe IHT step is 1/L)."""
        if self._lipschitz is None:
            self._lipschitz = self.curvature.largest_eigenvalue()
        return self._lipschitz

    def magnitude_support(self, k: int) -> torch.Tensor:
        return top_k_support(self.w_bar.abs(), k, self.allowed)

    def start_point(self, support: torch.Tensor, debiased: bool) -> torch.Tensor:
        """w_bar on the support (zero elsewhere), or its backsolve when ``debiased``."""
        return self.backsolve(support) if debiased else self.w_bar * support

    def better_support(self, found: torch.Tensor, reference: torch.Tensor, trace: "SolverTrace") -> torch.Tensor:
        """Of two supports, the one whose backsolve has the lower Q (``found`` on ties); records both in the trace.
        ``found`` is solved last: the update that follows on the returned support then reuses its dual factor."""
        if torch.equal(found, reference):
            trace.final_objective = trace.reference_objective = self.value(self.backsolve(found))
            return found
        trace.reference_objective = self.value(self.backsolve(reference))
        trace.final_objective = self.value(self.backsolve(found))
        if trace.final_objective <= trace.reference_objective:
            return found
        trace.kept_reference = True
        trace.final_objective = trace.reference_objective
        return reference

    def backsolve(self, support: torch.Tensor) -> torch.Tensor:
        """argmin Q over w with w = 0 off ``support``: w_bar + the exact joint OBS update, zero off S; (p,)."""
        kept = support & self.allowed
        return (self.w_bar + joint_delta(self.curvature, self.w_bar, ~kept, kept)) * kept


def top_k_support(scores: torch.Tensor, k: int, allowed: torch.Tensor) -> torch.Tensor:
    """The k largest ``scores`` among ``allowed`` as a (p,) bool mask (exactly min(k, |allowed|) entries)."""
    k = min(k, int(allowed.sum()))
    masked = torch.where(allowed, scores, torch.full_like(scores, -math.inf))
    support = torch.zeros_like(allowed)
    if k > 0:
        support[torch.topk(masked, k, sorted=False).indices] = True
    return support


Projection = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores (p,), allowed (p,)) -> the support kept, (p,) bool


def _threshold(z: torch.Tensor, k: int, allowed: torch.Tensor, project: Optional[Projection] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """H_k(z): the k largest |z| among ``allowed`` (or ``project``'s support of |z|, e.g. onto an N:M set), z kept there."""
    support = project(z.abs(), allowed) if project is not None else top_k_support(z.abs(), k, allowed)
    return z * support, support


def iht(
    problem: SparseRidge,
    start: torch.Tensor,
    support: torch.Tensor,
    k: int,
    settings: IHTSettings,
    allowed: Optional[torch.Tensor] = None,
    trace: Optional[SolverTrace] = None,
    project: Optional[Projection] = None,
) -> Tuple[torch.Tensor, torch.Tensor, SolverTrace]:
    """IHT with line search from the k-sparse ``start`` (its support ``support``), iterates kept in ``allowed``
    (default: the problem's). Each iteration, with g = grad Q(w):

    - step search: the thresholded steps z = H_k(w - eta g) for eta = eta_0 * 2^j, j = 0 .. search_steps - 1,
      where eta_0 = max(1/L, the smallest eta at which a weight outside the support enters it), each followed
      by the exact line step on its own support (the safe step 1/L alone never changes the support on real
      networks: it moves weights by less than the gap between kept and pruned magnitudes); the one with the
      lowest Q below Q(w) is accepted, then, with ``debias``, w = the exact backsolve on its support;
    - when no such step lowers Q: the exact minimising step along -g restricted to the support.

    ``project`` replaces H_k by another hard thresholding (the projection onto an N:M set keeps N of every group).
    Q never increases; returns (w, support, trace)."""
    allowed = problem.allowed if allowed is None else allowed
    trace = trace if trace is not None else SolverTrace()
    w, q = start.clone(), problem.value(start)
    if not trace.objective:
        trace.objective.append(q)
    safe = 1.0 / problem.lipschitz()
    for _ in range(settings.max_iters):
        g_full = problem.gradient(w)
        g = g_full * allowed
        if not bool(g.any()):
            break
        accepted = _step_search(problem, w, g, q, k, allowed, support, safe, settings, trace, project)
        if accepted is None:  # no thresholded step lowers Q: the exact line step on the support
            w_new, q_new = _line_step(problem, w, g * support, g_full)
            if q_new >= q:
                break
            trace.line_steps += 1
        else:
            w_new, support, q_new, eta = accepted
            trace.support_changes += 1
            trace.accepted_step_over_safe.append(eta / safe)
            if settings.debias:
                w_new = problem.backsolve(support)
                q_new = min(q_new, problem.value(w_new))
        decrease = q - q_new
        w, q = w_new, q_new
        trace.objective.append(q)
        if decrease <= settings.tolerance * abs(q):
            break
    return w, support, trace


def _entry_step(w: torch.Tensor, g: torch.Tensor, support: torch.Tensor, allowed: torch.Tensor) -> float:
    """The smallest eta at which some allowed weight outside the support outgrows the smallest kept |w - eta g|
    (first order: min_S |w| / max_{not S} |g|); inf when nothing can enter."""
    outside = allowed & ~support
    if not bool(outside.any()) or not bool(support.any()):
        return math.inf
    largest_entry = float(g[outside].abs().max())
    return float(w[support].abs().min()) / largest_entry if largest_entry > 0 else math.inf


def _step_search(
    problem: SparseRidge,
    w: torch.Tensor,
    g: torch.Tensor,
    q: float,
    k: int,
    allowed: torch.Tensor,
    support: torch.Tensor,
    safe: float,
    settings: IHTSettings,
    trace: SolverTrace,
    project: Optional[Projection] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor, float, float]]:
    """The best support-changing thresholded step that lowers Q: (z, support, Q(z), eta), or None. The trial points'
    gradients and their line steps' curvatures are batched (``Curvature.fisher_products``: the passes over G of one
    product serve every trial of a batch), so a search costs about what one trial does."""
    entry = _entry_step(w, g, support, allowed)
    if not math.isfinite(entry):
        return None
    eta = max(safe, entry * (1.0 + 1e-9))
    trials: List[Tuple[torch.Tensor, torch.Tensor, float]] = []
    for _ in range(settings.search_steps):
        z, z_support = _threshold(w - eta * g, k, allowed, project)
        if not torch.equal(z_support, support):
            trials.append((z, z_support, eta))
        eta *= 2.0
    trace.trial_steps += len(trials)
    best: Optional[Tuple[torch.Tensor, torch.Tensor, float, float]] = None
    per_batch = max(1, TRIAL_BATCH_BYTES // max(1, 4 * w.numel() * w.element_size()))  # Z - w_bar, F (Z - w_bar), D and a product at once (iht_working_bytes)
    for first in range(0, len(trials), per_batch):
        batch = trials[first : first + per_batch]
        deltas = torch.stack([z for z, _, _ in batch]).sub_(problem.w_bar)  # z - w_bar, (m, p)
        gradients = problem.curvature.fisher_products(deltas)  # F (z - w_bar): two passes over G for the batch
        objectives = 0.5 * (deltas * gradients).sum(1)  # Q(z)
        del deltas
        directions = gradients * torch.stack([z_support for _, z_support, _ in batch])  # each trial's line step: along its gradient on its own support
        curvatures = problem.curvature.quadratic_products(directions)  # d^T F d: one pass
        for j, (z, z_support, trial_eta) in enumerate(batch):
            z, q_z = _exact_step(z, directions[j], float(gradients[j] @ directions[j]), float(curvatures[j]), float(objectives[j]))
            if q_z < q and (best is None or q_z < best[2]):
                best = (z, z_support, q_z, trial_eta)
    return best


def _line_step(problem: SparseRidge, w: torch.Tensor, direction: torch.Tensor, gradient: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """w - alpha d with the exact minimising alpha, and Q there, given ``gradient`` = F (w - w_bar): one pass over G
    (d^T F d); see :func:`_exact_step`."""
    delta = w - problem.w_bar
    return _exact_step(w, direction, float(direction @ gradient), 2.0 * problem.curvature.quadratic(direction), 0.5 * float(delta @ gradient))


def _exact_step(w: torch.Tensor, direction: torch.Tensor, d_g: float, curvature: float, q: float) -> Tuple[torch.Tensor, float]:
    """w - alpha d with alpha = d.g / d^T F d (g = F (w - w_bar), ``d_g`` = d.g, ``curvature`` = d^T F d, ``q`` = Q(w)) and
    Q(w - alpha d) = Q(w) - alpha d.g + alpha^2 d^T F d / 2; (w, q) unchanged when d^T F d <= 0 or d.g = 0."""
    if curvature <= 0 or d_g == 0.0:
        return w, q
    alpha = d_g / curvature
    return w - alpha * direction, q - alpha * d_g + 0.5 * alpha * alpha * curvature


def solve_iht(problem: SparseRidge, k: int, settings: IHTSettings, project: Optional[Projection] = None) -> Tuple[torch.Tensor, SolverTrace]:
    """IHT from the magnitude point H_k(w_bar) (or ``project``'s support of |w_bar|); the support whose backsolve has
    the lower Q of IHT's and the magnitude one is returned (so the result is never worse than magnitude), with the trace."""
    start_support = problem.magnitude_support(k) if project is None else project(problem.w_bar.abs(), problem.allowed)
    start = problem.start_point(start_support, settings.debias)
    _, support, trace = iht(problem, start, start_support, k, settings, project=project)
    return problem.better_support(support, start_support, trace), trace


def solve_active_set(problem: SparseRidge, k: int, settings: IHTSettings, factor: float = 1.5, max_rounds: int = 10) -> Tuple[torch.Tensor, SolverTrace]:
    """Active-set IHT: IHT restricted to the top ceil(factor k) magnitudes; then a full-space thresholded step
    (trial steps halved down to 1/L) that lowers Q and reaches outside the set adds its support; repeat
    until none does or ``max_rounds``. Returns (support, trace); Q non-increasing throughout."""
    active = top_k_support(problem.w_bar.abs(), math.ceil(factor * k), problem.allowed)
    start_support = support = problem.magnitude_support(k)
    w = problem.start_point(support, settings.debias)
    trace = SolverTrace()
    safe = 1.0 / problem.lipschitz()
    for _ in range(max_rounds):
        trace.active_rounds += 1
        w, support, trace = iht(problem, w, support, k, settings, allowed=active, trace=trace)
        g = problem.gradient(w) * problem.allowed
        q = trace.objective[-1]
        eta = 4.0 * float(g.pow(2).sum()) / max(2.0 * problem.curvature.quadratic(g), 1e-300)
        grown = False
        while eta >= safe * (1 - 1e-12):
            z, z_support = _threshold(w - eta * g, k, problem.allowed)
            trace.trial_steps += 1
            outside = z_support & ~active
            if bool(outside.any()):
                q_z = problem.value(z)
                if q_z < q:
                    active |= z_support
                    w, support = z, z_support
                    trace.objective.append(q_z)
                    trace.support_changes += 1
                    grown = True
                    break
            eta /= 2.0
        if not grown:
            break
    trace.active_size = int(active.sum())
    return problem.better_support(support, start_support, trace), trace


__all__ = ["IHTSettings", "SolverTrace", "SparseRidge", "iht", "solve_active_set", "solve_iht", "top_k_support"]
