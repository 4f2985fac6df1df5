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

from reflowbench.hessian import Curvature
from reflowbench.pruners.masks import Masks
from reflowbench.schema.targets import TargetSet

UPDATES = ("none", "obs-sum", "joint")


def obs_sum_delta(curvature: Curvature, w: torch.Tensor, newly: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Summed single-weight OBS update of the newly pruned weights; w, newly, kept and the result: (p,)."""
    diag = curvature.diag_inverse()
    v = torch.where(newly, w / diag, torch.zeros_like(w))
    return -curvature.inverse_times(v)


def joint_delta(curvature: Curvature, w: torch.Tensor, newly: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Exact multi-weight OBS update, the minimiser of 0.5 dw^T F dw subject to dw_Q = -w_Q (per block for a
    block Fisher, over the whole network for a network Fisher); (p,). Off S the result is zero (add -w_Q yourself)."""
    pruned_weights = torch.where(kept, torch.zeros_like(w), w)
    rhs = curvature.fisher_times(pruned_weights) - curvature.damp_vector() * pruned_weights  # = G^T G w_Q / N, then restricted to S
    return curvature.restricted_solve(kept, torch.where(kept, rhs, torch.zeros_like(rhs)))


DELTAS: Dict[str, Callable[[Curvature, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "obs-sum": obs_sum_delta,
    "joint": joint_delta,
}


def flat_weights(targets: TargetSet, like: torch.Tensor) -> torch.Tensor:
    """All target weights as one (p,) vector in target order, with ``like``'s dtype and device."""
    return torch.cat([t.weight.detach().reshape(-1).to(device=like.device, dtype=like.dtype) for t in targets])


def flat_masks(targets: TargetSet, masks: Masks, device: torch.device) -> torch.Tensor:
    """Keep-masks as one (p,) bool vector in target order."""
    return torch.cat([masks[t.param_name].reshape(-1).to(device) for t in targets])


def write_weights(targets: TargetSet, flat: torch.Tensor) -> None:
    """Copy a (p,) vector back into the target weights (their own dtype and device)."""
    with torch.no_grad():
        for t, piece in zip(targets, torch.split(flat, [t.numel for t in targets])):
            t.weight.copy_(piece.view(t.weight.shape).to(device=t.weight.device, dtype=t.weight.dtype))


def apply_update(kind: str, targets: TargetSet, curvature: Curvature, old: Masks, new: Masks) -> None:
    """Update the weights of every target in place for the step from keep-masks ``old`` to ``new``:
    w <- (w + dw) * new, dw from :data:`DELTAS` (``none``: dw = 0); nothing changes when nothing is newly pruned."""
    like = curvature.damp_vector()
    kept = flat_masks(targets, new, like.device)
    newly = flat_masks(targets, old, like.device) & ~kept
    if not bool(newly.any()):
        return
    w = flat_weights(targets, like)
    # per independent part of F: per layer when block-diagonal (one gradient pass when streamed), else the whole network
    delta = curvature.map_layers(DELTAS[kind], w, newly, kept) if kind in DELTAS else torch.zeros_like(w)
    write_weights(targets, (w + delta) * kept)
