"""CIFAR-10 from a .tar.gz of an ImageFolder tree, an extracted tree, or torchvision's downloader.

Decoded uint8 arrays (60,000 x 32 x 32 x 3 = 184 MB) are cached in the user cache folder, keyed by
the source's content, so only the first run decodes JPEGs.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.errors import DatasetError
from reflowbench.utils.io import cache_dir, file_sha256, stable_hash, tree_listing

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NORMALIZATIONS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10-distiller": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
Arrays = Dict[str, np.ndarray]  # train_x (N,32,32,3) uint8, train_y (N,), test_x, test_y
IMAGES_PER_CLASS = {"train": 5000, "test": 1000}  # the full CIFAR-10: 50,000 training and 10,000 test images


def _decode(blob: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DatasetError(f"image {name} cannot be decoded ({exc}): the dataset is corrupt; replace it with a fresh copy") from exc
    if array.shape != (32, 32, 3):
        raise DatasetError(f"image {name} has shape {array.shape}, CIFAR-10 images are 32x32x3")
    return array


def _split_and_class(relative: str) -> Optional[Tuple[str, str]]:
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    for i in range(len(parts) - 2):
        if parts[i] in ("train", "test") and parts[i + 1] in CLASSES:
            return parts[i], parts[i + 1]
    return None


def _assemble(items: List[Tuple[str, str, str, bytes]]) -> Arrays:
    """items: (split, class, name, jpeg bytes) -> arrays, ordered by (split, class, name)."""
    items.sort(key=lambda item: (item[0], CLASSES.index(item[1]), item[2]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(lambda item: _decode(item[3], f"{item[0]}/{item[1]}/{item[2]}"), items, chunksize=256))
    arrays: Arrays = {}
    for split in ("train", "test"):
        chosen = [i for i, item in enumerate(items) if item[0] == split]
        if not chosen:
            raise DatasetError(f"no {split}/<class>/*.jpg images found: expected the ImageFolder layout train/<class>/, test/<class>/")
        arrays[f"{split}_x"] = np.stack([images[i] for i in chosen])
        arrays[f"{split}_y"] = np.array([CLASSES.index(items[i][1]) for i in chosen], dtype=np.int64)
    return arrays


def _read_tarball(path: Path) -> Arrays:
    items: List[Tuple[str, str, str, bytes]] = []
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                where = _split_and_class(member.name)
                if where is None:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                items.append((where[0], where[1], member.name.rsplit("/", 1)[-1], handle.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path} is not a readable .tar.gz ({type(exc).__name__}: {exc}): the file is corrupt or truncated; copy it again") from exc
    return _assemble(items)


def _read_tree(root: Path) -> Arrays:
    items: List[Tuple[str, str, str, bytes]] = []
    for split in ("train", "test"):
        for cls in CLASSES:
            folder = root / split / cls
            if not folder.is_dir():
                raise DatasetError(f"{folder} is missing: a CIFAR-10 ImageFolder tree needs train/<class>/ and test/<class>/ for the 10 classes {CLASSES}")
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    items.append((split, cls, file.name, file.read_bytes()))
    return _assemble(items)


def _read_torchvision(root: Path, download: bool) -> Arrays:
    from torchvision.datasets import CIFAR10

    arrays: Arrays = {}
    for split, train in (("train", True), ("test", False)):
        try:
            data = CIFAR10(str(root), train=train, download=download)
        except Exception as exc:
            hint = "" if download else " (add --download to fetch it)"
            raise DatasetError(
                f"CIFAR-10 could not be loaded from {root}{hint}: {exc}. Without internet, pass --data PATH to a local copy: "
                "a .tar.gz or folder of an ImageFolder tree (train/<class>/, test/<class>/)"
            ) from exc
        arrays[f"{split}_x"] = np.asarray(data.data, dtype=np.uint8)
        arrays[f"{split}_y"] = np.asarray(data.targets, dtype=np.int64)
    return arrays


def _source_key(path: Path) -> str:
    if path.is_file():
        return "file-" + file_sha256(path)[:16]
    return "tree-" + stable_hash(tree_listing(path), 16)  # names, sizes and modification times: an edit in place is a new cache


def _cached(path: Path, reader) -> Arrays:
    cache_file = cache_dir() / f"cifar10-{_source_key(path)}.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file) as stored:
                return {k: stored[k] for k in ("train_x", "train_y", "test_x", "test_y")}
        except Exception:
            cache_file.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    arrays = reader(path)
    tmp = cache_file.with_name(cache_file.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache_file)
    return arrays


def load_cifar10_arrays(path: Optional[Path], download: bool = False) -> Arrays:
    """Arrays from ``path`` (.tar.gz, ImageFolder tree, or torchvision root); torchvision root in the cache when None."""
    if path is None:
        return _read_torchvision(cache_dir() / "torchvision", download)
    path = Path(path)
    if not path.exists() and download:
        return _read_torchvision(path, download)  # torchvision creates the root and downloads into it
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist: pass --data PATH to a CIFAR-10 .tar.gz, ImageFolder tree or torchvision root")
    if path.is_file():
        return _cached(path, _read_tarball)
    if (path / "train").is_dir():
        return _cached(path, _read_tree)
    return _read_torchvision(path, download)


def check_counts(arrays: Arrays, source: str, partial: bool = False) -> None:
    """Every class in both splits, with the full CIFAR-10 count per class unless ``partial``.

    A truncated archive that stops at a file boundary still reads without error: this is what catches it.
    """
    problems = []
    for split, expected in IMAGES_PER_CLASS.items():
        counts = np.bincount(arrays[f"{split}_y"], minlength=len(CLASSES))
        missing = [CLASSES[c] for c in range(len(CLASSES)) if counts[c] == 0]
        if missing:
            problems.append(f"{split} has no images of {', '.join(missing)}")
        elif not partial and (counts != expected).any():
            short = ", ".join(f"{CLASSES[c]} {counts[c]}" for c in range(len(CLASSES)) if counts[c] != expected)
            problems.append(f"{split} should hold {expected:,} images per class ({expected * len(CLASSES):,} in all) but has {int(counts.sum()):,}: {short}")
    if problems:
        raise DatasetError(
            f"CIFAR-10 from {source} is incomplete: {'; '.join(problems)}. The copy is truncated or damaged: copy it again"
            + ("" if partial else " (or pass --partial-data to use a deliberately smaller copy that still has all 10 classes)")
        )


def cifar10_sets(path: Optional[Path], normalization: str = "cifar10", download: bool = False, partial: bool = False) -> Tuple[TensorImageSet, TensorImageSet]:
    """(train, test) sets; training augmentation is random crop 32 with 4-pixel padding + horizontal flip.

    ``partial``: accept fewer than 5,000/1,000 images per class (every class must still be present).
    """
    if normalization not in NORMALIZATIONS:
        raise DatasetError(f"unknown CIFAR-10 normalisation {normalization!r}: choose one of {sorted(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[normalization]
    arrays = load_cifar10_arrays(path, download)
    check_counts(arrays, str(path) if path else "the torchvision cache", partial)
    train = TensorImageSet(arrays["train_x"], arrays["train_y"], 10, mean, std, crop_pad=4, hflip=True)
    test = TensorImageSet(arrays["test_x"], arrays["test_y"], 10, mean, std)
    return train, test
