"""Forward passes that collect every target layer's H: all layers in one pass on the dense network (parallel), or one
layer at a time on the network as pruned so far (sequential, the default of the layer-wise pruners).

The model stays in eval mode (BatchNorm uses its stored statistics, as at inference); no gradients are taken.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from reflowbench.reconstruction.layer_inputs import InputHessian


class _StopForward(Exception):
    """Raised by the hook of the last layer a sequential pass needs: the rest of the forward is not computed."""


def collect_hessians(
    model: nn.Module,
    modules: Dict[str, nn.Module],
    images: Sequence[torch.Tensor],
    device: torch.device,
    stop_early: bool = False,
    full: bool = True,
    dense: Optional[Tuple[nn.Module, Dict[str, nn.Module]]] = None,
) -> Dict[str, InputHessian]:
    """H of every layer in ``modules`` (name -> module) from the forward passes of ``images`` (batches already on
    ``device``); ``stop_early``: the forward of each batch ends once the last of ``modules`` in call order has its inputs;
    ``full=False``: only diag(H) (the squared input norms); ``dense`` (the dense network and its modules of the same
    names): each batch also goes through it first, and every H gets the cross moment of the two networks' inputs."""
    hessians = {name: InputHessian(module, device, full) for name, module in modules.items()}
    waiting: List[str] = []

    dense_inputs: Dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            hessians[name].add(args[0], dense_inputs.get(name))
            if stop_early:
                if name in waiting:
                    waiting.remove(name)
                if not waiting:
                    raise _StopForward

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in images:
                if dense is not None:
                    dense_inputs.update(_inputs_of(dense[0], dense[1], batch.to(device)))
                waiting[:] = list(modules)
                try:
                    model(batch.to(device))
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return hessians


def _inputs_of(model: nn.Module, modules: Dict[str, nn.Module], batch: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The inputs ``modules`` receive in ``model``'s forward of ``batch`` (the forward stopped once all have them)."""
    seen: Dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0].detach())
            if len(seen) == len(modules):
                raise _StopForward

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        model(batch)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen
