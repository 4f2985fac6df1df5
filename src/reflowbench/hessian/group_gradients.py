"""Mean gradients of many mini-batch groups from one ordinary forward/backward pass (no vmap, no loop).

With BatchNorm in eval mode images do not interact, so for a batch of G groups of m images and the loss
sum_n loss_n / m, the gradient at each target module's output for image n is exactly what that image's
own group's backward gives. The weight gradient of group g is then a sum over its images of
per-image products, computed per module from the captured input and output gradient:

- Linear, y = x W^T:    dW_g = sum_{n in g} dy_n^T x_n                              (out, in)
- Conv2d (any stride, padding, dilation, channel groups): the weight-only convolution backward of the
  group's images, (K, C/c, k_h, k_w)

The cost is one batched backward plus these weight products, about a training step per chunk of images,
instead of one backward through the whole network per group (a loop) or vmap's grouped convolutions.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Conv2d, nn.Linear)


def supports_group_hooks(model: nn.Module, module_names: List[str]) -> bool:
    """True when every target module is a plain Linear or a zero-padded Conv2d with numeric padding
    (a subclass could compute differently)."""
    modules = dict(model.named_modules())
    for name in module_names:
        module = modules.get(name)
        if type(module) not in SUPPORTED:
            return False
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or not isinstance(module.padding, tuple)):
            return False
    return True


class _Capture:
    """Forward hooks that keep each target module's input and output (the output retains its gradient)."""

    def __init__(self, model: nn.Module, module_names: List[str]) -> None:
        modules = dict(model.named_modules())
        self.inputs: Dict[str, torch.Tensor] = {}
        self.outputs: Dict[str, torch.Tensor] = {}
        self.calls: Dict[str, int] = {name: 0 for name in module_names}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in module_names]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.calls[name] += 1
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _linear_group_grads(x: torch.Tensor, dy: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, in), (B, out) -> (G, out, in); extra middle dims (B, ..., in) are summed over."""
    x = x.reshape(groups, -1, x.shape[-1])
    dy = dy.reshape(groups, -1, dy.shape[-1])
    return torch.bmm(dy.transpose(1, 2), x)


def _conv_group_grads(module: nn.Conv2d, x: torch.Tensor, dy: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W), (B, K, H', W') -> (G, K, C/c, k_h, k_w): the weight-only convolution backward of each
    group's images (the expensive part of a per-group loop, the backward through the network, is shared)."""
    per = x.shape[0] // groups
    out = torch.empty(groups, *module.weight.shape, dtype=dy.dtype, device=dy.device)
    for g in range(groups):
        images = slice(g * per, (g + 1) * per)
        out[g] = torch.ops.aten.convolution_backward(
            dy[images], x[images], module.weight, None, module.stride, module.padding, module.dilation, False, (0, 0), module.groups, (False, True, False)
        )[1]
    return out


def group_gradients(
    model: nn.Module,
    params: Dict[str, torch.Tensor],
    module_of: Dict[str, str],
    x: torch.Tensor,
    y: torch.Tensor,
    groups: int,
) -> Optional[Dict[str, torch.Tensor]]:
    """Mean-loss gradients of ``groups`` equal consecutive groups of (x, y), per target parameter key:
    {key: (G, *weight.shape)}. ``module_of`` maps a parameter key to its module's name. Returns None when a
    target module is called more than once per forward (shared weights: use the vmap path)."""
    capture = _Capture(model, list(module_of.values()))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # gradients flow to the activations only: the engine never builds a weight gradient
        p.requires_grad_(False)
    x = x.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="sum") / (x.shape[0] // groups)
            if any(n != 1 for n in capture.calls.values()):
                return None
            names = list(module_of.values())
            outputs = [capture.outputs[name] for name in names]
            output_grads = torch.autograd.grad(loss, outputs)
    finally:
        capture.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    modules = dict(model.named_modules())
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, name in module_of.items():
            module = modules[name]
            dy = output_grads[names.index(name)]
            if isinstance(module, nn.Linear):
                out[key] = _linear_group_grads(capture.inputs[name], dy, groups).view(groups, *params[key].shape)
            else:
                out[key] = _conv_group_grads(module, capture.inputs[name], dy, groups)
    return out


__all__ = ["group_gradients", "supports_group_hooks"]
