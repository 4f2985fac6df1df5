"""Environment facts recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional

import torch


def git_revision(start: Optional[Path] = None) -> Optional[str]:
    """The git commit of the reflowbench source tree, with ``+dirty`` when the package's own files are
    modified (results or reports written inside the checkout do not count); None outside git."""
    where = Path(start or Path(__file__).resolve().parents[1])  # the reflowbench package folder
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=where, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution`` from its metadata, without importing it (importing torchvision
    costs every run ~160 MiB of resident memory), or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> Dict[str, object]:
    import numpy

    import reflowbench

    info: Dict[str, object] = {
        "reflowbench": reflowbench.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _installed_version("torchvision"),
        "numpy": numpy.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def use_deterministic(enabled: bool) -> None:
    """With ``enabled``, deterministic kernels wherever PyTorch has them, for the rest of the process: on CUDA,
    cuDNN's deterministic convolution algorithms without benchmark autotuning, cuBLAS with a fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set) and sort-based scatter/index additions instead of atomics; an op
    with no deterministic kernel warns with its name instead of failing. CPU kernels are already deterministic for
    a fixed thread count. Off: PyTorch's defaults, untouched. Call before the first CUDA operation."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    from reflowbench.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here: use --device cpu or auto")
    return device
