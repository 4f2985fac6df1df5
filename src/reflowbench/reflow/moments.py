"""Per-channel first and second moments of chosen modules' outputs, and the places where the signal is measured.

A module's output is read per *channel*: dimension 1 of an (N, C, *) output (convolutions, BatchNorm, GroupNorm, linear
layers on (N, C)), or the last ``len(normalized_shape)`` dimensions of a LayerNorm's output, flattened (its affine is
per element of that shape). Moments are merged batch by batch in float64 (Chan et al.'s pairwise update), each
batch reduced once in float32 in the output's own layout.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from reflowbench.utils.memory_format import as_channels_last, channels_last_weights

NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def as_rows(module: nn.Module, output: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """(``output`` viewed so that the channels are what remains after reducing ``dims``, ``dims``) for ``module``:
    a LayerNorm's output as (rows, features) reduced over rows; anything else (N, C, *) reduced over all but dim 1."""
    if isinstance(module, nn.LayerNorm):
        features = len(module.normalized_shape)
        flat = output.reshape(-1, *output.shape[output.dim() - features :]).flatten(1)
        return flat, [0]
    return output, [0, *range(2, output.dim())]


class ChannelMoments:
    """Count, per-channel mean and sum of squared deviations (float64) of one module's output, merged over batches."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, output: torch.Tensor) -> None:
        values, dims = as_rows(self.module, output.detach())
        var, mean = torch.var_mean(values.float(), dim=dims, correction=0)  # (C,) each
        n = values.numel() // mean.numel()
        self._merge(n, mean.double(), var.double() * n)

    def merged(self, other: "ChannelMoments") -> "ChannelMoments":
        """The moments of both accumulators' values together (a new accumulator)."""
        both = ChannelMoments(self.module)
        for part in (self, other):
            if part.mean is not None:
                both._merge(part.count, part.mean, part.m2)
        return both

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.add(output)

    def variance(self) -> torch.Tensor:
        """(C,) unbiased per-channel variance (float64); NaN with fewer than two values."""
        if self.m2 is None or self.count < 2:
            return torch.full((1,), float("nan"), dtype=torch.float64)
        return (self.m2 / (self.count - 1)).clamp_min(0)

    def std(self) -> torch.Tensor:
        return self.variance().sqrt()


class _PartedMoments:
    """A forward hook that sends batch i's output to part ``i % len(parts)`` (the batch counter is shared)."""

    def __init__(self, module: nn.Module, parts: int, counter: List[int]) -> None:
        self.parts = [ChannelMoments(module) for _ in range(parts)]
        self.counter = counter

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.parts[self.counter[0] % len(self.parts)].add(output)


class _Stop(Exception):
    """Raised by a hook once the last module of interest has run: the rest of the forward pass is not needed."""


def collect_moments(
    model: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    modules: Dict[str, nn.Module],
    device: Optional[torch.device] = None,
    stop_after: Optional[nn.Module] = None,
) -> Tuple[Dict[str, ChannelMoments], int, int]:
    """({name: ChannelMoments of that module's output}, batches seen, images seen) over ``batches`` (model in eval mode,
    no gradients). ``stop_after``: cut every forward pass short once this module has produced its output."""
    parted, seen_batches, seen_images = collect_split_moments(model, batches, modules, 1, device, stop_after)
    return {name: parts[0] for name, parts in parted.items()}, seen_batches, seen_images


def collect_split_moments(
    model: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    modules: Dict[str, nn.Module],
    parts: int,
    device: Optional[torch.device] = None,
    stop_after: Optional[nn.Module] = None,
) -> Tuple[Dict[str, List[ChannelMoments]], int, int]:
    """As :func:`collect_moments`, with the batches dealt round-robin into ``parts`` disjoint parts (batch i into part
    i % parts), one ChannelMoments per part: for split-half estimates of a statistic's sampling noise."""
    device = device or next(model.parameters()).device
    counter = [0]
    hooks = {name: _PartedMoments(module, parts, counter) for name, module in modules.items()}
    handles = [module.register_forward_hook(hooks[name]) for name, module in modules.items()]
    if stop_after is not None:

        def stop(module, inputs, output):
            raise _Stop

        handles.append(stop_after.register_forward_hook(stop))
    was_training = model.training
    model.eval()
    seen_batches = seen_images = 0
    try:
        with torch.no_grad(), channels_last_weights(model) as converted:
            for x, _ in batches:
                try:
                    model(as_channels_last(x.to(device, non_blocking=True), converted))
                except _Stop:
                    pass
                seen_batches += 1
                seen_images += len(x)
                counter[0] += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: hook.parts for name, hook in hooks.items()}, seen_batches, seen_images


def norm_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm, GroupNorm and LayerNorm, in forward-definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NORM_TYPES)]


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every convolution and linear layer, in forward-definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def signal_points(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Where signal collapse is measured: the outputs of the normalisation layers (BatchNorm, GroupNorm, LayerNorm)
    when the network has any; else (no normalisation, e.g. BatchNorm folded into the convolutions) the outputs of its
    convolutions and linear layers but the last (the logits)."""
    points = norm_layers(model)
    return points if points else weight_layers(model)[:-1]
