"""Forward passes that collect every target layer's H: all layers in one pass on the dense network (parallel), or one
layer at a time on the network as pruned so far (sequential, the default of the layer-wise pruners).

The model stays in eval mode (BatchNorm uses its stored statistics, as at inference); no gradients are taken.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

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
    dense: Optional[Callable[[int, torch.Tensor], Dict[str, torch.Tensor]]] = None,
) -> Dict[str, InputHessian]:
    """H of every layer in ``modules`` (name -> module) from the forward passes of ``images`` (batches already on
    ``device``); ``stop_early``: the forward of each batch ends once the last of ``modules`` in call order has its inputs;
    ``full=False``: only diag(H) (the squared input norms); ``dense(i, batch)``: the inputs of the same layers in the
    dense network for batch i (see :class:`DenseInputs`), and every H gets the cross moment of the two networks' inputs."""
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
            for index, batch in enumerate(images):
                if dense is not None:
                    dense_inputs.update(dense(index, batch.to(device)))
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


class DenseInputs:
    """The inputs every target layer receives in the dense network, per calibration batch: recorded in one pass when they
    fit in ``max_bytes`` (one forward of the dense network in all), else recomputed for each layer it is asked about (a
    forward per layer, stopped there). Call it as ``dense_inputs(name, module_of_that_name)`` to get the function
    :func:`collect_hessians` takes for that layer."""

    def __init__(self, dense: nn.Module, modules: Dict[str, nn.Module], images: Sequence[torch.Tensor], max_bytes: int) -> None:
        self.dense = dense.eval()
        self.modules = modules
        self.recorded: Optional[List[Dict[str, torch.Tensor]]] = None
        with torch.no_grad():
            first = _inputs_of(self.dense, modules, images[0])
            per_batch = sum(t.numel() * t.element_size() for t in first.values())
            if per_batch * len(images) <= max_bytes:
                self.recorded = [first] + [_inputs_of(self.dense, modules, batch) for batch in images[1:]]

    def __call__(self, name: str) -> Callable[[int, torch.Tensor], Dict[str, torch.Tensor]]:
        def inputs(index: int, batch: torch.Tensor) -> Dict[str, torch.Tensor]:
            if self.recorded is not None:
                return {name: self.recorded[index][name]}
            with torch.no_grad():
                return _inputs_of(self.dense, {name: self.modules[name]}, batch)

        return inputs
