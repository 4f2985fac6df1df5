"""Image sets that yield normalised (x, y) mini-batches over any subset of their indices.

Two implementations share one protocol:
- :class:`TensorImageSet`: the whole split in memory (digits, CIFAR-10), batches built with
  vectorised torch ops (crop/flip augmentation included), no per-image Python work.
- :class:`FolderImageSet`: an ImageFolder tree decoded on the fly by a DataLoader (ImageNet-sized data).
"""

from __future__ import annotations

import re
from typing import Iterator, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from reflowbench.errors import DatasetError

Batch = Tuple[torch.Tensor, torch.Tensor]


class ImageSet(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def batches(self, indices: Optional[np.ndarray], batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0) -> Iterator[Batch]:
        """Yield (x: float (B, C, H, W) normalised, y: int64 (B,)) over ``indices`` (all when None)."""
        ...


class TensorImageSet:
    """In-memory images.

    images: uint8 (N, H, W, C) in [0, 255] or float (N, H, W, C) in [0, 1]; labels: int64 (N,).
    mean/std: per-channel normalisation applied after scaling to [0, 1].
    Augmentation (train-time): random crop with ``crop_pad`` zero padding and, if ``hflip``, horizontal flips.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int, mean: Sequence[float], std: Sequence[float], crop_pad: int = 0, hflip: bool = False
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.num_classes = num_classes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_pad = crop_pad
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def _to_float(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.permute(0, 3, 1, 2).float()
        if raw.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_pad:
            p = self.crop_pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            rows = dy.view(n, 1) + torch.arange(h).view(1, h)  # (n, h)
            cols = dx.view(n, 1) + torch.arange(w).view(1, w)  # (n, w)
            batch = torch.arange(n).view(n, 1, 1)
            x = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        return x.contiguous()

    def batches(self, indices: Optional[np.ndarray], batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0) -> Iterator[Batch]:
        order = torch.arange(len(self)) if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        generator = torch.Generator().manual_seed(seed)
        if shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            x = self._to_float(self.images[chosen])
            if augment:
                x = self._augment(x, generator)
            yield x, self.labels[chosen]


UNDECODABLE = re.compile(r"image (.+?) cannot be decoded \((.*?)\): replace or remove it")


def checked_loader(path: str):
    """torchvision's image loader, with an image that cannot be decoded named in one line (a :class:`DatasetError`)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a broken file
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(f"image {path} cannot be decoded ({type(exc).__name__}: {why}): replace or remove it") from None


class FolderImageSet:
    """An ImageFolder tree; ``eval_transform`` / ``train_transform`` are torchvision transforms to tensors. An image that
    cannot be decoded stops the iteration with one line naming the file (also from inside a DataLoader worker)."""

    def __init__(self, root: str, eval_transform, train_transform, workers: int = 2) -> None:
        from torchvision.datasets import ImageFolder

        self.eval_set = ImageFolder(root, transform=eval_transform, loader=checked_loader)
        self.train_set = ImageFolder(root, transform=train_transform, loader=checked_loader)
        self.num_classes = len(self.eval_set.classes)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.eval_set)

    def batches(self, indices: Optional[np.ndarray], batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0) -> Iterator[Batch]:
        base = self.train_set if augment else self.eval_set
        subset = base if indices is None else Subset(base, [int(i) for i in indices])
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(subset, batch_size=batch_size, shuffle=shuffle, num_workers=self.workers, generator=generator, persistent_workers=False)
        torch.manual_seed(seed)  # augmentation randomness inside workers derives from the base seed
        try:
            yield from loader
        except Exception as exc:
            found = UNDECODABLE.findall(str(exc))  # a worker's exception arrives wrapped, its traceback (source lines too) first
            if not found:
                raise
            path, why = found[-1]  # the exception's own line comes last
            raise DatasetError(f"image {path} cannot be decoded ({why}): replace or remove it") from None
