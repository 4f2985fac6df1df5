"""Channel pruning as masks: a pruner scores the channels of each group (:class:`~reflowbench.channels.ChannelGroup`),
the lowest-scoring fraction of every group goes, and the keep-masks zero exactly those channels' slices of the target
weights (producers' output rows, depthwise filters, consumers' input slices). The harness reads the channels back from
the masks (:func:`removed_channels`, which refuses masks of any other shape) and removes them (``channels/surgery.py``).

The fraction is the same in every group (uniform per layer, as in filter pruning (Li et al., 2017)): channel scores
of different layers are on different scales (fan-in, normalisation), and a global ranking can empty a layer. At least
one channel of each group is kept.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from reflowbench.channels import ChannelGroup, ChannelSlice
from reflowbench.errors import ConfigError, MaskError
from reflowbench.pruners.masks import Masks
from reflowbench.schema.targets import TargetSet

ChannelScores = Dict[str, torch.Tensor]  # group root -> (channels,) scores, higher = more important


def per_channel(tensor: torch.Tensor, piece: ChannelSlice) -> torch.Tensor:
    """``tensor`` (shaped like the slice's parameter) summed over everything but the slice's channel dimension: (channels,)."""
    return tensor.detach().transpose(0, piece.dim).reshape(tensor.shape[piece.dim], -1).sum(dim=1).double().cpu()


def target_slices(group: ChannelGroup, targets: TargetSet, producers_only: bool = False) -> List[ChannelSlice]:
    """The slices of ``group`` that are target weights (optionally only the producers' output rows)."""
    names = {t.param_name for t in targets}
    return [s for s in group.slices if s.param_name in names and (not producers_only or (s.module in group.producers and s.dim == 0))]


def summed_scores(groups: Sequence[ChannelGroup], targets: TargetSet, weight_scores: Dict[str, torch.Tensor], producers_only: bool = False) -> ChannelScores:
    """Per group, each channel's sum of the per-weight ``weight_scores`` (param name -> tensor shaped like the weight)
    over the group's target slices (only the producers' rows when ``producers_only``)."""
    scores: ChannelScores = {}
    for group in groups:
        pieces = target_slices(group, targets, producers_only)
        scores[group.root] = sum((per_channel(weight_scores[s.param_name], s) for s in pieces), torch.zeros(group.channels, dtype=torch.float64))
    return scores


def filter_norms(groups: Sequence[ChannelGroup], targets: TargetSet, norm: str) -> ChannelScores:
    """The L1 (sum |w|) or L2 (sqrt of sum w^2) norm of each channel's filters in the layers producing it."""
    if norm == "l1":
        return summed_scores(groups, targets, {t.param_name: t.weight.abs() for t in targets}, producers_only=True)
    squares = summed_scores(groups, targets, {t.param_name: t.weight.pow(2) for t in targets}, producers_only=True)
    return {root: values.sqrt() for root, values in squares.items()}


def bn_scales(model: nn.Module, groups: Sequence[ChannelGroup]) -> ChannelScores:
    """|gamma| of each channel, summed over the group's BatchNorm layers (Network Slimming's channel score)."""
    modules = dict(model.named_modules())
    scores: ChannelScores = {}
    for group in groups:
        if not group.norms:
            raise ConfigError(f"channel group {group.root} has no BatchNorm to score by its scale: choose another channel score (e.g. --methods mp)")
        scores[group.root] = sum((modules[n].weight.detach().abs().double().cpu() for n in group.norms), torch.zeros(group.channels, dtype=torch.float64))
    return scores


def channels_to_remove(channels: int, fraction: float) -> int:
    """round(fraction x channels), at most channels - 1 (a group always keeps one channel)."""
    return min(int(round(fraction * channels)), channels - 1)


def lowest_channels(scores: ChannelScores, groups: Sequence[ChannelGroup], fraction: float) -> Dict[str, List[int]]:
    """Per group, the :func:`channels_to_remove` lowest-scoring channels (ties: the lower index; NaN scores go first)."""
    removal: Dict[str, List[int]] = {}
    for group in groups:
        values = torch.nan_to_num(scores[group.root].double(), nan=-float("inf"))
        order = torch.argsort(values, stable=True)
        removal[group.root] = sorted(int(i) for i in order[: channels_to_remove(group.channels, fraction)])
    return removal


def channel_masks(targets: TargetSet, groups: Sequence[ChannelGroup], removal: Dict[str, List[int]]) -> Masks:
    """Keep-masks zeroing, in every target weight, the slices of the removed channels."""
    masks: Masks = {t.param_name: torch.ones_like(t.weight, dtype=torch.bool) for t in targets}
    for group in groups:
        index = torch.as_tensor(removal.get(group.root, []), dtype=torch.long)
        for piece in target_slices(group, targets):
            mask = masks[piece.param_name]
            mask.index_fill_(piece.dim, index.to(mask.device), False)
    return masks


def removed_channels(targets: TargetSet, groups: Sequence[ChannelGroup], masks: Masks) -> Dict[str, List[int]]:
    """The channels ``masks`` remove in each group (a producer's output row wholly pruned), checked: the masks must equal
    :func:`channel_masks` of them exactly (every slice of a removed channel pruned, nothing else); a :class:`MaskError` otherwise."""
    removal: Dict[str, List[int]] = {}
    for group in groups:
        rows = [s for s in target_slices(group, targets, producers_only=True)]
        if not rows:
            raise MaskError(f"channel group {group.root}: none of its producers ({', '.join(group.producers)}) is a target weight")
        mask = masks[rows[0].param_name]
        gone = ~mask.reshape(mask.shape[0], -1).any(dim=1)
        removal[group.root] = [int(i) for i in gone.nonzero().flatten()]
    expected = channel_masks(targets, groups, removal)
    for t in targets:
        if not torch.equal(masks[t.param_name].to(torch.bool).cpu(), expected[t.param_name].cpu()):
            raise MaskError(
                f"the masks of {t.param_name} are not whole channels: under --pattern channels a pruner removes every slice of a channel "
                "(pruners/channels.py: channel_masks) and nothing else"
            )
    return removal


def channel_fraction(groups: Sequence[ChannelGroup], removal: Dict[str, List[int]]) -> float:
    """The fraction of the prunable channels removed."""
    total = sum(g.channels for g in groups)
    return sum(len(removal.get(g.root, [])) for g in groups) / total if total else 0.0
