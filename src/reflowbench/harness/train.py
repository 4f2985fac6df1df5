"""Dense training (SGD + Nesterov, one-cycle learning rate) so users can make their own checkpoints.

Training is resumable: after every epoch the model, optimizer and scheduler state go to ``<save>.progress.pt``
(atomically), and ``reflowbench train`` with the same ``--save``, model and recipe continues from the last finished
epoch (every epoch's shuffling and augmentation are seeded by the recipe's seed and the epoch, so a resumed run sees the
batches an uninterrupted one would). A progress file of another model or recipe is refused, never silently reused.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reflowbench.config import SweepSettings, TrainSpec, validate_spec
from reflowbench.datasets.imagesets import ImageSet
from reflowbench.errors import CheckpointError
from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import check_output_file, resolve_dataset
from reflowbench.harness.process import configure_process, load_spec_data
from reflowbench.models import build_model
from reflowbench.utils.env import resolve_device
from reflowbench.utils.io import atomic_write


def one_cycle(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier in [0, 1]: linear up to the peak, then linear down to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def progress_path(save: str) -> Path:
    """Where ``reflowbench train --save SAVE`` keeps its state after each epoch until it finishes."""
    return Path(save).with_name(Path(save).name + ".progress.pt")


def _load_progress(path: Path, identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The saved state at ``path`` when it exists and was written for ``identity`` (model, dataset, recipe); None
    when there is none; :class:`CheckpointError` when it is unreadable or belongs to another training."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"the training progress file {path} cannot be read ({type(exc).__name__}); delete it to train from the start") from None
    if not isinstance(state, dict) or state.get("identity") != identity:
        theirs = state.get("identity") if isinstance(state, dict) else None
        raise CheckpointError(
            f"the training progress file {path} belongs to another training ({theirs}, not {identity}): "
            "delete it to train from the start, or choose another --save"
        )
    return state


def train_dense(
    model: nn.Module,
    train: ImageSet,
    spec: TrainSpec,
    device: torch.device,
    log: Optional[Callable[[str], None]] = None,
    progress: Optional[Path] = None,
    identity: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Train ``model`` in place on all of ``train``; returns it in eval mode. ``progress``: where to save the state after
    each epoch and resume from (see the module docstring), for the training ``identity`` names; removed when done."""
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
    identity = {**(identity or {}), "recipe": asdict(spec)}
    start = 0
    saved = _load_progress(progress, identity) if progress is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start = int(saved["epoch"])
        if log:
            log(f"resuming from {progress}: {start} of {spec.epochs} epochs done")
    for epoch in range(start, spec.epochs):
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
        if progress is not None and epoch + 1 < spec.epochs:
            state = {
                "identity": identity,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            atomic_write(progress, lambda tmp, state=state: torch.save(state, tmp))
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
    progress = progress_path(save)
    identity = {"model": model_spec.model, "dataset": dataset, "checkpoint": model_spec.checkpoint, "data": spec.data.data}
    train_dense(model, data.train, recipe, device, log=log, progress=progress, identity=identity)
    metrics = evaluate(model, data.test.batches(None, spec.data.eval_batch_size), device)
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(save), lambda tmp: torch.save(weights, tmp))
    progress.unlink(missing_ok=True)
    log(f"dense {model_spec.model} on {dataset}: top-1 {metrics['top1']:.2f}%; saved to {save}")
    return metrics
