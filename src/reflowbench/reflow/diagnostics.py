"""Signal-collapse diagnostics: per-BN-layer output variance and its ratio to the dense model's."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from reflowbench.reflow.recalibrate import require_batchnorm
from reflowbench.utils.memory_format import as_channels_last, channels_last_weights


class _MomentAccumulator:
    """Per-channel count, mean and sum of squared deviations (float64) of a BN output (N, C, *), merged batch by batch:
    each batch's mean and variance come from one float32 reduction in the output's own layout (no float64 or
    channel-first copy of the activations), and batches are combined exactly (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        values = output.detach()
        dims = [0, *range(2, values.dim())]
        var, mean = torch.var_mean(values.float(), dim=dims, correction=0)  # (C,) each
        n = values.numel() // values.shape[1]
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def variance(self) -> float:
        """Mean over channels of the per-channel variance over images and positions (unbiased)."""
        if self.m2 is None or self.count < 2:
            return float("nan")
        return float((self.m2 / (self.count - 1)).clamp_min(0).mean())


def bn_output_variances(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], device: Optional[torch.device] = None) -> Dict[str, float]:
    """BN layer name -> variance of its output over ``batches`` (model in eval mode, stored statistics).

    Layers are returned in forward-definition order (shallow to deep).
    """
    layers = require_batchnorm(model, "signal-collapse diagnostics")
    device = device or next(model.parameters()).device
    accumulators = {name: _MomentAccumulator() for name, _ in layers}
    handles = [module.register_forward_hook(accumulators[name]) for name, module in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), channels_last_weights(model) as converted:  # faster CPU convolutions, same statistics
            for x, _ in batches:
                model(as_channels_last(x.to(device), converted))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: acc.variance() for name, acc in accumulators.items()}


def variance_ratios(pruned: Dict[str, float], dense: Dict[str, float]) -> Dict[str, float]:
    """Var(pruned output) / Var(dense output) per BN layer (same images); nan where the dense variance is 0."""
    return {name: (pruned[name] / dense[name] if dense[name] > 0 else float("nan")) for name in dense if name in pruned}


def summarize_ratios(ratios: Dict[str, float]) -> Dict[str, float]:
    """First, last and minimum ratio: the collapse at a glance."""
    values: List[float] = [v for v in ratios.values() if v == v]
    if not values:
        return {"first": float("nan"), "last": float("nan"), "min": float("nan")}
    return {"first": values[0], "last": values[-1], "min": min(values)}
