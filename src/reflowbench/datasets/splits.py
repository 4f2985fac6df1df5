"""Disjoint, seeded subsets of the training split (calibration, Fisher gradients, held-out scoring).

One seeded permutation of the training split is cut into three fixed ranges, one per purpose:

    calibration: [0, 40%)     Fisher gradients: [40%, 80%)     held-out: [80%, 100%)

and each subset is a prefix of its own range. So no subset depends on the size of another: asking
for more gradients (or more REFLOW batches) never changes which images another purpose sees, and
ablations over one knob compare like with like. The test split is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from reflowbench.errors import DatasetError

# (purpose, fraction of the training split reserved for it, the settings that lower its size)
RANGES: Tuple[Tuple[str, float, str], ...] = (
    ("calibration", 0.4, "--calib-batches or --calib-batch-size"),
    ("fisher", 0.4, "the pruner's number of gradients (e.g. --woodfisher-num-grads) or images per gradient (--woodfisher-minibatch)"),
    ("heldout", 0.2, "--diag-images"),
)
PERMUTATION_SEED_OFFSET = 10_007


@dataclass(frozen=True)
class SubsetSizes:
    """Numbers of training images for each purpose (images, not batches)."""

    calibration: int
    fisher: int
    heldout: int


def range_bounds(num_train: int) -> Dict[str, Tuple[int, int]]:
    """purpose -> [start, stop) positions in the permutation of a training split of ``num_train`` images."""
    bounds: Dict[str, Tuple[int, int]] = {}
    start = 0
    cumulative = 0.0
    for purpose, fraction, _ in RANGES:
        cumulative += fraction
        stop = num_train if purpose == RANGES[-1][0] else int(round(cumulative * num_train))
        bounds[purpose] = (start, stop)
        start = stop
    return bounds


def check_subset_sizes(num_train: int, sizes: SubsetSizes, knobs: Optional[Dict[str, str]] = None) -> None:
    """Raise :class:`DatasetError` naming every subset that does not fit its range, and the option that lowers it
    (``knobs``: purpose -> the settings to name instead of the generic ones, e.g. the flags of the pruner that needs
    the most Fisher images)."""
    bounds = range_bounds(num_train)
    problems = []
    for purpose, fraction, generic in RANGES:
        knob = (knobs or {}).get(purpose, generic)
        wanted = getattr(sizes, purpose)
        capacity = bounds[purpose][1] - bounds[purpose][0]
        if wanted > capacity:
            problems.append(f"{purpose} needs {wanted} images but its {fraction:.0%} share holds {capacity} (lower {knob})")
    if problems:
        raise DatasetError(f"the training split has {num_train} images, too few for: " + "; ".join(problems))


def disjoint_subsets(num_train: int, sizes: SubsetSizes, seed: int) -> Dict[str, np.ndarray]:
    """{"calibration": (c,), "fisher": (f,), "heldout": (h,)} int64 index arrays, disjoint, each the
    prefix of its own fixed range of one seeded permutation of ``range(num_train)``."""
    check_subset_sizes(num_train, sizes)
    permutation = np.random.default_rng(PERMUTATION_SEED_OFFSET + seed).permutation(num_train)
    bounds = range_bounds(num_train)
    return {purpose: permutation[bounds[purpose][0] : bounds[purpose][0] + getattr(sizes, purpose)] for purpose, _, _ in RANGES}
