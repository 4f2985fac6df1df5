"""A plain deep BN CNN for the embedded 8x8 digits default.

``num_layers`` blocks of conv3x3 -> BatchNorm2d -> ReLU (no residuals, so the BN variance
shrinkage after pruning compounds with depth, as in the signal-collapse paper), a 2x2 max-pool
after the first half, global average pooling and a linear classifier.
``norm``: GroupNorm or LayerNorm in place of BN (:mod:`reflowbench.models.norms`).
Input (N, in_channels, 8, 8) normalised images; output (N, num_classes) logits.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from reflowbench.models.norms import norm_layer


class SmallBNCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, num_layers: int = 8, norm: str = "bn") -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        layers: List[nn.Module] = []
        c_in = in_channels
        for index in range(num_layers):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), make_norm(width), nn.ReLU(inplace=True)]
            if index == num_layers // 2 - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))
