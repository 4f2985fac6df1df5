"""Disjoint, seeded subsets of the training split (calibration, Fisher gradients, held-out scoring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from reflowbench.errors import DatasetError


@dataclass(frozen=True)
class SubsetSizes:
    """Numbers of training images for each purpose (images, not batches)."""

    calibration: int
    fisher: int
    heldout: int


def disjoint_subsets(num_train: int, sizes: SubsetSizes, seed: int) -> Dict[str, np.ndarray]:
    """Draw disjoint index sets from one seeded permutation of ``range(num_train)``.

    Calibration images come from the front of the permutation and held-out images from its end, so
    both depend only on (seed, their own size): every pruner of a suite sees the same calibration and
    diagnostic images whatever number of gradients it asks for. Fisher images follow calibration.
    Returns {"calibration": (c,), "fisher": (f,), "heldout": (h,)} int64 arrays. The test split is never touched.
    """
    wanted = sizes.calibration + sizes.fisher + sizes.heldout
    if wanted > num_train:
        raise DatasetError(
            f"the subsets need {wanted} training images (calibration {sizes.calibration} + fisher {sizes.fisher} + "
            f"held-out {sizes.heldout}) but the training split has {num_train}: lower --calib-batches/--calib-batch-size "
            "or the pruner's number of gradients"
        )
    permutation = np.random.default_rng(10_007 + seed).permutation(num_train)
    first_fisher = sizes.calibration
    return {
        "calibration": permutation[:first_fisher],
        "fisher": permutation[first_fisher:first_fisher + sizes.fisher],
        "heldout": permutation[num_train - sizes.heldout:],
    }
