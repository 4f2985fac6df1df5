"""The run record's shape, typed: what ``runs/<run>.json`` holds (one JSON object per finished run).

TypedDicts, so a record stays the plain JSON object it always was (written and read as a dict, the same bytes), while
the harness that writes it and a reader that wants it name every field and its type here, in the lowest layer.
Metrics are percentages (top-1, top-5) and nats (loss); seconds and MiB in ``cost``.
"""

from __future__ import annotations

from typing import Any, Dict, List, TypedDict


class Metrics(TypedDict):
    """Accuracy on the test split: top-1 and top-5 in % (top-5 NaN for 10 classes or fewer), the mean cross-entropy in
    nats, and the number of test images (a float, as evaluated)."""

    top1: float
    top5: float
    loss: float
    images: float


class ReflowMetrics(TypedDict):
    """The test metrics after REFLOW, with what the calibration saw in place of the test count."""

    top1: float
    top5: float
    loss: float
    batches: int  # calibration batches run through the network
    images: int  # calibration images in them (not the test images)


class Subsets(TypedDict):
    """Training images each purpose used (disjoint per seed)."""

    calibration_images: int
    fisher_images: int
    diagnostic_images: int


class _VarianceBase(TypedDict):
    layers: List[str]  # the signal points: BN layers (other normalisation layers, or the layers, where a network has none)
    dense: List[float]
    pruned_ratio: List[float]
    pruned: Dict[str, float]  # summary of the ratios (first, last, min)


class Variance(_VarianceBase, total=False):
    """Signal-collapse diagnostics: per signal point, the dense output variance and the pruned / dense ratio before and
    after REFLOW (``reflow_ratio`` and ``reflow`` only where REFLOW ran)."""

    reflow_ratio: List[float]
    reflow: Dict[str, float]


class _CorrectionMeasured(TypedDict):
    """A correction other than REFLOW (``--corrections``): the test metrics after it, what it ran through the network
    (calibration images and batches per pass, forward passes, seconds) and the variance ratios after it."""

    top1: float
    top5: float
    loss: float
    images: int
    batches: int
    passes: int
    seconds: float
    ratio: List[float]  # per signal point, as Variance.layers
    ratios: Dict[str, float]  # their summary


class CorrectionMetrics(_CorrectionMeasured, total=False):
    """:class:`_CorrectionMeasured`, and where the correction reports them, ``details``: what it chose (variance-match:
    its shrinkage factor per layer)."""

    details: Dict[str, Any]


class RunHeader(TypedDict):
    """The fields every run record starts with, finished or failed."""

    schema: int  # SCHEMA_VERSION of the writer
    status: str  # complete | failed
    key: str  # the run key: a hash of everything that changes the result
    created: str  # UTC, ISO 8601
    model: str
    dataset: str
    method: str
    method_description: str
    options: Dict[str, Any]  # the pruner's options
    sparsity: float
    seed: int


class _Shared(RunHeader):
    settings: Dict[str, Any]  # the sweep's settings that change a result (hashed into the key)
    sources: Dict[str, Any]  # where the checkpoint and the data were read from
    targets: Dict[str, Any]  # the target weights: names, counts, the policy
    dense: Metrics
    cost: Dict[str, Dict[str, float]]  # phase -> seconds, cpu_seconds, peak_rss_mb, peak_cuda_mb
    notes: Dict[str, Any]  # what the pruner said of its run (steps, rejected updates, reused gradients, ...)
    environment: Dict[str, Any]  # host, versions, device, threads, git revision


class FailedRecord(_Shared):
    """A run whose pruner diverged: why, and what it cost until then."""

    error: str


class CompleteRecord(_Shared, total=False):
    """A finished run: pruned, evaluated, recalibrated, evaluated again (``objective`` only with --objective-grads;
    ``reflow`` unless --corrections leaves REFLOW out; ``corrections`` with any other --corrections than the default)."""

    sparsity_actual: float
    subsets: Subsets
    pruned: Metrics
    reflow: ReflowMetrics
    variance: Variance
    corrections: Dict[str, CorrectionMetrics]
    objective: Dict[str, Any]
    structure: Dict[str, Any]  # --pattern channels: the smaller network (channels removed per group, parameters and FLOPs against dense)
