"""A layer's inputs as the columns its weight rows multiply, and their second moment H = X X^T / n.

For a weight row w (one output channel, or one output feature) and the layer's input patches x (one per output
position and image), the layer computes w^T x. Stacking the patches as the columns of X (d x n) gives the layer-wise
reconstruction Hessian of ``|W X - W_hat X|^2 / n``: 2 X X^T / n, shared by every row. The factor 2 changes no mask and
no update, so :class:`InputHessian` keeps X X^T / n.

Convolutions are unfolded: d = (C_in / groups) * kh * kw, in the order of ``weight.reshape(C_out, -1)``; a grouped or
depthwise convolution has one H per group (its rows see only their group's input channels). Linear layers: d = in
features, n = every leading position (batch, tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from reflowbench.errors import ConfigError

UNFOLD_ELEMENTS = 1 << 25  # unfolded input elements per piece (128 MiB in float32): bounds the patch matrix of one call


@dataclass(frozen=True)
class LayerGeometry:
    """How a layer's weight splits into rows that share an H: ``groups`` Hs of side ``columns``, each multiplying
    ``rows`` weight rows (conv: output channels per group; linear: every output feature, one group)."""

    groups: int
    rows: int
    columns: int

    @staticmethod
    def of(module: nn.Module) -> "LayerGeometry":
        if isinstance(module, nn.Linear):
            return LayerGeometry(1, module.out_features, module.in_features)
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            return LayerGeometry(module.groups, module.out_channels // module.groups, (module.in_channels // module.groups) * kh * kw)
        raise ConfigError(
            f"layer-wise reconstruction pruners handle Conv2d and Linear layers, not {type(module).__name__}: "
            "exclude it from the targets or use a Fisher-based pruner"
        )

    def rows_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as (groups, rows, columns) (a view where the weight is contiguous)."""
        return weight.reshape(self.groups, self.rows, self.columns)


def input_columns(module: nn.Module, inputs: torch.Tensor) -> Iterator[torch.Tensor]:
    """The patches of ``inputs`` (the layer's input batch) as (groups, columns, n) pieces of at most
    :data:`UNFOLD_ELEMENTS` elements, images split between pieces."""
    geometry = LayerGeometry.of(module)
    if isinstance(module, nn.Linear):
        flat = inputs.reshape(-1, inputs.shape[-1])
        step = max(1, UNFOLD_ELEMENTS // max(1, flat.shape[1]))
        for start in range(0, flat.shape[0], step):
            yield flat[start : start + step].t().unsqueeze(0)
        return
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        inputs, padding = _explicit_padding(module, inputs)
    else:
        padding = module.padding
    height, width = _output_size(module, inputs.shape[-2:], padding)
    per_image = geometry.groups * geometry.columns * height * width
    step = max(1, UNFOLD_ELEMENTS // max(1, per_image))
    for start in range(0, inputs.shape[0], step):
        patches = F.unfold(inputs[start : start + step], module.kernel_size, module.dilation, padding, module.stride)  # (b, C*kh*kw, L)
        b, _, positions = patches.shape
        patches = patches.view(b, geometry.groups, geometry.columns, positions).permute(1, 2, 0, 3)
        yield patches.reshape(geometry.groups, geometry.columns, b * positions)


def _explicit_padding(module: nn.Conv2d, inputs: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The input padded the way the convolution pads it (a padding mode other than zeros, or 'same'), and zero padding left."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return inputs, (0, 0)
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(module.padding) for _ in range(2)]
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(inputs, pads, mode=mode), (0, 0)


def _output_size(module: nn.Conv2d, size: Tuple[int, int], padding: Tuple[int, int]) -> Tuple[int, int]:
    out = []
    for extent, k, s, p, d in zip(size, module.kernel_size, module.stride, padding, module.dilation):
        out.append((extent + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


class InputHessian:
    """The running X X^T / n of one layer, (groups, columns, columns) float64 on ``device``, from batches of inputs
    (``full=False``: only its diagonal, the squared input norms per column, (groups, columns)).

    Each piece's product is taken in float32 (float64 on CPU would be several times slower) and added in float64, so
    sums over many pieces keep their precision.
    """

    def __init__(self, module: nn.Module, device: torch.device, full: bool = True) -> None:
        self.module = module
        self.geometry = LayerGeometry.of(module)
        self.full = full
        g, d = self.geometry.groups, self.geometry.columns
        self.sum = torch.zeros((g, d, d) if full else (g, d), dtype=torch.float64, device=device)
        self.cross_sum: Optional[torch.Tensor] = None  # sum of x_hat x^T with the dense network's inputs x (see add)
        self.count = 0

    def add(self, inputs: torch.Tensor, dense_inputs: Optional[torch.Tensor] = None) -> None:
        """Add one batch of the layer's inputs (what its forward received); with ``dense_inputs`` (the same images' inputs
        to this layer in the dense network) also the cross moment X_hat X^T."""
        with torch.no_grad():
            pieces = input_columns(self.module, inputs.detach().float())
            dense_pieces = input_columns(self.module, dense_inputs.detach().float()) if dense_inputs is not None else None
            for columns in pieces:
                if self.full:
                    self.sum += torch.bmm(columns, columns.transpose(1, 2)).to(self.sum.device, torch.float64)
                else:
                    self.sum += columns.pow(2).sum(dim=2).to(self.sum.device, torch.float64)
                if dense_pieces is not None:
                    cross = torch.bmm(columns, next(dense_pieces).transpose(1, 2)).to(self.sum.device, torch.float64)
                    self.cross_sum = cross if self.cross_sum is None else self.cross_sum + cross
                self.count += columns.shape[2]

    def _checked_count(self) -> int:
        if self.count == 0:
            raise ConfigError("a layer saw no inputs while its H was collected: its module is not called in the model's forward")
        return self.count

    def matrix(self) -> torch.Tensor:
        """H = X X^T / n, (groups, columns, columns) float64."""
        if not self.full:
            raise ValueError("this InputHessian kept only the diagonal of H")
        return self.sum / self._checked_count()

    def cross(self) -> Optional[torch.Tensor]:
        """C = X_hat X^T / n (groups, columns, columns) float64 (rows: this network's inputs, columns: the dense
        network's), or None when no dense inputs were given."""
        return None if self.cross_sum is None else self.cross_sum / self._checked_count()

    def diagonal(self) -> torch.Tensor:
        """diag(H) = the mean squared input of every column, (groups, columns) float64."""
        count = self._checked_count()
        return (self.sum.diagonal(dim1=1, dim2=2) if self.full else self.sum) / count

    @property
    def nbytes(self) -> int:
        return self.sum.numel() * self.sum.element_size()
