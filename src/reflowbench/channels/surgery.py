"""Removing channels: Torch-Pruning resizes every module of each group; the result is checked against the model
with the same channels zeroed (the smaller network must compute the same function, up to float rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from reflowbench.channels.groups import ChannelGroup, _torch_pruning, copy_model, group_tensors
from reflowbench.errors import MaskError
from reflowbench.utils.linalg import relative_output_error

RELATIVE_TOLERANCE = 2e-5  # of the largest output magnitude: float32 sums in another order differ by ~1e-7 to 1e-6 of it


@dataclass
class SurgeryResult:
    """The smaller model and how far its outputs are from the zeroed model's on the check batch (relative)."""

    model: nn.Module
    relative_error: float


def zero_channels(model: nn.Module, group: ChannelGroup, channels: Sequence[int]) -> None:
    """In place: every tensor of ``group`` at ``channels`` set to zero (the channels then carry exactly 0 everywhere:
    producers' rows and biases, BatchNorm scale and shift, consumers' input slices)."""
    index = torch.as_tensor(list(channels), dtype=torch.long)
    with torch.no_grad():
        for piece, tensor in group_tensors(model, group):
            tensor.index_fill_(piece.dim, index.to(tensor.device), 0.0)


def _prune_in_place(model: nn.Module, groups: Sequence[ChannelGroup], removal: Dict[str, List[int]], example: torch.Tensor) -> None:
    tp = _torch_pruning()
    modules = dict(model.named_modules())
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    with torch.no_grad():
        for group in groups:
            channels = sorted(removal.get(group.root, []))
            if not channels:
                continue
            handler = tp.prune_depthwise_conv_out_channels if group.depthwise_root else tp.prune_conv_out_channels
            graph.get_pruning_group(modules[group.root], handler, idxs=channels).prune()


def check_removal(model: nn.Module, groups: Sequence[ChannelGroup], example: torch.Tensor) -> Optional[str]:
    """Why removing every other channel of each of ``groups`` at once from a copy of ``model`` does not give the zeroed
    model's function, or None."""
    removal = {group.root: list(range(0, group.channels, 2)) for group in groups}
    zeroed = copy_model(model)
    for group in groups:
        zero_channels(zeroed, group, removal[group.root])
    smaller = copy_model(model)
    try:
        _prune_in_place(smaller, groups, removal, example)
        with torch.no_grad():
            error = relative_output_error(zeroed(example), smaller(example))
    except Exception as exc:  # noqa: BLE001 - a shape mismatch anywhere downstream: the group is not removable as traced
        return f"removing its channels breaks the network ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if not error <= RELATIVE_TOLERANCE:
        return f"removing its channels changes the network's function (relative output error {error:.1e}), e.g. a fixed zero-padding shortcut"
    return None


def failing_groups(model: nn.Module, groups: Sequence[ChannelGroup], example: torch.Tensor) -> Dict[str, str]:
    """Root -> why, for each of ``groups`` whose channels cannot be removed (:func:`check_removal`). All groups are
    checked at once, then the halves of a set that fails, down to single groups: one traced copy when every group
    passes (a torchvision ResNet-50's 37 groups), about 2 k log(n / k) when k of n fail, never more than 2n - 1."""
    problems: Dict[str, str] = {}
    sets: List[List[ChannelGroup]] = [list(groups)] if groups else []
    while sets:
        checked = sets.pop()
        problem = check_removal(model, checked, example)
        if problem is None:
            continue
        if len(checked) == 1:
            problems[checked[0].root] = problem
        else:
            half = len(checked) // 2
            sets += [checked[half:], checked[:half]]
    return problems


def remove_channels(model: nn.Module, groups: Sequence[ChannelGroup], removal: Dict[str, List[int]], example: torch.Tensor) -> SurgeryResult:
    """``model`` with ``removal[root]`` channels of each group removed (in place: the returned model is ``model``),
    checked on ``example`` against a copy with those channels zeroed; a :class:`MaskError` when they differ."""
    zeroed = copy_model(model)
    for group in groups:
        zero_channels(zeroed, group, removal.get(group.root, []))
    _prune_in_place(model, groups, removal, example)
    model.eval()
    with torch.no_grad():
        error = relative_output_error(zeroed(example), model(example))
    if not error <= RELATIVE_TOLERANCE:
        raise MaskError(
            f"the channel-pruned network differs from the same network with those channels zeroed (relative output error {error:.1e}): "
            "the surgery is wrong for this architecture; report it with the model name"
        )
    return SurgeryResult(model, error)
