"""Every parameter and buffer of a model checked, not only the pruning targets: before pruning (the dense model) and
after pruning and after each correction (a pruner or a correction that writes NaN into a BatchNorm parameter must fail
the run, not give NaN losses and an invented REFLOW gain)."""

from __future__ import annotations

from typing import Iterable, List, Tuple

import torch
from torch import nn


def non_finite_entries(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Of ``(name, tensor)`` pairs, the floating tensors with NaN or Inf entries, with how many (``bn1.weight (3 of 16 entries)``)."""
    bad = []
    for name, tensor in named:
        if tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad.append(f"{name} ({int((~finite).sum())} of {tensor.numel()} entries)")
    return bad


def non_finite_tensors(model: nn.Module) -> List[str]:
    """The model's floating parameters and buffers with NaN or Inf entries (see :func:`non_finite_entries`)."""
    return non_finite_entries([*model.named_parameters(), *model.named_buffers()])


def invalid_bn_statistics(model: nn.Module) -> List[str]:
    """BatchNorm layers with a negative running variance (no data gives one). A zero variance is valid: a channel whose
    inputs were all pruned away has none after REFLOW, and BatchNorm's eps keeps it finite."""
    bad = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats and module.running_var is not None:
            wrong = module.running_var < 0
            if bool(wrong.any()):
                bad.append(f"{name}.running_var ({int(wrong.sum())} of {wrong.numel()} entries negative)")
    return bad


def state_problems(model: nn.Module) -> List[str]:
    """Every non-finite parameter or buffer and every negative BatchNorm running variance."""
    return non_finite_tensors(model) + invalid_bn_statistics(model)


def first_non_finite_module(model: nn.Module, images: torch.Tensor) -> str:
    """The first module, in the order of the forward pass, whose output on ``images`` is not finite ('' when none is)."""
    found: List[str] = []

    def hook(name: str):
        def check(module: nn.Module, inputs, output) -> None:
            if not found and isinstance(output, torch.Tensor) and output.is_floating_point() and not bool(torch.isfinite(output).all()):
                found.append(name)

        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else ""


__all__ = ["first_non_finite_module", "invalid_bn_statistics", "non_finite_entries", "non_finite_tensors", "state_problems"]
