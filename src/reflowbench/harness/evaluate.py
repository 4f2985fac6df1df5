"""Top-1 / top-5 accuracy and mean cross-entropy of a model over a stream of batches."""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from reflowbench.utils.memory_format import as_channels_last, channels_last_weights


def evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Dict[str, float]:
    """{"top1": %, "top5": % (nan unless more than 10 classes), "loss": mean CE, "images": count}; model in eval mode."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    num_classes = 0
    with torch.no_grad(), channels_last_weights(model) as converted:  # CPU convolutions: 1.6-3.5x faster channels-last
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(as_channels_last(x, converted)).float()
            num_classes = logits.shape[1]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top = logits.topk(min(5, num_classes), dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(1).sum())
            seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluation got no batches")
    return {
        "top1": 100.0 * correct1 / seen,
        "top5": 100.0 * correct5 / seen if num_classes > 10 else float("nan"),
        "loss": loss_sum / seen,
        "images": float(seen),
    }
