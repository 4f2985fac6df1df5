"""N:M sparsity: in each group of M consecutive weights along an output row's input dimension, exactly N kept.

The layout: a target's weight viewed as (rows, columns) = (out, in * kh * kw) for a convolution (PyTorch's own
row-major flattening: the kernel positions of one input channel are consecutive), (out, in) for a linear layer; groups
are M consecutive columns of a row. That is the layout of PyTorch's semi-structured (2:4) sparse matrices for a linear
layer's weight, and of a convolution run as a matrix product over its unfolded input. A target whose column count is not
a multiple of M (the stem's 3 x 3 x 3 = 27 columns, a depthwise convolution's 9) cannot hold the pattern: it is left
dense, listed in the run's notes (``nm_dense_layers``), and the sparsity over the targets is below 1 - N/M.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Tuple

import torch

from reflowbench.config import SparsityPattern
from reflowbench.errors import MaskError
from reflowbench.pruners.masks import Masks
from reflowbench.reconstruction.selection import as_groups, keep_top_n
from reflowbench.schema.targets import Target, TargetSet


def grouped(target: Target, m: int) -> bool:
    """Whether ``target``'s rows split into groups of ``m`` columns."""
    return (target.numel // target.weight.shape[0]) % m == 0


def dense_layers(targets: TargetSet, pattern: SparsityPattern) -> List[str]:
    """The targets left dense under ``pattern`` (their column count is not a multiple of M)."""
    return [t.param_name for t in targets if not grouped(t, pattern.m)]


def nm_masks_from_scores(targets: TargetSet, scores: Dict[str, torch.Tensor], pattern: SparsityPattern) -> Masks:
    """Keep-masks holding ``pattern`` exactly: the N highest-scoring weights of each group (higher = more important);
    the targets that cannot hold it are kept whole."""
    masks: Masks = {}
    for t in targets:
        score = torch.nan_to_num(scores[t.param_name].float(), nan=-float("inf"))
        masks[t.param_name] = keep_top_n(score, pattern.n, pattern.m) if grouped(t, pattern.m) else torch.ones_like(score, dtype=torch.bool)
    return masks


def subsets_to_prune(m: int, n: int) -> torch.Tensor:
    """(C(m, m - n), m) bool: every choice of the m - n weights of a group to prune, in lexicographic order."""
    choices = list(itertools.combinations(range(m), m - n))
    table = torch.zeros(len(choices), m, dtype=torch.bool)
    for row, choice in enumerate(choices):
        table[row, list(choice)] = True
    return table


def joint_obs_keep(weights: torch.Tensor, inverse_blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Keep-mask (groups, m) keeping, in each group, the n weights whose complement P has the lowest joint OBS cost
    1/2 w_P^T ([F^-1]_PP)^-1 w_P (the loss increase of pruning P together with the optimal update of the rest), by
    enumerating the C(m, m - n) choices: ``weights`` (groups, m), ``inverse_blocks`` (groups, m, m) the group's block
    of F^-1. Ties go to the first choice in lexicographic order."""
    m = weights.shape[1]
    table = subsets_to_prune(m, n)
    costs = []
    for pruned in table:
        index = pruned.nonzero().flatten().to(weights.device)
        sub = inverse_blocks[:, index][:, :, index]
        w = weights[:, index]
        costs.append(0.5 * (w * torch.linalg.solve(sub, w.unsqueeze(-1)).squeeze(-1)).sum(-1))
    choice = torch.stack(costs, dim=1).argmin(dim=1)
    return ~table.to(weights.device)[choice]


def verify_nm(targets: TargetSet, masks: Masks, pattern: SparsityPattern) -> Tuple[int, int]:
    """Raise :class:`MaskError` unless every group of every grouped target keeps exactly N and every other target is
    whole; returns (pruned weights, target weights)."""
    pruned = 0
    for t in targets:
        keep = masks[t.param_name]
        if grouped(t, pattern.m):
            counts = as_groups(keep, pattern.m).sum(-1)
            bad = int((counts != pattern.n).sum())
            if bad:
                raise MaskError(f"{t.param_name}: {bad} groups of {pattern.m} do not keep exactly {pattern.n} weights (--pattern {pattern})")
        elif not bool(keep.all()):
            raise MaskError(f"{t.param_name} cannot hold --pattern {pattern} ({t.numel // t.weight.shape[0]} columns per row) and must stay dense")
        pruned += int((~keep).sum())
    return pruned, targets.num_weights


def nm_projection(targets: TargetSet, pattern: SparsityPattern, device: torch.device):
    """The hard thresholding onto the N:M set of the flat weight vector of ``targets`` (layer after layer): a function
    (scores (p,), allowed (p,) bool) -> support (p,) bool keeping, in every group, the N highest allowed scores (a
    disallowed weight never kept), and every weight of a target that cannot hold the pattern (where allowed)."""
    grouped_parts, whole_parts, offset = [], [], 0
    for t in targets:
        index = offset + torch.arange(t.numel, device=device)
        (grouped_parts if grouped(t, pattern.m) else whole_parts).append(index)
        offset += t.numel
    members = torch.cat(grouped_parts).view(-1, pattern.m) if grouped_parts else torch.zeros(0, pattern.m, dtype=torch.long, device=device)
    whole = torch.cat(whole_parts) if whole_parts else torch.zeros(0, dtype=torch.long, device=device)

    def project(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        support = torch.zeros_like(allowed)
        support[whole] = allowed[whole]
        group_scores = torch.where(allowed[members], scores[members].float(), torch.full_like(scores[members].float(), -float("inf")))
        keep = keep_top_n(group_scores, pattern.n, pattern.m) & allowed[members]
        support[members[keep]] = True
        return support

    return project
