"""Dense training (SGD + Nesterov, one-cycle learning rate) so users can make their own checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reflowbench.config import SweepSettings, TrainSpec, validate_spec
from reflowbench.datasets.imagesets import ImageSet
from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import check_output_file, resolve_dataset
from reflowbench.harness.process import configure_process, load_spec_data
from reflowbench.models import build_model
from reflowbench.utils.env import resolve_device


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


def train_checkpoint(spec: SweepSettings, recipe: TrainSpec, save: str, log: Callable[[str], None]) -> Dict[str, float]:
    """``reflowbench train``: every setting checked first, then the same process set-up and data as a sweep's, the
    model trained with ``recipe``, evaluated on the test split and its state_dict written to ``save``; its metrics."""
    validate_spec(spec)
    recipe.validate()
    check_output_file(save, "--save")
    configure_process(spec.sweep)
    device = resolve_device(spec.sweep.device)
    dataset = resolve_dataset(spec)
    data = load_spec_data(spec, dataset)
    model_spec = spec.model
    checkpoint = Path(model_spec.checkpoint) if model_spec.checkpoint else None
    model = build_model(model_spec.model, model_spec.num_classes or data.num_classes, checkpoint, model_spec.shortcut if model_spec.shortcut != "auto" else "A")
    train_dense(model, data.train, recipe, device, log=log)
    metrics = evaluate(model, data.test.batches(None, spec.data.eval_batch_size), device)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, save)
    log(f"dense {model_spec.model} on {dataset}: top-1 {metrics['top1']:.2f}%; saved to {save}")
    return metrics
