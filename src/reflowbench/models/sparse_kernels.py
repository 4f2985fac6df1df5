"""2:4 weights on sparse tensor cores: a copy of a model whose 2:4 layers compute with PyTorch's semi-structured sparse
tensors (``torch.sparse.to_sparse_semi_structured``: the compressed half of the weights plus their metadata, multiplied by
the CUTLASS or cuSPARSELt kernels of Ampere and later GPUs), for ``reflowbench speed --semi-structured``.

PyTorch has semi-structured kernels for matrix products only, in float16 / bfloat16 on CUDA, for weights of at least
32 rows x 64 columns (its own configuration). So a linear layer is converted in place, a 1 x 1 convolution (stride 1, no
padding, one group) is run as that matrix product over every pixel, and every other layer (a k x k or depthwise
convolution, a layer whose weight is not exactly 2:4 or is too small) keeps its dense kernel and is listed with the
reason. The weights' layout is the suite's N:M layout (groups of 4 along a row's inputs), which is the one these
kernels read.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS, MIN_COLUMNS = 32, 64  # PyTorch's smallest float16 / bfloat16 semi-structured weight (rows x columns)
Convert = Callable[[torch.Tensor], torch.Tensor]


def holds_two_of_four(matrix: torch.Tensor) -> bool:
    """Whether ``matrix`` (rows, columns) has at most 2 non-zeros in every group of 4 consecutive columns of a row."""
    rows, columns = matrix.shape
    if columns % 4:
        return False
    return bool(((matrix != 0).reshape(rows, columns // 4, 4).sum(-1) <= 2).all())


class SparsePointwise(nn.Module):
    """A 1 x 1 convolution (stride 1, no padding, one group) computed as its matrix product over the pixels, so that its
    (out, in) weight can be a semi-structured sparse tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        return F.linear(pixels, self.weight, self.bias).reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _is_pointwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _why_dense(module: nn.Module) -> str | None:
    """Why ``module`` keeps its dense kernel, or None when its weight can be semi-structured."""
    if not isinstance(module, nn.Linear) and not _is_pointwise(module):
        return "a convolution other than 1 x 1 (PyTorch has semi-structured kernels for matrix products only)"
    matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
    if matrix.shape[0] < MIN_ROWS or matrix.shape[1] < MIN_COLUMNS:
        return f"its weight {tuple(matrix.shape)} is under the kernels' smallest, {MIN_ROWS} x {MIN_COLUMNS}"
    if not holds_two_of_four(matrix):
        return "its weight is not 2:4"
    return None


def semi_structured_copy(model: nn.Module, convert: Convert) -> Tuple[nn.Module, List[str], Dict[str, str]]:
    """A copy of ``model`` with every 2:4 linear and 1 x 1 convolution weight passed through ``convert`` (on a GPU:
    ``torch.sparse.to_sparse_semi_structured``); returns (the copy, the layers converted, layer -> why it stayed dense).
    ``model`` should already be in the dtype and on the device the kernels need."""
    sparse = copy.deepcopy(model).eval()
    converted: List[str] = []
    dense: Dict[str, str] = {}
    for name, module in list(sparse.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        why = _why_dense(module)
        if why is not None:
            dense[name] = why
            continue
        weight = module.weight.detach().reshape(module.weight.shape[0], -1).contiguous()
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(convert(weight), requires_grad=False)
        else:
            _replace(sparse, name, SparsePointwise(convert(weight), None if module.bias is None else module.bias.detach()))
        converted.append(name)
    return sparse, converted, dense


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
