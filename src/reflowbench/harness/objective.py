"""The quadratic-model diagnostic (``--objective-grads N``): what every Hessian pruner claims to minimise,
measured the same way for every run, so the suite can show who minimises it best and whether that predicts
accuracy before and after REFLOW.

Per seed, one reference whole-network Fisher F = lam I + G^T G / N from the dense model's gradients on the
first N x m images of that seed's Fisher subset (the sample CHITA uses by default), kept in the suite cache.
Per run, on the pruned weights w (before REFLOW) and the dense w_bar:

- ``q``: Q(w) = 1/2 (w - w_bar)^T F (w - w_bar);
- ``q_support_best``: the lowest Q of any weights on w's support (the exact backsolve there);
- ``magnitude_overlap``: |S n S_mag| / |S|, S_mag the global-magnitude support of the same size.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from reflowbench.config import ObjectiveSpec
from reflowbench.hessian import FisherSpec, GradientSpec, NetworkFisher, collect_gradients
from reflowbench.pruners import TargetPolicy, select_targets
from reflowbench.pruners.chita_solvers import SparseRidge, top_k_support

CACHE_KEY = "objective-fisher"


def objective_images(spec: ObjectiveSpec) -> int:
    """Fisher images the diagnostic needs (0 when off)."""
    return spec.objective_grads * spec.objective_minibatch if spec.objective_grads else 0


def reference_fisher(
    dense: nn.Module, policy: TargetPolicy, batches, spec: ObjectiveSpec, seed: int, cache: Dict[Any, Any], device: torch.device, budget_gb: float
) -> NetworkFisher:
    """The seed's reference Fisher at the dense model (built once per suite and seed)."""
    key = (CACHE_KEY, seed, spec.objective_grads, spec.objective_minibatch, spec.objective_damp)
    if key not in cache:
        for stale in [k for k in cache if isinstance(k, tuple) and k and k[0] == CACHE_KEY]:
            del cache[stale]
        targets = select_targets(dense, policy)
        gradients = collect_gradients(
            dense, targets, batches, GradientSpec(num_grads=spec.objective_grads, minibatch=spec.objective_minibatch), device=device, budget_gb=budget_gb,
            option_prefix="--objective-",
        )  # fmt: skip
        cache[key] = NetworkFisher(gradients, FisherSpec(damp=spec.objective_damp), device, budget_gb, option_prefix="--objective-")
    return cache[key]


def measure_objective(fisher: NetworkFisher, dense: nn.Module, pruned: nn.Module, policy: TargetPolicy) -> Dict[str, float]:
    """Q of the pruned weights, the best Q on their support, and the overlap with magnitude's support."""
    like = fisher.damp_vector()
    w_bar = torch.cat([t.weight.detach().reshape(-1).to(like) for t in select_targets(dense, policy)])
    w = torch.cat([t.weight.detach().reshape(-1).to(like) for t in select_targets(pruned, policy)])
    support = w != 0
    problem = SparseRidge(fisher, w_bar, torch.ones_like(support))
    magnitude = top_k_support(w_bar.abs(), int(support.sum()), problem.allowed)
    return {
        "q": problem.value(w),
        "q_support_best": problem.value(problem.backsolve(support)),
        "magnitude_overlap": float((support & magnitude).sum()) / max(1, int(support.sum())),
        "reference": f"whole-network Fisher, N = {fisher.num_grads} x {fisher.minibatch} images, lam = {fisher.damp:g}",
    }
