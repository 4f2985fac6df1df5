"""Does a model take a dataset's images and predict its classes? Checked before any work."""

from __future__ import annotations

import torch
from torch import nn

from reflowbench.errors import ConfigError


def first_conv(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)


def check_model_fits_data(model: nn.Module, images: torch.Tensor, num_classes: int, model_name: str, dataset_name: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` maps ``images`` (B, C, H, W) to (B, num_classes) logits.

    Checks the channel count against the first conv, then runs one no-grad forward pass (BN statistics
    untouched: the model is put in eval mode) so that an image size the model cannot take is reported
    by the tool, not by a conv layer in the middle of a run.
    """
    fix = "pass the --model that matches the data (or --dataset/--data for the model's data)"
    conv = first_conv(model)
    channels = images.shape[1]
    if conv is not None and conv.in_channels != channels:
        raise ConfigError(
            f"model {model_name} takes {conv.in_channels}-channel images but dataset {dataset_name} has {channels}-channel "
            f"images of {tuple(images.shape[1:])}: {fix}"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise ConfigError(f"model {model_name} cannot take dataset {dataset_name}'s images of shape {tuple(images.shape[1:])} ({first}): {fix}") from None
    finally:
        model.train(was_training)
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ConfigError(
            f"model {model_name} outputs {tuple(logits.shape[1:])} logits per image but dataset {dataset_name} has {num_classes} classes: "
            "use a checkpoint trained on this dataset, or --num-classes for a model built without one"
        )
