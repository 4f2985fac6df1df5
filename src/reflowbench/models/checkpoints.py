"""Reading checkpoints (plain state_dicts, Distiller-style dicts, safetensors) and loading them strictly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from reflowbench.errors import CheckpointError

StateDict = Dict[str, torch.Tensor]
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_BENIGN_MISSING_SUFFIXES = (".num_batches_tracked",)


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a checkpoint file, unwrapped and with any ``module.`` prefix removed (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> Tuple[StateDict, Optional[Any]]:
    """(tensors, the saved shapes of a channel-pruned network or None): tensors unwrapped, any ``module.`` prefix removed.

    Accepts ``.safetensors`` files, plain ``torch.save``-d state_dicts, and dicts that hold one under
    ``state_dict`` / ``model_state_dict`` / ``model`` (Distiller, Lightning-like). Always ``weights_only``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass --checkpoint PATH to an existing file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file: pass --checkpoint PATH to the .pt/.pth/.safetensors file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError("reading .safetensors needs the 'safetensors' package: pip install safetensors") from exc
        try:
            raw: object = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc}); re-export it") from exc
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types here (UnpicklingError, KeyError, RuntimeError, ...)
            raise CheckpointError(
                f"checkpoint {path} cannot be loaded with weights_only=True ({_load_failure(exc)}); "
                "re-save it as a plain state_dict (torch.save(model.state_dict(), path)) or as .safetensors"
            ) from exc
    state = _strip_module_prefix(_unwrap(raw, path))
    check_finite(state, str(path))
    shapes = raw.get("pruned_shapes") if isinstance(raw, Mapping) else None
    return state, shapes


def _load_failure(exc: Exception) -> str:
    """The useful part of torch.load's error: the refused pickle global when there is one."""
    text = str(exc)
    refused = re.search(r"unsupported GLOBAL (\S+)", text)
    if refused:
        return f"it pickles code ({refused.group(1)}), which is never run"
    boilerplate = ("Weights only load failed", "Check the documentation", "In PyTorch", "Please file an issue")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    detail = f": {lines[0][:160]}" if lines else ""
    return f"not a torch checkpoint; {type(exc).__name__}{detail}"


def check_finite(state: StateDict, source: str) -> None:
    """Raise :class:`CheckpointError` naming every floating tensor with NaN or Inf entries."""
    from reflowbench.models.state_checks import non_finite_entries

    bad = non_finite_entries(state.items())
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... (+{len(bad) - 10} more)" if len(bad) > 10 else "")
        raise CheckpointError(
            f"checkpoint {source} has NaN or Inf values in {len(bad)} tensor(s): {shown}; the file is damaged or was saved from a diverged run: use another checkpoint"
        )


def _unwrap(raw: object, path: Path) -> StateDict:
    if isinstance(raw, Mapping):
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            return dict(raw)
        for key in _WRAPPER_KEYS:
            inner = raw.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    raise CheckpointError(f"checkpoint {path} holds no state_dict (looked for a dict of tensors, or one under {list(_WRAPPER_KEYS)})")


def _strip_module_prefix(state: StateDict) -> StateDict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: StateDict, source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``; raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_BENIGN_MISSING_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    classifier = _classifier_name(model)
    if classifier and not missing and not unexpected and wrong_shape and all(k.startswith(classifier + ".") for k in _wrong_shape_keys(state, expected)):
        raise CheckpointError(
            f"{source} has a classifier for {state[classifier + '.weight'].shape[0]} classes but the model was built for "
            f"{expected[classifier + '.weight'].shape[0]} (the dataset's classes, or --num-classes): use a checkpoint trained on this dataset's classes"
        )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(model, source, missing, unexpected, wrong_shape))
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


def _classifier_name(model: nn.Module) -> str | None:
    """Module name of the last Linear layer (the classifier of the models here), or None."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _wrong_shape_keys(state: StateDict, expected: Mapping[str, torch.Tensor]) -> List[str]:
    return [k for k in expected if k in state and state[k].shape != expected[k].shape]


def _mismatch_message(model: nn.Module, source: str, missing: List[str], unexpected: List[str], wrong_shape: List[str]) -> str:
    def listing(title: str, items: List[str]) -> str:
        shown = ", ".join(items[:25]) + (f", ... (+{len(items) - 25} more)" if len(items) > 25 else "")
        return f"\n  {title} ({len(items)}): {shown}"

    text = f"{source} does not match model {type(model).__name__}:"
    if missing:
        text += listing("missing keys", missing)
    if unexpected:
        text += listing("unexpected keys", unexpected)
    if wrong_shape:
        text += listing("shape mismatches", wrong_shape)
    text += "\n  fix: choose the --model (and --shortcut A/B, --num-classes) the checkpoint was trained with"
    return text
