"""Masks keyed by parameter name (bool, True = keep), exact-k selection, application and verification."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from reflowbench.errors import ConfigError, MaskError
from reflowbench.schema.targets import TargetSet

Masks = Dict[str, torch.Tensor]
SCOPES = ("global", "layer")


def num_to_prune(total: int, sparsity: float) -> int:
    """How many of ``total`` weights make sparsity ``sparsity`` (rounded to nearest; sparsity already validated)."""
    return int(round(sparsity * total))


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (same shape as scores) that prunes the ``k`` lowest scores; ties go to the lower flat index."""
    flat = scores.detach().reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k <= 0:
        return keep.view_as(scores)
    if bool(torch.isnan(flat).any()):  # NaN sorts last: the stable order decides
        keep[torch.argsort(flat, stable=True)[:k]] = False
        return keep.view_as(scores)
    # the k-th smallest value (a selection, not a sort): everything below it, then the lowest indices among its ties
    threshold = torch.kthvalue(flat, k).values
    below = flat < threshold
    tied = (flat == threshold).nonzero().flatten()
    keep[below] = False
    keep[tied[: k - int(below.sum())]] = False
    return keep.view_as(scores)


def masks_from_scores(targets: TargetSet, scores: Dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> Masks:
    """Prune the lowest-scoring weights: one threshold across all targets (global) or per layer.

    scores: param name -> tensor shaped like the weight (higher = more important). Exactly
    round(sparsity * n) weights are pruned (over all targets for global, per layer for layer).
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "layer":
        return {t.param_name: lowest_k_mask(scores[t.param_name], num_to_prune(t.numel, sparsity)) for t in targets}
    flat = torch.cat([scores[t.param_name].detach().reshape(-1).to(torch.float64).cpu() for t in targets])
    keep_flat = lowest_k_mask(flat, num_to_prune(flat.numel(), sparsity))
    masks: Masks = {}
    offset = 0
    for t in targets:
        masks[t.param_name] = keep_flat[offset : offset + t.numel].view(t.weight.shape).to(t.weight.device)
        offset += t.numel
    return masks


def masks_from_flat(targets: TargetSet, flat_keep: torch.Tensor) -> Masks:
    """A (p,) bool keep-vector in target order -> keep-masks shaped like each target, on its device."""
    pieces = torch.split(flat_keep.reshape(-1), [t.numel for t in targets])
    return {t.param_name: piece.view(t.weight.shape).to(t.weight.device) for t, piece in zip(targets, pieces)}


def apply_masks(targets: TargetSet, masks: Masks) -> None:
    """Zero every pruned weight in place (a target without a mask is a :class:`MaskError` naming it)."""
    missing = [t.param_name for t in targets if t.param_name not in masks]
    if missing:
        raise MaskError(f"the pruner returned no mask for {missing}: every target needs one")
    with torch.no_grad():
        for t in targets:
            t.weight.mul_(masks[t.param_name].to(t.weight.dtype))


def current_masks(targets: TargetSet) -> Masks:
    """Keep-masks of the weights that are non-zero now."""
    return {t.param_name: t.weight.detach() != 0 for t in targets}


def mask_sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(int((~m).sum()) for m in masks.values()) / total


def verify_masks(targets: TargetSet, masks: Masks, sparsity: float, scope: str = "global", model: Optional[nn.Module] = None, count: bool = True) -> float:
    """Check that every pruned weight is exactly zero and (``count``) the pruned count is what was asked; return the sparsity.

    With ``model``, the weights checked are the model's own parameters looked up by name (what a forward
    pass uses and what is saved), not the references in ``targets``: a pruner that replaced a parameter
    object, so that zeroing the target left the live weight untouched, is caught here.
    """
    missing = [t.param_name for t in targets if t.param_name not in masks]
    if missing:
        raise MaskError(f"the pruner returned no mask for {missing}: every target needs one")
    for t in targets:
        mask = masks[t.param_name]
        if mask.shape != t.weight.shape or mask.dtype != torch.bool:
            raise MaskError(f"mask for {t.param_name} must be bool {tuple(t.weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        live = (model.get_parameter(t.param_name) if model is not None else t.weight).detach()
        nonzero_pruned = int((live[~mask.to(live.device)] != 0).sum())
        if nonzero_pruned:
            raise MaskError(
                f"{nonzero_pruned} pruned weights of {t.param_name} are not zero in the model after pruning (did the pruner replace the parameter object?)"
            )
        if not torch.isfinite(live).all():
            raise MaskError(f"{t.param_name} has non-finite weights after pruning")
    pruned = sum(int((~masks[t.param_name]).sum()) for t in targets)
    if not count:  # the count is the pattern's (an N:M pattern is checked group by group: pruners/nm.py)
        return pruned / targets.num_weights
    if scope == "layer":
        expected = sum(num_to_prune(t.numel, sparsity) for t in targets)
    else:
        expected = num_to_prune(targets.num_weights, sparsity)
    if pruned != expected:
        raise MaskError(f"pruned {pruned} weights but sparsity {sparsity} over {targets.num_weights} target weights needs {expected}")
    return pruned / targets.num_weights
