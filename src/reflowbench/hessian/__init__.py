"""The curvature backend every Hessian-based pruner shares.

- :mod:`gradients`: the gradient matrix G (N x d per layer), mask-aware, chunked: per-group weight products from one
  batched backward (:mod:`group_gradients`), torch.func where a model needs it;
- :mod:`block_fisher`: the damped block-diagonal empirical Fisher lam I + G^T G / N, dual (N x N
  Woodbury) or primal (B x B) per layer, with diag(F^-1), F^-1 v, restricted solves and the quadratic model;
- :mod:`network_fisher`: the whole-network low-rank Fisher (cross-layer terms kept), N x N dual solves only;
- :mod:`curvature`: the flat-vector interface both forms share (what updates and solvers are written against);
- :mod:`memory`: estimates checked against a budget before large allocations.
"""

from reflowbench.hessian.block_fisher import BlockFisher, FisherSpec, LayerFisher
from reflowbench.hessian.curvature import Curvature
from reflowbench.hessian.gradients import GradientMatrix, GradientSpec, batch_loss, collect_gradients, gradient_bytes, probe_loss
from reflowbench.hessian.memory import check_budget, resolve_dtype
from reflowbench.hessian.network_fisher import NetworkFisher

__all__ = [
    "BlockFisher",
    "Curvature",
    "FisherSpec",
    "GradientMatrix",
    "GradientSpec",
    "LayerFisher",
    "NetworkFisher",
    "check_budget",
    "collect_gradients",
    "gradient_bytes",
    "probe_loss",
    "batch_loss",
    "resolve_dtype",
]
