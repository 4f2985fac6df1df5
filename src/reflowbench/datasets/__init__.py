"""Datasets: embedded digits, CIFAR-10, ImageFolder/ImageNet; disjoint training subsets.

``load_dataset(name, path, ...)`` returns a :class:`DataBundle` whose ``train`` and ``test`` are
:class:`~reflowbench.datasets.imagesets.ImageSet` objects yielding normalised batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from reflowbench.datasets.detect import dataset_of_path
from reflowbench.datasets.imagesets import FolderImageSet, ImageSet, TensorImageSet
from reflowbench.datasets.splits import SubsetSizes, check_subset_sizes, disjoint_subsets
from reflowbench.errors import DatasetError

DATASETS: Dict[str, str] = {
    "digits": "scikit-learn 8x8 digits, embedded (no download), 1,347 train / 450 test",
    "cifar10": "CIFAR-10: --data a .tar.gz or ImageFolder tree, or a torchvision root (--download)",
    "imagenet": "ImageFolder tree with train/ and val/ (ImageNet transforms: resize 256, crop 224)",
    "imagefolder": "alias of imagenet: any ImageFolder tree with ImageNet-style transforms",
}


@dataclass
class DataBundle:
    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int


def require_data_path(name: str, path: Optional[Path]) -> None:
    """A :class:`DatasetError` naming the fix when dataset ``name`` is read from a tree and no path is given."""
    if name in ("imagenet", "imagefolder") and path is None:
        raise DatasetError(f"dataset {name} needs --data PATH to an ImageFolder tree with train/ and val/")


def load_dataset(
    name: str, path: Optional[Path] = None, normalization: Optional[str] = None, download: bool = False, workers: int = 2, partial: bool = False
) -> DataBundle:
    """Load dataset ``name`` (see :data:`DATASETS`) from ``path`` where it needs one.

    ``partial``: accept a CIFAR-10 copy with fewer images per class than the full dataset.
    """
    if name == "digits":
        from reflowbench.datasets.digits import load_digits_sets

        train, test = load_digits_sets()
    elif name == "cifar10":
        from reflowbench.datasets.cifar10 import cifar10_sets

        train, test = cifar10_sets(Path(path) if path else None, normalization or "cifar10", download, partial)
    elif name in ("imagenet", "imagefolder"):
        require_data_path(name, path)
        from reflowbench.datasets.imagefolder import imagefolder_sets

        train, test = imagefolder_sets(Path(path), workers=workers)
    else:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}")
    return DataBundle(name=name, train=train, test=test, num_classes=train.num_classes)


__all__ = [
    "require_data_path",
    "check_subset_sizes",
    "dataset_of_path",
    "DATASETS",
    "DataBundle",
    "ImageSet",
    "TensorImageSet",
    "FolderImageSet",
    "SubsetSizes",
    "disjoint_subsets",
    "load_dataset",
]
