"""Which dataset a ``--data`` path holds, read from its layout (nothing is decoded)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from reflowbench.datasets.cifar10 import CLASSES as CIFAR10_CLASSES

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TORCHVISION_CIFAR10_MARKERS = ("cifar-10-batches-py", "cifar-10-python.tar.gz")
EVAL_SPLITS = ("val", "test")


def _class_folders(split: Path) -> set:
    return {p.name for p in split.iterdir() if p.is_dir()} if split.is_dir() else set()


def dataset_of_path(path: Path) -> Optional[str]:
    """'cifar10' or 'imagefolder' when the layout of ``path`` says so, else None.

    - a ``.tar.gz``/``.tgz``/``.tar`` file: a CIFAR-10 ImageFolder archive (the only archives read);
    - a folder with ``cifar-10-batches-py``: a torchvision CIFAR-10 root;
    - a folder with ``train/`` and ``val/`` or ``test/``: CIFAR-10 when its class folders are exactly
      CIFAR-10's ten classes, else a generic ImageFolder tree (ImageNet-style transforms).
    """
    path = Path(path)
    if path.is_file():
        return "cifar10" if path.name.endswith(ARCHIVE_SUFFIXES) else None
    if not path.is_dir():
        return None
    if any((path / marker).exists() for marker in TORCHVISION_CIFAR10_MARKERS):
        return "cifar10"
    train = _class_folders(path / "train")
    if not train or not any((path / split).is_dir() for split in EVAL_SPLITS):
        return None
    return "cifar10" if train == set(CIFAR10_CLASSES) else "imagefolder"
