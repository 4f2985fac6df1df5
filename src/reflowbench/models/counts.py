"""What a network costs to hold and to run, counted: parameters (all, and non-zero) and FLOPs per image as PyTorch's
own counter (``torch.utils.flop_counter``) counts them for the shapes run: the dense FLOPs of every layer, so an
unstructured or N:M model counts as many as the dense one and only a genuinely smaller network counts fewer."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def counts(model: nn.Module, shape: Tuple[int, ...]) -> Dict[str, float]:
    """Parameters (all, and non-zero) and the FLOPs of one forward pass of one image of ``shape`` (C, H, W)."""
    params = list(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=params[0].device))
    return {
        "params": float(sum(p.numel() for p in params)),
        "nonzero_params": float(sum(int((p != 0).sum()) for p in params)),
        "flops": float(counter.get_total_flops()),
    }
