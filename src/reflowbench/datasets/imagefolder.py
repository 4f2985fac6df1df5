"""ImageFolder trees (ImageNet and the like) with the standard ImageNet transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from reflowbench.datasets.imagesets import FolderImageSet
from reflowbench.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_SPLITS = ("val", "test")


def imagenet_transforms(resize: int = 256, crop: int = 224):
    """(eval, train) transforms: resize+center-crop, and random-resized-crop+flip; both normalise."""
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), normalize])
    train_tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return eval_tf, train_tf


def imagefolder_sets(root: Path, resize: int = 256, crop: int = 224, workers: int = 2) -> Tuple[FolderImageSet, FolderImageSet]:
    """(train, eval) sets from ``root/train`` and ``root/val`` (or ``root/test``)."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DatasetError(f"{root}/train is missing: an ImageFolder dataset needs train/<class>/ and val/<class>/ (or test/<class>/)")
    eval_dir = next((root / name for name in EVAL_SPLITS if (root / name).is_dir()), None)
    if eval_dir is None:
        raise DatasetError(f"{root} has no val/ or test/ folder: the evaluation split must be an ImageFolder tree too")
    eval_tf, train_tf = imagenet_transforms(resize, crop)
    try:
        train = FolderImageSet(str(root / "train"), eval_tf, train_tf, workers)
        test = FolderImageSet(str(eval_dir), eval_tf, eval_tf, workers)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"cannot read ImageFolder tree {root}: {exc}") from exc
    if train.eval_set.classes != test.eval_set.classes:
        raise DatasetError(f"{root}/train and {eval_dir} have different class folders; they must match")
    return train, test
