"""Updates of the kept weights after a selection, one reusable step any Hessian pruner can follow
its selection with (the ``update`` option):

- ``none``: keep the weights as they are (only the pruned ones go to zero);
- ``obs-sum``: WoodFisher's update, the sum of the single-weight OBS updates of the newly pruned q,
  dw = -F^-1 v with v_q = w_q / [F^-1]_qq (exact for one weight, an approximation for many);
- ``joint``: the exact multi-weight OBS update per block (CBS-U): with Q the pruned and S the kept
  weights of a block, dw_Q = -w_Q and dw_S = F_SS^-1 F_SQ w_Q. Since F_SQ = G_S^T G_Q / N (the damping
  lam I has no S x Q entries), this is one restricted solve per block on the right-hand side
  G_S^T (G_Q w_Q) / N: never a |Q| x |Q| or |S| x |S| inverse, and N x N in the dual form.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from reflowbench.hessian import BlockFisher, LayerFisher
from reflowbench.pruners.masks import Masks
from reflowbench.schema.targets import TargetSet

UPDATES = ("none", "obs-sum", "joint")


def obs_sum_delta(layer: LayerFisher, w: torch.Tensor, newly: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Summed single-weight OBS update of the newly pruned weights; w, newly, kept: (d,) on the layer's device."""
    diag = layer.diag_inverse()
    v = torch.where(newly, w / diag, torch.zeros_like(w))
    return -layer.inverse_times(v)


def joint_delta(layer: LayerFisher, w: torch.Tensor, newly: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Exact multi-weight OBS update: the minimiser of 0.5 dw^T F dw subject to dw_Q = -w_Q, per block; (d,)."""
    pruned_weights = torch.where(kept, torch.zeros_like(w), w)
    rhs = layer.fisher_times(pruned_weights) - layer.damp_vector() * pruned_weights  # = G^T G w_Q / N, then restricted to S
    return layer.restricted_solve(kept, torch.where(kept, rhs, torch.zeros_like(rhs)))


DELTAS: Dict[str, Callable[[LayerFisher, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "obs-sum": obs_sum_delta,
    "joint": joint_delta,
}


def apply_update(kind: str, targets: TargetSet, fisher: BlockFisher, old: Masks, new: Masks) -> None:
    """Update the weights of every target in place for the step from keep-masks ``old`` to ``new``:
    w <- (w + dw) * new, dw from :data:`DELTAS` (``none``: dw = 0). Layers with nothing newly pruned are untouched."""
    with torch.no_grad():
        for t in targets:
            layer = fisher[t.param_name]
            kept = new[t.param_name].reshape(-1).to(layer.device)
            newly = (old[t.param_name].reshape(-1).to(layer.device)) & ~kept
            if not bool(newly.any()):
                continue
            w = t.weight.detach().reshape(-1).to(device=layer.device, dtype=layer.factor_dtype)
            delta = DELTAS[kind](layer, w, newly, kept) if kind in DELTAS else torch.zeros_like(w)
            t.weight.copy_(((w + delta) * kept).view(t.weight.shape).to(t.weight.dtype))
