"""Signal-collapse diagnostics: the output variance at each signal point (BN layer, other normalisation, or layer) and its ratio to the dense model's."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from reflowbench.errors import NoBatchNormError
from reflowbench.reflow.moments import collect_moments, signal_points


def bn_output_variances(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], device: Optional[torch.device] = None) -> Dict[str, float]:
    """Signal point name -> variance of its output over ``batches`` (model in eval mode, stored statistics): the mean
    over channels of each channel's unbiased variance over images and positions.

    The points (see :func:`reflowbench.reflow.moments.signal_points`) are the BatchNorm layers of a BN network (as
    before), the GroupNorm/LayerNorm layers of a per-sample-normalised one, the convolutions and linear layers of a
    network without normalisation; returned in forward-definition order (shallow to deep).
    """
    points = signal_points(model)
    if not points:
        raise NoBatchNormError(f"signal-collapse diagnostics need a layer to measure, but {type(model).__name__} has no convolution or linear layer")
    moments, _, _ = collect_moments(model, batches, dict(points), device)
    return {name: float(acc.variance().mean()) for name, acc in moments.items()}


def variance_ratios(pruned: Dict[str, float], dense: Dict[str, float]) -> Dict[str, float]:
    """Var(pruned output) / Var(dense output) per BN layer (same images); nan where the dense variance is 0."""
    return {name: (pruned[name] / dense[name] if dense[name] > 0 else float("nan")) for name in dense if name in pruned}


def summarize_ratios(ratios: Dict[str, float]) -> Dict[str, float]:
    """First, last and minimum ratio: the collapse at a glance."""
    values: List[float] = [v for v in ratios.values() if v == v]
    if not values:
        return {"first": float("nan"), "last": float("nan"), "min": float("nan")}
    return {"first": values[0], "last": values[-1], "min": min(values)}
