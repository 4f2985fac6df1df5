"""Convolution weights in the channels-last layout for the duration of a read-only block of work.

On CPU, oneDNN's convolutions (forward and backward) are much faster when the weights and the activations are
channels-last (NHWC) than in the default NCHW layout. Measured on this suite's 2-core CPU, 256 images, best of three:
eval-mode forward ResNet-20 162 → 100 ms, ResNet-56 759 → 247 ms, MobileNetV1 385 → 111 ms; BatchNorm-training
forward (REFLOW) 184 → 111, 823 → 282, 491 → 157 ms; the gradient pass of ResNet-20 (8 groups of 16 images) 252 → 167
ms per 128 images. A layout changes strides, never values; a convolution may sum in another order, so results agree to
float rounding.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Tuple

import torch
from torch import nn


@contextmanager
def channels_last_weights(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Every 4-D parameter of ``model`` on the CPU (convolution weights) stored channels-last inside the block.

    Yields whether the model now runs channels-last (it has such parameters and ``enabled``): feed it 4-D inputs
    through :func:`as_channels_last`. On exit each parameter gets back its original tensor (same storage and strides),
    so a weight that was channels-last stays so and aliases taken before the block still alias the model. The block
    must not write the weights: a write would go to the temporary copy and be dropped on exit (buffers such as
    BatchNorm statistics are untouched and may be written). Parameters on other devices are left as they are: the
    layout's effect there has not been measured by this suite."""
    params = [p for p in model.parameters() if p.dim() == 4 and p.device.type == "cpu"] if enabled else []
    swapped: List[Tuple[nn.Parameter, torch.Tensor]] = []
    for param in params:
        if not param.is_contiguous(memory_format=torch.channels_last):
            original = param.data
            param.data = original.contiguous(memory_format=torch.channels_last)
            swapped.append((param, original))
    try:
        yield bool(params)
    finally:
        for param, original in swapped:
            param.data = original


def channels_last_copy_bytes(model: nn.Module) -> int:
    """Bytes of the temporary channels-last copies :func:`channels_last_weights` makes of ``model``'s weights (the
    4-D CPU parameters not already channels-last), for memory estimates."""
    return sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if p.dim() == 4 and p.device.type == "cpu" and not p.is_contiguous(memory_format=torch.channels_last)
    )


def as_channels_last(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``x`` in channels-last when ``enabled`` and it is 4-D (an image batch (B, C, H, W) or a convolution weight
    (K, C, k_h, k_w)); otherwise ``x`` itself."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.dim() == 4 else x


__all__ = ["as_channels_last", "channels_last_copy_bytes", "channels_last_weights"]
