"""Which output channels can be removed, and with which other tensors: the channel groups of a model.

A :class:`ChannelGroup` is one set of ``channels`` channel positions that must be removed together: the output rows
of every convolution producing them, the BatchNorm entries normalising them, the depthwise filters passing them
through and the input slices of every layer consuming them. Torch-Pruning's dependency graph finds the groups by
tracing the model; each group is then *checked*: on a copy, removing half its channels must give exactly the function
of the model with those channels' tensors zeroed (all groups at once first, then halves of a failing set). A group that fails (e.g. the zero-padding shortcut of an option-A
ResNet, whose channel count is fixed) is left whole and listed with the reason, never pruned into a wrong network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from reflowbench.errors import ConfigError

# Normalisations whose statistics pool several channels: removing a channel changes the others' outputs.
POOLING_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class ChannelSlice:
    """One parameter's share of a group: ``module.param`` indexed along ``dim`` (0: the output rows of a convolution
    or linear weight, a bias or a BatchNorm vector; 1: the input channels of a consuming layer's weight)."""

    module: str
    param: str
    dim: int

    @property
    def param_name(self) -> str:
        return f"{self.module}.{self.param}"


@dataclass(frozen=True)
class ChannelGroup:
    """``channels`` channel positions removed together (index ``c`` of every slice is channel ``c``).

    ``root``: the convolution Torch-Pruning roots the group at; ``producers``: the (non-depthwise) convolutions and
    linear layers whose output channels these are; ``norms``: the BatchNorm layers on them."""

    root: str
    channels: int
    slices: Tuple[ChannelSlice, ...]
    producers: Tuple[str, ...]
    norms: Tuple[str, ...]
    depthwise_root: bool = False

    def slices_of(self, param_name: str) -> List[ChannelSlice]:
        return [s for s in self.slices if s.param_name == param_name]


@dataclass
class GroupSearch:
    """The prunable groups of a model, and every group left whole with its reason (root name -> one line)."""

    groups: List[ChannelGroup]
    excluded: Dict[str, str] = field(default_factory=dict)

    def prunable_channels(self) -> int:
        return sum(g.channels for g in self.groups)

    def restricted(self, target_names: Set[str]) -> "GroupSearch":
        """Only the groups every producer of which is a target weight (the others left whole, with the reason)."""
        kept = [g for g in self.groups if all(f"{p}.weight" in target_names for p in g.producers)]
        excluded = dict(self.excluded)
        for group in self.groups:
            if group not in kept:
                outside = [p for p in group.producers if f"{p}.weight" not in target_names]
                excluded[group.root] = f"its producer {', '.join(outside)} is not a target weight (the target policy leaves it out)"
        return GroupSearch(kept, excluded)

    def record(self) -> Dict[str, object]:
        """For run records: each prunable group's root and channels, and the groups left whole."""
        return {"groups": {g.root: g.channels for g in self.groups}, "left_whole": dict(self.excluded)}


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ConfigError("--pattern channels needs the 'torch-pruning' package: pip install torch-pruning") from exc
    return torch_pruning


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _has_tensors(module: object) -> bool:
    return isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False))


def _slices_for(module: nn.Module, name: str, pruning_out: bool) -> Tuple[List[ChannelSlice], Optional[str]]:
    """The slices a module contributes to a group, or a reason the group cannot be handled."""
    has_bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Conv2d) and (module.groups == 1 or _is_depthwise(module)):
        if pruning_out or _is_depthwise(module):
            return [ChannelSlice(name, "weight", 0)] + ([ChannelSlice(name, "bias", 0)] if has_bias else []), None
        return [ChannelSlice(name, "weight", 1)], None
    if isinstance(module, nn.Linear):
        if pruning_out:
            return [ChannelSlice(name, "weight", 0)] + ([ChannelSlice(name, "bias", 0)] if has_bias else []), None
        return [ChannelSlice(name, "weight", 1)], None
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return ([ChannelSlice(name, "weight", 0), ChannelSlice(name, "bias", 0)] if module.affine else []), None
    return [], f"its channels reach {name} ({type(module).__name__}), which this suite does not slice"


def _describe(graph, group, names: Dict[nn.Module, str]) -> Tuple[Optional[ChannelGroup], Optional[str]]:
    """A :class:`ChannelGroup` from one Torch-Pruning group, or (None, why it is left whole)."""
    root_module = group[0].dep.target.module
    root = names[root_module]
    if not isinstance(root_module, nn.Conv2d):
        return None, f"rooted at a {type(root_module).__name__}, not a convolution"
    channels = root_module.out_channels
    slices: List[ChannelSlice] = []
    producers: List[str] = []
    norms: List[str] = []
    for dep, idxs in group:
        module = dep.target.module
        if not _has_tensors(module):
            continue
        name = names.get(module, type(module).__name__)
        if [int(i) for i in idxs] != list(range(channels)):
            return None, f"its channels map onto other positions further on ({name}: a concatenation, flatten or channel padding), not handled"
        pruning_out = dep.handler.__name__ == "prune_out_channels"
        added, problem = _slices_for(module, name, pruning_out)
        if problem:
            return None, problem
        slices += [s for s in added if s not in slices]
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and name not in norms:
            norms.append(name)
        elif pruning_out and not _is_depthwise(module) and name not in producers:
            producers.append(name)
    if not producers:
        return None, "no convolution or linear layer produces its channels"
    return ChannelGroup(root, channels, tuple(slices), tuple(producers), tuple(norms), _is_depthwise(root_module)), None


def refuse_pooling_norms(model: nn.Module, model_name: str) -> None:
    """One line when ``model`` normalises over several channels at once (GroupNorm, LayerNorm, InstanceNorm)."""
    pooled = sorted({type(m).__name__ for m in model.modules() if isinstance(m, POOLING_NORMS)})
    if pooled:
        raise ConfigError(
            f"--pattern channels cannot prune {model_name}: its {', '.join(pooled)} pools statistics over several channels, so removing "
            "a channel changes the others' outputs; prune it unstructured or N:M, or channel-prune a BatchNorm model (or one with --fold-bn)"
        )


def find_channel_groups(model: nn.Module, example: torch.Tensor, model_name: str = "the model") -> GroupSearch:
    """The channel groups of ``model`` (traced on ``example``, a small batch of its inputs), each checked by removing half
    its channels from a copy (see the module doc). The classifier (the last linear layer) keeps its outputs."""
    refuse_pooling_norms(model, model_name)
    from reflowbench.channels.surgery import failing_groups

    tp = _torch_pruning()
    model = model.eval()
    names = {module: name for name, module in model.named_modules()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        found = list(graph.get_all_groups(ignored_layers=linears[-1:], root_module_types=[nn.Conv2d]))
    search = GroupSearch(groups=[])
    described_groups: List[ChannelGroup] = []
    for group in found:
        described, why = _describe(graph, group, names)
        if described is None:
            search.excluded[names[group[0].dep.target.module]] = why or "not handled"
        else:
            described_groups.append(described)
    problems = failing_groups(model, described_groups, example)
    search.excluded.update(problems)
    search.groups = [g for g in described_groups if g.root not in problems]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    search.groups.sort(key=lambda g: order[g.root])
    return search


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def group_tensors(model: nn.Module, group: ChannelGroup) -> Sequence[Tuple[ChannelSlice, torch.Tensor]]:
    """(slice, the parameter tensor) for every slice of ``group`` in ``model``."""
    params = dict(model.named_parameters())
    return [(s, params[s.param_name]) for s in group.slices]
