"""The embedded default: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), no download."""

from __future__ import annotations

from typing import Tuple

import numpy as np

from reflowbench.datasets.imagesets import TensorImageSet

DIGITS_MEAN = (0.3049,)
DIGITS_STD = (0.3785,)
TEST_FRACTION = 0.25


def load_digits_sets() -> Tuple[TensorImageSet, TensorImageSet]:
    """(train, test) sets; the test quarter is drawn once with a fixed seed (stratified by class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test_mask[rng.choice(members, size=int(round(len(members) * TEST_FRACTION)), replace=False)] = True

    def make(selector: np.ndarray, augment: bool) -> TensorImageSet:
        return TensorImageSet(images[selector], labels[selector], 10, DIGITS_MEAN, DIGITS_STD, crop_pad=1 if augment else 0)

    return make(~test_mask, True), make(test_mask, False)
