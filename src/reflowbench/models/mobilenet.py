"""MobileNetV1 for 32x32 inputs, key layout of ``../shared/models/README.md``.

``features`` is one Sequential: stem conv(3->32, stride 1) + BN + ReLU, then for each entry of
``CONFIG`` a depthwise 3x3 conv + BN + ReLU and a pointwise 1x1 conv + BN + ReLU; then global
average pooling and ``fc`` = Linear(1024, num_classes). Input (N, 3, 32, 32), output logits.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn

CONFIG: List[Union[int, Tuple[int, int]]] = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = int(32 * width)
        layers: List[nn.Module] = [nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        c_in = stem
        for entry in CONFIG:
            c_out, stride = (entry, 1) if isinstance(entry, int) else entry
            c_out = int(c_out * width)
            layers += [
                nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_in, c_out, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))
