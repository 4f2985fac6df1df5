"""Dense training (SGD + Nesterov, one-cycle learning rate) so users can make their own checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reflowbench.datasets.imagesets import ImageSet
from reflowbench.errors import ConfigError


@dataclass
class TrainSpec:
    """Recipe of the shared checkpoints: SGD Nesterov 0.9, wd 5e-4, one-cycle (15% warm-up, linear decay)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.15
    seed: int = 0
    augment: bool = True

    def validate(self) -> "TrainSpec":
        """Raise :class:`ConfigError` for a recipe that cannot train; return it."""
        problems = [
            f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}"
            for name, ok, rule in (
                ("epochs", self.epochs >= 1, ">= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
                ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
                ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
                ("seed", 0 <= self.seed < 2**31, "in [0, 2^31)"),
            )
            if not ok
        ]
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def one_cycle(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier in [0, 1]: linear up to the peak, then linear down to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_dense(model: nn.Module, train: ImageSet, spec: TrainSpec, device: torch.device, log: Optional[Callable[[str], None]] = None) -> nn.Module:
    """Train ``model`` in place on all of ``train``; returns it in eval mode."""
    torch.manual_seed(spec.seed)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = int(np.ceil(len(train) / spec.batch_size))
    total = spec.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(step, total, spec.warmup_fraction))
    for epoch in range(spec.epochs):
        running = 0.0
        for x, y in train.batches(None, spec.batch_size, shuffle=True, augment=spec.augment, seed=spec.seed * 1000 + epoch):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(y)
        if log:
            log(f"epoch {epoch + 1}/{spec.epochs}: train loss {running / len(train):.4f}")
    return model.eval()
