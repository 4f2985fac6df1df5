"""Signal-collapse diagnostics: per-BN-layer output variance and its ratio to the dense model's."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from reflowbench.reflow.recalibrate import require_batchnorm


class _MomentAccumulator:
    """Running per-channel sum and sum of squares (float64) of a BN output (N, C, *)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Optional[torch.Tensor] = None
        self.total_sq: Optional[torch.Tensor] = None

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        values = output.detach().double().transpose(0, 1).reshape(output.shape[1], -1)  # (C, N*spatial)
        if self.total is None:
            self.total = torch.zeros(values.shape[0], dtype=torch.float64, device=values.device)
            self.total_sq = torch.zeros_like(self.total)
        self.total += values.sum(1)
        self.total_sq += (values * values).sum(1)
        self.count += values.shape[1]

    def variance(self) -> float:
        """Mean over channels of the per-channel variance over images and positions."""
        if self.total is None or self.count < 2:
            return float("nan")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0) * self.count / (self.count - 1)
        return float(var.mean())


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
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
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
