"""Which weights are pruned: the target-layer policy and the resolved target set.

The sparsity of every result is counted over the target set's weights only, and the set is
recorded (policy, layer names, weight count) in every result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List

import torch
from torch import nn

from reflowbench.errors import ConfigError

SHORTCUT_NAME_PARTS = ("downsample", "shortcut")


@dataclass(frozen=True)
class TargetPolicy:
    """All conv and linear weights, minus the groups switched off here.

    include_first_conv: the first Conv2d in module order (the stem).
    include_classifier: the last Linear in module order.
    include_shortcuts: 1x1 convs on residual shortcuts (module name contains 'downsample' or 'shortcut').
    """

    include_first_conv: bool = True
    include_classifier: bool = True
    include_shortcuts: bool = True

    def describe(self) -> str:
        excluded = [
            label
            for label, on in (("first conv", self.include_first_conv), ("classifier", self.include_classifier), ("1x1 shortcuts", self.include_shortcuts))
            if not on
        ]
        return "all conv+linear weights" + (f" except {', '.join(excluded)}" if excluded else "")


@dataclass
class Target:
    """One prunable weight tensor: ``param_name`` is its state_dict key, ``weight`` the live parameter."""

    param_name: str
    module_name: str
    kind: str  # 'conv', 'depthwise', 'linear'
    weight: nn.Parameter

    @property
    def numel(self) -> int:
        return self.weight.numel()


class TargetSet:
    """An ordered list of :class:`Target` plus the policy that produced it."""

    def __init__(self, targets: List[Target], policy: TargetPolicy) -> None:
        if not targets:
            raise ConfigError(f"the target policy ({policy.describe()}) selects no weights in this model: include more layer groups")
        self.targets = targets
        self.policy = policy

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def names(self) -> List[str]:
        return [t.param_name for t in self.targets]

    @property
    def num_weights(self) -> int:
        return sum(t.numel for t in self.targets)

    def weights(self) -> Dict[str, torch.Tensor]:
        return {t.param_name: t.weight for t in self.targets}

    def subset(self, names: List[str]) -> "TargetSet":
        """The targets named in ``names``, in this set's order (the same live parameters)."""
        wanted = set(names)
        return TargetSet([t for t in self.targets if t.param_name in wanted], self.policy)

    def record(self) -> Dict[str, object]:
        """What every result stores about the target set."""
        return {
            "policy": asdict(self.policy),
            "description": self.policy.describe(),
            "num_layers": len(self.targets),
            "num_weights": self.num_weights,
            "layers": {t.param_name: t.numel for t in self.targets},
        }

    def describe(self) -> str:
        return f"{self.policy.describe()}: {len(self.targets)} tensors, {self.num_weights:,} weights"


def select_targets(model: nn.Module, policy: TargetPolicy = TargetPolicy()) -> TargetSet:
    """Resolve ``policy`` on ``model`` into a :class:`TargetSet` (module order)."""
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    convs = [name for name, m in modules if not isinstance(m, nn.Linear)]
    linears = [name for name, m in modules if isinstance(m, nn.Linear)]
    first_conv = convs[0] if convs else None
    classifier = linears[-1] if linears else None
    chosen: List[Target] = []
    for name, module in modules:
        if name == first_conv and not policy.include_first_conv:
            continue
        if name == classifier and not policy.include_classifier:
            continue
        is_shortcut = not isinstance(module, nn.Linear) and all(k == 1 for k in module.kernel_size) and any(p in name for p in SHORTCUT_NAME_PARTS)
        if is_shortcut and not policy.include_shortcuts:
            continue
        if isinstance(module, nn.Linear):
            kind = "linear"
        elif module.groups > 1 and module.groups == module.in_channels:
            kind = "depthwise"
        else:
            kind = "conv"
        chosen.append(Target(f"{name}.weight" if name else "weight", name, kind, module.weight))
    return TargetSet(chosen, policy)
