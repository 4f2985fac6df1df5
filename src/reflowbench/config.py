"""Every settings class (what the CLI is generated from), presets, the one trip that builds a sweep's settings, validation.

Words: a **sweep** is one model's methods x sparsities x seeds (``reflowbench run``: :class:`SweepSettings`); a **suite** is a
named set of sweeps (``reflowbench suite``: :class:`SuiteCommandSpec`, the jobs in :mod:`reflowbench.suites`).

Precedence: dataclass defaults < preset < ``--config FILE.json`` < explicit command-line flags.
A preset is a named bundle of settings, listed in ``--help`` with every value it sets; without one,
every setting is the default that ``--help`` shows.

This module is data only (bottom layer): it checks values and types, never imports torch, models,
datasets or pruners. Names that need a registry (models, datasets, pruners) are checked by the
harness's planning step, still before any model or data is loaded.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from reflowbench.errors import ConfigError
from reflowbench.schema.targets import TargetPolicy
from reflowbench.utils.known_names import refuse_unknown

MAX_SEED = 2**31 - 1
REFLOW_MODES = ("cumulative", "ema")
SHORTCUTS = ("auto", "A", "B")


@dataclass
class ModelSpec:
    """The dense network to prune."""

    model: str = "smallcnn"  # built-in name (resnet20..110, mobilenetv1, smallcnn) or any torchvision model name
    checkpoint: Optional[str] = None  # state_dict / Distiller dict / .safetensors; smallcnn on digits trains one when absent
    shortcut: str = "auto"  # CIFAR ResNet shortcuts: A (padding), B (1x1 conv), auto (from checkpoint keys)
    weights: Optional[str] = None  # torchvision weight enum name, e.g. DEFAULT or IMAGENET1K_V2
    num_classes: Optional[int] = None  # default: the dataset's
    fold_bn: bool = False  # fold every BatchNorm into the convolution before it, then prune the folded weights (the deployed form: no BN statistics left)


@dataclass
class DataSpec:
    """Where images come from."""

    dataset: Optional[str] = None  # digits, cifar10, imagenet, imagefolder (default: inferred from --data and the model)
    data: Optional[str] = None  # path: CIFAR-10 .tar.gz / ImageFolder tree / torchvision root; ImageNet tree
    download: bool = False  # let torchvision download CIFAR-10 into --data (needs the internet)
    norm: Optional[str] = None  # CIFAR-10 normalisation: cifar10 (default) or cifar10-distiller
    partial_data: bool = False  # accept a CIFAR-10 copy with fewer than 5,000/1,000 images per class (all 10 classes still needed)
    workers: int = 2  # DataLoader workers for ImageFolder data
    eval_batch_size: int = 500  # images per batch for test-set evaluation and diagnostics


@dataclass
class ReflowSpec:
    """REFLOW calibration and the signal-collapse diagnostics."""

    calib_batches: int = 50  # calibration batches for BN re-estimation
    calib_batch_size: int = 128  # training images per calibration batch
    reflow_mode: str = "cumulative"  # cumulative (reset + exact average) or ema (continues from the old statistics)
    reflow_momentum: float = 0.1  # EMA momentum in (0, 1] (ema mode only)
    calib_augment: bool = False  # train-time augmentation on calibration images
    diag_images: int = 1000  # held-out training images for the BN variance ratios


CORRECTION_NONE = "none"  # the uncorrected pruned network: always evaluated, so naming it in --corrections changes nothing
DEFAULT_CORRECTIONS = ["reflow"]
SHRINKAGE_RULES = ("split-half", "none")


@dataclass
class CorrectionSpec:
    """Post-pruning corrections (see `reflowbench list`): each applied to the same pruned weights and evaluated."""

    corrections: List[str] = field(
        default_factory=lambda: list(DEFAULT_CORRECTIONS)
    )  # corrections to apply, each from the same pruned weights: reflow, statcorr, variance-match, repair; none alone: only the pruned network
    variance_match_shrinkage: str = "split-half"  # variance-match's per-channel scales: split-half (data-driven shrinkage) or none (naive matching)

    def applied(self) -> List[str]:
        """The corrections to run, in the order given, without ``none`` (the pruned network is always evaluated)."""
        return [name for name in self.corrections if name != CORRECTION_NONE]

    def key_fields(self) -> Optional[Dict[str, Any]]:
        """What enters a run's key: None at the default (REFLOW only: the runs recorded before corrections existed keep
        their keys), else the sorted corrections and the options of those applied."""
        applied = sorted(self.applied())
        if applied == DEFAULT_CORRECTIONS:
            return None
        fields_ = {"corrections": applied}
        if "variance-match" in applied:
            fields_["variance_match_shrinkage"] = self.variance_match_shrinkage
        return fields_

    def validate(self) -> "CorrectionSpec":
        _unique(self.corrections, "--corrections")
        _require(bool(self.corrections), "--corrections needs at least one name (none: evaluate the pruned network only)")
        _require(
            self.variance_match_shrinkage in SHRINKAGE_RULES,
            f"--variance-match-shrinkage must be one of {SHRINKAGE_RULES}, got {self.variance_match_shrinkage!r}",
        )
        return self


UNSTRUCTURED = "unstructured"
CHANNELS = "channels"
MAX_GROUP = 64  # the largest M of an N:M pattern


@dataclass(frozen=True)
class SparsityPattern:
    """Which weights may be pruned together: ``unstructured`` (any), ``n:m`` (in each group of ``m`` consecutive
    weights along an output row's flattened input dimension, exactly ``n`` kept; the sparsity is 1 - n/m), or
    ``channels`` (whole output channels removed, giving a smaller network; the sparsity is the fraction of the
    prunable channels removed)."""

    kind: str = UNSTRUCTURED
    n: int = 0
    m: int = 0

    @staticmethod
    def parse(text: str) -> "SparsityPattern":
        """``unstructured``, ``channels`` or ``N:M`` (0 < N < M <= 64); anything else is a :class:`ConfigError` naming the forms."""
        if text == UNSTRUCTURED:
            return SparsityPattern()
        if text == CHANNELS:
            return SparsityPattern(CHANNELS)
        parts = text.split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            n, m = int(parts[0]), int(parts[1])
            if 0 < n < m <= MAX_GROUP:
                return SparsityPattern("n:m", n, m)
        raise ConfigError(f"--pattern must be unstructured, channels or N:M with 0 < N < M <= {MAX_GROUP} (e.g. 2:4, 4:8, 1:4), got {text!r}")

    def sparsity(self) -> Optional[float]:
        """The sparsity the pattern fixes (1 - N/M), or None (unstructured: the sweep's sparsities)."""
        return 1.0 - self.n / self.m if self.kind == "n:m" else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "n:m" else self.kind


@dataclass
class TargetSpec:
    """Which weights count as prunable (all conv + linear by default), and in which pattern."""

    exclude_first_conv: bool = False
    exclude_classifier: bool = False
    exclude_shortcuts: bool = False  # 1x1 convs on residual shortcuts
    pattern: str = UNSTRUCTURED  # unstructured; N:M (e.g. 2:4: N of every M consecutive weights along each output row's input dimension kept; sparsity 1 - N/M, --sparsities may be omitted); or channels (whole output channels removed: a smaller network; the sparsity is the fraction of prunable channels removed)

    def sparsity_pattern(self) -> SparsityPattern:
        return SparsityPattern.parse(self.pattern)

    def policy(self) -> TargetPolicy:
        return TargetPolicy(not self.exclude_first_conv, not self.exclude_classifier, not self.exclude_shortcuts)


@dataclass
class SweepSpec:
    """What to run and where."""

    methods: List[str] = field(default_factory=lambda: ["mp"])
    sparsities: List[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    seeds: List[int] = field(default_factory=lambda: [0])
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    deterministic: bool = False  # deterministic CUDA kernels (cuDNN, cuBLAS workspace, scatter adds): the same weights on every rerun, somewhat slower; CPU runs are reproducible at a fixed --threads already
    out: str = "reflowbench-out"
    memory_budget_gb: float = 8.0  # largest single allocation a pruner may plan (gradients, curvature)
    report_sparsity: Optional[float] = None  # sparsity of the signal-collapse figure (default: the highest)
    progress: bool = True
    retry_failed: bool = False  # run again the runs recorded as failed (a multi-step pruner that diverged); without it a failed run counts as finished
    skip_unreadable: bool = (
        False  # leave files under OUT/runs that are not readable run records out of results.csv and the report (each named); without it they stop the report
    )


@dataclass
class ObjectiveSpec:
    """An optional diagnostic, not part of a run's key: the quadratic model every Hessian pruner claims to
    minimise, Q(w) = 1/2 (w - w_bar)^T F (w - w_bar), measured for every pruned model under one reference
    whole-network Fisher per seed (dense model, the first N x m Fisher images), with the support's overlap
    with global magnitude's and the lowest Q any weights on that support reach."""

    objective_grads: int = 0  # N of the reference Fisher (0: off; CHITA's default sample is 500)
    objective_minibatch: int = 16  # images averaged per reference gradient
    objective_damp: float = 1e-4  # lam of the reference Fisher


LAYER_SUBSETS = ("first", "last", "each")


@dataclass
class ReflowAblationSpec:
    """The REFLOW ablation (``reflowbench ablate-reflow``): prune once per seed, then REFLOW with every setting
    of two one-knob grids and evaluate each: calibration batches at the sweep's --calib-batch-size, and
    batch sizes at its --calib-batches. Calibration images are prefixes of the seed's calibration range.
    With ``--layers``, instead: REFLOW of only the first k, only the last k, or only the k-th BN layer (the others keep
    the dense statistics), each from the same pruned weights: which layers need it (the paper's open question 4)."""

    method: str = "mp"  # the pruner whose output is recalibrated
    sparsity: float = 0.8  # the sparsity it prunes to
    batches: List[int] = field(default_factory=lambda: [1, 5, 10, 20, 50, 100])  # calibration batches to try (at --calib-batch-size)
    batch_sizes: List[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # calibration batch sizes to try (at --calib-batches)
    layers: List[str] = field(
        default_factory=list
    )  # which BN layers need REFLOW instead of the grids: first (the first k only), last (the last k only), each (one layer at a time), at --calib-batches x --calib-batch-size
    depths: List[int] = field(default_factory=list)  # the k of --layers first/last (default: every k from 1 to the number of BN layers)

    def cells(self, calib_batches: int, calib_batch_size: int) -> List[Tuple[int, int]]:
        """(batches, batch size) of every REFLOW to run, each once, the batches grid first (none with --layers)."""
        if self.layers:
            return []
        grid = [(b, calib_batch_size) for b in self.batches] + [(calib_batches, size) for size in self.batch_sizes]
        return list(dict.fromkeys(grid))

    def layer_cells(self, num_layers: int) -> List[Tuple[str, int]]:
        """(subset, k) of every layer-subset REFLOW for a network with ``num_layers`` BN layers: ``first``/``last`` k
        for each k of --depths (capped at the depth), ``each`` the k-th layer alone."""
        depths = sorted({min(k, num_layers) for k in self.depths}) if self.depths else list(range(1, num_layers + 1))
        cells: List[Tuple[str, int]] = []
        for subset in LAYER_SUBSETS:
            if subset in self.layers:
                cells += [(subset, k) for k in (range(1, num_layers + 1) if subset == "each" else depths)]
        return cells

    def narrowing(self) -> "SweepNarrowing":
        return SweepNarrowing("ablate-reflow", methods=[self.method], sparsities=[self.sparsity], own_flags={"methods": "--method", "sparsities": "--sparsity"})

    def validate(self) -> "ReflowAblationSpec":
        self.sparsity = check_sparsity(self.sparsity, "--sparsity")
        if self.layers:
            _unique(self.layers, "--layers")
        for subset in self.layers:
            _require(subset in LAYER_SUBSETS, f"--layers takes {', '.join(LAYER_SUBSETS)} (comma-separated), got {subset!r}")
        for value in self.depths:
            _positive_int(value, "--depths")
        _require(not self.depths or bool({"first", "last"} & set(self.layers)), "--depths sets the k of --layers first/last: give --layers first,last too")
        _unique(self.batches, "--batches")
        _unique(self.batch_sizes, "--batch-sizes")
        for value in self.batches:
            _positive_int(value, "--batches")
        for value in self.batch_sizes:
            _positive_int(value, "--batch-sizes")
        return self


TUNE_CRITERIA = ("pruned", "reflow")


@dataclass
class TuneSpec:
    """The fair-settings search (``reflowbench tune``): every cell of a Hessian pruner's grid (its ``TUNING_GRID``, or
    ``grid``) prunes at each of ``at_sparsities`` for each of --seeds; each is scored by the cross-entropy on the
    held-out training subset (--diag-images images, never the test split) right after pruning and after REFLOW."""

    method: str = "woodfisher"  # the Hessian pruner to tune
    at_sparsities: List[float] = field(default_factory=lambda: [0.7, 0.9])  # sparsities each cell is scored at
    criterion: str = "pruned"  # which held-out loss picks the cell: pruned (right after pruning) or reflow (after REFLOW)
    grid: Optional[str] = None  # JSON file {"axis": [{option: value, ...}, ...], ...} replacing the pruner's grid
    report_only: bool = False  # write the table and the config from the cells already scored (a partial search says so), score nothing
    first_pass_keep: int = 0  # 0: every cell at every sparsity; K > 0: every cell at the first --at-sparsities value, then only the K best there at the others (the table names the cells cut)

    def narrowing(self) -> "SweepNarrowing":
        return SweepNarrowing(
            "tune", methods=[self.method], sparsities=list(self.at_sparsities), own_flags={"methods": "--method", "sparsities": "--at-sparsities"}
        )

    def validate(self) -> "TuneSpec":
        self.at_sparsities = [check_sparsity(sparsity, "--at-sparsities") for sparsity in self.at_sparsities]
        _unique(self.at_sparsities, "--at-sparsities")
        _require(self.first_pass_keep >= 0, f"--first-pass-keep must be an integer >= 0 (0: no first pass), got {self.first_pass_keep}")
        _require(self.criterion in TUNE_CRITERIA, f"--criterion must be one of {TUNE_CRITERIA}, got {self.criterion!r}")
        return self


@dataclass
class PruneSpec:
    """One pruning (``reflowbench prune``): one method at one sparsity and seed, the weights and the run record saved."""

    method: str = "mp"  # pruner name (see `reflowbench list`)
    sparsity: Optional[float] = None  # fraction of target weights to remove, in [0, 1) (required, unless --pattern N:M fixes it)
    seed: int = 0  # selects the calibration, Fisher and held-out images
    reflow: bool = True  # save the REFLOW-recalibrated weights (--no-reflow: the weights right after pruning, without BN recalibration)
    save: Optional[str] = None  # write the pruned state_dict here
    record: Optional[str] = None  # write the run record (JSON) here

    def narrowing(self) -> "SweepNarrowing":
        return SweepNarrowing(
            "prune",
            methods=[self.method],
            sparsities=None if self.sparsity is None else [self.sparsity],
            seeds=[self.seed],
            own_flags={"methods": "--method", "sparsities": "--sparsity", "seeds": "--seed"},
        )

    def validate(self) -> "PruneSpec":
        """Check the values given (a missing --sparsity is checked once the pattern is known: :meth:`resolve_sparsity`)."""
        if self.sparsity is not None:
            self.sparsity = check_sparsity(self.sparsity, "--sparsity")
        _require(0 <= self.seed <= MAX_SEED, f"seeds must be in [0, {MAX_SEED}], got {self.seed} in --seed")
        return self


@dataclass
class SpeedSpec:
    """Inference speed of a pruned model against its dense one (``reflowbench speed``), measured, not counted."""

    pruned: List[str] = field(
        default_factory=list
    )  # state_dicts of pruned models (`prune --save`) of the --model; each is measured beside the dense --checkpoint
    batch_sizes: List[int] = field(default_factory=lambda: [1, 32, 256])  # images per forward pass
    min_run_time: float = 2.0  # seconds of timed forward passes per model and batch size (torch.utils.benchmark's blocked_autorange)
    save: Optional[str] = None  # also write the table (markdown) here
    semi_structured: bool = False  # CUDA only: every model in float16, and each pruned one also with its 2:4 linear and 1x1 conv weights on PyTorch's semi-structured sparse kernels

    def validate(self) -> "SpeedSpec":
        _unique(self.batch_sizes, "--batch-sizes")
        for size in self.batch_sizes:
            _positive_int(size, "--batch-sizes")
        _require(math.isfinite(self.min_run_time) and self.min_run_time > 0, f"--min-run-time must be a positive number of seconds, got {self.min_run_time}")
        return self


def resolve_prune_sparsity(prune: "PruneSpec", spec: "SweepSettings") -> float:
    """``prune``'s sparsity: --sparsity, else the one an N:M --pattern fixes; else a :class:`ConfigError` asking for it."""
    if prune.sparsity is None:
        fixed = spec.targets.sparsity_pattern().sparsity()
        _require(fixed is not None, "prune needs --sparsity: the fraction of target weights to remove, e.g. --sparsity 0.9 for 90% (or an N:M --pattern)")
        prune.sparsity = fixed
    return prune.sparsity


@dataclass(frozen=True)
class GateSpec:
    """What ``reflowbench compare`` judges: ``method`` in the candidate folder against ``against`` in the baseline's."""

    candidate: str  # the --out folder of the runs to check
    baseline: str  # the --out folder of the baseline runs
    method: str  # the method (or report label) to check
    against: Optional[str] = None  # the baseline's method or label (None: ``method``)
    tolerance: float = 1.0  # points of top-1 a cell may drop beyond the baseline's seed spread
    allow_missing: bool = False  # report the baseline's cells the candidate lacks without failing on them
    skip_unreadable: bool = False  # leave unreadable run files out (each named) instead of stopping


EXECUTORS = ("local", "submitit")
SUBMITIT_CLUSTERS = ("auto", "slurm", "local", "debug")
JOB_UNITS = ("seed", "run", "sweep")


@dataclass
class ExecutorSpec:
    """Where the runs of ``reflowbench run`` execute: in this process (local), or as jobs of submitit (a Slurm job
    array, or local subprocesses where there is no Slurm). Jobs write each run's JSON atomically into --out and claim it
    while they run, so a re-submission skips finished runs and re-runs only those whose job died."""

    executor: str = "local"  # local (in this process) or submitit (one job per --job-unit: a Slurm job array, or local subprocesses)
    submitit_cluster: str = "auto"  # auto (Slurm where sbatch is found, else local subprocesses), slurm, local, debug (in this process)
    submitit_folder: str = ""  # submitit's job scripts, pickles and logs (default: OUT/submitit/<job id>)
    job_unit: str = "seed"  # seed: one job per method and seed (its sparsities share the dense Fisher); run: one job per run; sweep: one job per sweep (a suite: per job of the suite)
    ranks_per_job: int = 1  # processes per job (Slurm tasks), one per GPU: > 1 shards the Hessian pruners' Fisher across them with torch.distributed
    slurm_partition: str = ""  # Slurm partition (empty: the cluster's default)
    slurm_gpus: int = 0  # GPUs per job
    slurm_cpus: int = 4  # CPU cores per job
    slurm_mem_gb: int = 16  # host memory per job, GB
    slurm_time_min: int = 120  # wall-time limit per job, minutes
    slurm_array_parallelism: int = 64  # jobs of the array running at once at most
    wait: bool = True  # wait for every job, then write results.csv and the report (--no-wait: print the job ids and return)

    def validate(self) -> None:
        for name, allowed in (("executor", EXECUTORS), ("submitit_cluster", SUBMITIT_CLUSTERS), ("job_unit", JOB_UNITS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("slurm_cpus", "slurm_mem_gb", "slurm_time_min", "slurm_array_parallelism", "ranks_per_job"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.slurm_gpus < 0:
            raise ConfigError(f"--slurm-gpus must be >= 0, got {self.slurm_gpus}")
        if self.ranks_per_job > 1 and self.slurm_gpus not in (0, self.ranks_per_job):
            raise ConfigError(
                f"--ranks-per-job {self.ranks_per_job} runs one rank per GPU: give --slurm-gpus {self.ranks_per_job} (or 0 for CPU ranks), not {self.slurm_gpus}"
            )
        if self.ranks_per_job > 1 and self.executor != "submitit":
            raise ConfigError("--ranks-per-job needs --executor submitit (in this process, launch the ranks with torchrun instead)")


@dataclass
class TrainSpec:
    """Recipe of the shared checkpoints (``reflowbench train``): SGD Nesterov 0.9, wd 5e-4, one-cycle (15% warm-up, linear decay)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.15
    seed: int = 0
    augment: bool = True

    def validate(self) -> "TrainSpec":
        """Raise :class:`ConfigError` for a recipe that cannot train; return it."""
        problems = [
            f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}"
            for name, ok, rule in (
                ("epochs", self.epochs >= 1, ">= 1"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
                ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
                ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
                ("seed", 0 <= self.seed < 2**31, "in [0, 2^31)"),
            )
            if not ok
        ]
        if problems:
            raise ConfigError("; ".join(problems))
        return self


@dataclass
class SuiteCommandSpec:
    """Settings of ``reflowbench suite`` (the jobs set everything else)."""

    out: str = "reflowbench-suite"  # results folder: one sub-folder per job folder, and <suite>-suite/ with the combined report
    models_dir: str = "../shared/models"  # where the suite's checkpoints are ({models} in the suite)
    data: Optional[str] = None  # the dataset path for every job (a CIFAR-10 .tar.gz, ImageFolder tree or torchvision root)
    download: bool = False  # let torchvision download CIFAR-10 into --data
    only: List[str] = field(default_factory=list)  # run only the jobs of these folders (default: all)
    jobs: List[int] = field(
        default_factory=list
    )  # run only the jobs with these numbers, in the order given (`--dry-run` lists them as "job N"; default: all, in the suite's order)
    seeds: List[int] = field(default_factory=list)  # override the seeds of the main sweeps (default: the suite's; ablation jobs keep theirs)
    sparsities: List[float] = field(default_factory=list)  # override the sparsities of the main sweeps (default: the suite's)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    dry_run: bool = False  # list every job with its finished and missing runs and its cost plan (estimated peak memory and wall time), run nothing
    cost_plan: bool = True  # with --dry-run: measure each model once on the device and print each job's estimated peak memory and wall time
    plan_memory_gb: float = 0.0  # with --dry-run: judge each job against a device of this many GiB (e.g. 80 for an 80 GB GPU; 0: this machine's device); the times stay this machine's
    memory_budget_gb: float = (
        0.0  # every job's --memory-budget-gb (0: each job's own): e.g. 16 on a 24 GB machine, so the streaming pruners pick more layer groups
    )
    random_weights: bool = (
        False  # every job's torchvision --weights left out: random initial weights (a check or a cost plan without the download; not the paper's results)
    )
    report_only: bool = False  # write the combined report from the runs already finished, run nothing
    skip_unreadable: bool = (
        False  # leave files under a job's runs/ that are not readable run records out of the combined report (each named); without it they stop it
    )
    readme: Optional[str] = (
        None  # also replace the block between <!-- reflowbench-summary:NAME:start --> and <!-- ...:end --> in this markdown file with the report's summary.md
    )
    progress: bool = True


@dataclass
class SweepSettings:
    """Every setting of one sweep, one section per concern (each a flag group and a ``--config`` section)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    reflow: ReflowSpec = field(default_factory=ReflowSpec)
    corrections: CorrectionSpec = field(default_factory=CorrectionSpec)
    targets: TargetSpec = field(default_factory=TargetSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # pruner name -> option overrides


SECTIONS = ("model", "data", "reflow", "corrections", "targets", "sweep", "objective")
SECTION_TYPES: Dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "reflow": ReflowSpec,
    "corrections": CorrectionSpec,
    "targets": TargetSpec,
    "sweep": SweepSpec,
    "objective": ObjectiveSpec,
}

PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {  # section -> settings, as in a --config file
    # The embedded demo: a small BN CNN on scikit-learn's digits (1,347 training images, so REFLOW uses 8 x 64).
    "embedded": {
        "model": {"model": "smallcnn"},
        "data": {"dataset": "digits"},
        "reflow": {"calib_batches": 8, "calib_batch_size": 64, "diag_images": 256},
        "sweep": {"methods": ["mp"], "sparsities": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "seeds": [0, 1, 2]},
        # Fisher sizes that fit digits' 539-image Fisher share (the published N = 1000 or 500 x 16 do not)
        "method_options": {
            "woodfisher": {"num_grads": 256},
            "cbs": {"num_grads": 256},
            "mp-hessian": {"num_grads": 256},
            "chita": {"num_grads": 64, "minibatch": 8},
            "chita++": {"num_grads": 64, "minibatch": 8},
        },
    },
    # The paper's ImageNet comparison (pass --model, --weights and --data: an ImageFolder tree with train/ and val/),
    # sized for one 80 GB GPU: a pruner's working set may take 70 GiB; one seed (ImageNet is expensive); batches of 256.
    "imagenet": {
        "data": {"dataset": "imagenet", "eval_batch_size": 256, "workers": 8},
        "sweep": {"sparsities": [0.5, 0.6, 0.7, 0.8, 0.9], "seeds": [0], "memory_budget_gb": 70.0},
    },
    # The paper-style CIFAR-10 comparison (pass --model, --checkpoint and --data).
    "cifar10": {
        "data": {"dataset": "cifar10"},
        "sweep": {"sparsities": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "seeds": [0, 1, 2]},
    },
}
# Settings that say "this is not the embedded demo": when none is given and no --preset, the embedded preset applies.
MODEL_OR_DATA_FIELDS = (("model", "model"), ("model", "checkpoint"), ("model", "weights"), ("data", "dataset"), ("data", "data"))


def describe_preset(name: str) -> str:
    """One line listing every value preset ``name`` sets, e.g. ``cifar10 (dataset=cifar10, seeds=0,1,2, ...)``."""
    values = []
    for section_name, section in PRESETS[name].items():
        for key, value in section.items():
            if section_name == "method_options":  # as the flags that set them: woodfisher-num-grads=256
                values += [f"{key}-{option.replace('_', '-')}={v}" for option, v in value.items()]
                continue
            shown = ",".join(str(v) for v in value) if isinstance(value, list) else value
            values.append(f"{key}={shown}")
    return f"{name} ({', '.join(values)})"


def preset(name: Optional[str]) -> SweepSettings:
    """A fresh spec with preset ``name`` applied (``None``: the plain dataclass defaults)."""
    if name is None:
        return SweepSettings()
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return merge_into(SweepSettings(), PRESETS[name], f"preset {name}")


# ----------------------------------------------------------------------------- config files


def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(hint: Any) -> str:
    """How a type hint reads in an error message: ``an integer``, ``a list of a number``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin in (list, List):
        return f"a list of {type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(hint, str(hint))


def value_matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-like ``value`` fits type hint ``hint`` (ints count as floats, bools never as ints)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(value_matches(value, a) for a in typing.get_args(hint))
    if origin in (list, List):
        return isinstance(value, list) and all(value_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _set_checked(target: Any, key: str, value: Any, source: str) -> None:
    hint = _hints(type(target))[key]
    if not value_matches(value, hint):
        raise ConfigError(f"{source}: setting {key!r} must be {type_name(hint)}, got {value!r}")
    if hint is float or typing.get_args(hint) == (float, type(None)):
        value = None if value is None else float(value)
    setattr(target, key, value)


def merge_into(spec: SweepSettings, overrides: Any, source: str) -> SweepSettings:
    """Apply ``{section: {field: value}}`` (or flat ``{field: value}``) overrides to ``spec`` in place.

    A section holds only its own fields; every value is type-checked against the dataclass field.
    ``method_options`` is ``{pruner: {option: value}}`` (pruner options are checked by the pruner).
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f'{source}: settings must be a JSON object ({{"section": {{"field": value}}}}), got {type(overrides).__name__}')
    by_field = {f.name: section for section in SECTIONS for f in fields(getattr(spec, section))}
    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must be an object of settings, got {value!r}")
            section = getattr(spec, key)
            refuse_unknown(value, (f.name for f in fields(section)), f"{source}: section {key!r}")
            for name, inner in value.items():
                _set_checked(section, name, inner, source)
        elif key == "method_options":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f'{source}: method_options must be {{"pruner": {{"option": value}}}}, got {value!r}')
            for method, options in value.items():
                spec.method_options.setdefault(method, {}).update(options)
        elif key in by_field:
            _set_checked(getattr(spec, by_field[key]), key, value, source)
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}; known settings: {sorted(by_field)}, the sections {list(SECTIONS)} and method_options")
    return spec


def names_model_or_data(overrides: Dict[str, Any]) -> bool:
    """Whether nested or flat ``overrides`` set any of the model/data fields of MODEL_OR_DATA_FIELDS."""
    for section, name in MODEL_OR_DATA_FIELDS:
        if name in overrides or (isinstance(overrides.get(section), dict) and name in overrides[section]):
            return True
    return False


# ----------------------------------------------------------------------------- a sweep's settings in one trip


@dataclass(frozen=True)
class SettingsLayers:
    """The plain values a sweep's settings are built from, each layer over the one before:
    dataclass defaults < ``preset`` < ``file`` < ``flags``."""

    preset: Optional[str] = None  # a preset name, "none" (the plain defaults), or None: embedded when no layer names a model or data
    file: Any = None  # a --config file's settings ({section: {field: value}} or flat; None: no file)
    file_source: str = "--config"  # how messages name the file
    flags: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # section -> field -> value given on the command line
    method_flags: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # pruner -> option -> value given on the command line
    flags_source: str = "command-line flags"  # how messages name the flags layer


@dataclass
class BuiltSettings:
    """A sweep's settings and the preset they started from."""

    spec: "SweepSettings"
    preset: Optional[str]  # the preset applied (None: the plain defaults)
    preset_implied: bool  # no preset was asked for and none of the layers named a model or data: the embedded demo was chosen


@dataclass(frozen=True)
class SweepNarrowing:
    """What a command that runs part of a sweep fixes with its own flags (None: left as the layers set it)."""

    command: str  # the command, for messages
    methods: Optional[List[str]] = None
    sparsities: Optional[List[float]] = None
    seeds: Optional[List[int]] = None
    own_flags: Dict[str, str] = field(default_factory=dict)  # sweep field -> the command's flag that sets it (e.g. sparsities -> --sparsity)


def _implied_preset(layers: SettingsLayers) -> Tuple[Optional[str], bool]:
    """(preset name or None, implied): ``layers.preset`` when given ('none': no preset); else 'embedded' when neither
    the file nor the flags name a model or data, else none."""
    if layers.preset is not None:
        return (None if layers.preset == "none" else layers.preset), False
    named = isinstance(layers.file, dict) and names_model_or_data(layers.file)
    named = named or any(name in layers.flags.get(section, {}) for section, name in MODEL_OR_DATA_FIELDS)
    return (None, False) if named else ("embedded", True)


def build_settings(layers: SettingsLayers, narrowing: Optional[SweepNarrowing] = None) -> BuiltSettings:
    """The one place a sweep's settings are built: defaults < preset < file < flags, every layer type-checked by
    :func:`merge_into`, then ``narrowing`` (a one-method command's own flags; the sweep flags it replaces are refused).
    Range checks follow in the harness's planning step, before any model or data is loaded."""
    name, implied = _implied_preset(layers)
    spec = preset(name)
    if layers.file is not None:
        merge_into(spec, layers.file, layers.file_source)
    merge_into(spec, {**{k: v for k, v in layers.flags.items() if v}, "method_options": layers.method_flags}, layers.flags_source)
    _pattern_sparsities(spec, layers)
    if narrowing is not None:
        narrow_sweep(spec, narrowing, given=layers.flags.get("sweep", {}))
    _refuse_options_of_methods_not_run(spec, layers.method_flags, narrowing)
    return BuiltSettings(spec, name, implied)


def _pattern_sparsities(spec: "SweepSettings", layers: SettingsLayers) -> None:
    """An N:M pattern fixes the sparsity: the sweep's sparsities become 1 - N/M unless a file or a flag gave them (then
    validation checks they agree). A preset's sparsities give way."""
    pattern = SparsityPattern.parse(spec.targets.pattern) if spec.targets.pattern != UNSTRUCTURED else None
    if pattern is None or pattern.kind != "n:m":
        return
    file_sweep = layers.file.get("sweep", {}) if isinstance(layers.file, dict) else {}
    in_file = isinstance(layers.file, dict) and ("sparsities" in layers.file or (isinstance(file_sweep, dict) and "sparsities" in file_sweep))
    given = "sparsities" in layers.flags.get("sweep", {}) or in_file
    if not given:
        spec.sweep.sparsities = [pattern.sparsity()]


def _refuse_options_of_methods_not_run(spec: "SweepSettings", method_flags: Dict[str, Dict[str, Any]], narrowing: Optional[SweepNarrowing]) -> None:
    """A pruner's option given as a flag while that pruner is not run would change nothing: refused, naming the flag."""
    for method, options in method_flags.items():
        if options and method not in spec.sweep.methods:
            flag = f"--{method}-{sorted(options)[0].replace('_', '-')}"
            methods_flag = narrowing.own_flags.get("methods", "--methods") if narrowing is not None else "--methods"
            raise ConfigError(
                f"{flag} sets an option of {method}, which this command does not run ({methods_flag} {','.join(spec.sweep.methods)}): "
                f"add {method} to {methods_flag} or drop the flag"
            )


SUITE_FLAG_SECTIONS = ("sweep", "data")  # the sections whose flags `run --suite` passes on (those SuiteCommandSpec also has)


def suite_command_from_flags(flags: Dict[str, Dict[str, Any]], method_flags: Dict[str, Dict[str, Any]]) -> "SuiteCommandSpec":
    """``run --suite NAME``'s flags as the suite command's settings: the sweep and data flags that
    :class:`SuiteCommandSpec` also has; any other flag is refused (the suite's jobs set it)."""
    own = {f.name for f in fields(SuiteCommandSpec)}
    taken = {name: value for section in SUITE_FLAG_SECTIONS for name, value in flags.get(section, {}).items() if name in own}
    refused = sorted(f"--{name.replace('_', '-')}" for values in flags.values() for name in values if name not in taken)
    refused += sorted(f"--{method}-{option.replace('_', '-')}" for method, options in method_flags.items() for option in options)
    if refused:
        usable = sorted(
            f"--{name.replace('_', '-')}" for section in SUITE_FLAG_SECTIONS for name in own if name in {f.name for f in fields(SECTION_TYPES[section])}
        )
        raise ConfigError(f"--suite runs the suite's own models, methods and settings; it takes {', '.join(usable)}, not {', '.join(refused)}")
    return SuiteCommandSpec(**taken)


def narrow_sweep(spec: "SweepSettings", narrowing: SweepNarrowing, given: Optional[Dict[str, Any]] = None) -> "SweepSettings":
    """The one place a sweep is narrowed to a command's (or a job's) methods, sparsities and seeds, in place.
    A sweep flag in ``given`` that the narrowing replaces is refused, naming the command's own flag."""
    for name in ("methods", "sparsities", "seeds"):
        value = getattr(narrowing, name)
        if value is None:
            continue
        own = narrowing.own_flags.get(name, f"--{name}")
        if name in (given or {}):
            raise ConfigError(f"{narrowing.command} sets the sweep's {name} with {own}: use {own} instead of --{name}")
        setattr(spec.sweep, name, list(value))
    return spec


# ----------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _unique(values: List[Any], flag: str) -> None:
    _require(len(values) > 0, f"{flag} is empty: give at least one value")
    seen = set()
    for value in values:
        _require(value not in seen, f"{flag} lists {value!r} twice: each value runs once, remove the duplicate")
        seen.add(value)


SPARSITY_DIGITS = 9  # a sparsity is rounded to this many decimals before it names a run (0.7000000000000001 is 0.7)


def check_sparsity(value: float, flag: str = "--sparsities") -> float:
    """A sparsity is a finite fraction of target weights in [0, 1); returns it normalised: a float rounded to
    SPARSITY_DIGITS decimals, so every spelling of one value (``0.7``, ``0.70``, ``7e-1``, ``1 - 0.3``, an integer ``0``)
    names the same run."""
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value < 1.0,
        f"sparsity must be in [0, 1) (the fraction of target weights set to zero), got {value!r} in {flag}; e.g. 0.9 for 90%",
    )
    return float(round(float(value), SPARSITY_DIGITS))


def _positive_int(value: int, flag: str, minimum: int = 1) -> None:
    _require(value >= minimum, f"{flag} must be an integer >= {minimum}, got {value}")


def validate_spec(spec: SweepSettings) -> SweepSettings:
    """Check every value of ``spec`` that needs no registry (ranges, duplicates, enums); return it.

    Called once, when the settings are built; inner code trusts a validated spec.
    """
    sweep, reflow, data, model = spec.sweep, spec.reflow, spec.data, spec.model
    _unique(sweep.methods, "--methods")
    sweep.sparsities = [check_sparsity(sparsity) for sparsity in sweep.sparsities]
    _unique(sweep.sparsities, "--sparsities")
    _unique(sweep.seeds, "--seeds")
    for seed in sweep.seeds:
        _require(0 <= seed <= MAX_SEED, f"seeds must be in [0, {MAX_SEED}], got {seed} in --seeds")
    if sweep.report_sparsity is not None:
        sweep.report_sparsity = check_sparsity(sweep.report_sparsity, "--report-sparsity")
    _require(sweep.threads >= 0, f"--threads must be >= 0 (0 keeps torch's default), got {sweep.threads}")
    _require(
        math.isfinite(sweep.memory_budget_gb) and sweep.memory_budget_gb > 0,
        f"--memory-budget-gb must be a positive number of GiB, got {sweep.memory_budget_gb}",
    )
    _require(bool(sweep.out.strip()), "--out is empty: name the results folder")
    _positive_int(reflow.calib_batches, "--calib-batches")
    _positive_int(reflow.calib_batch_size, "--calib-batch-size")
    _positive_int(reflow.diag_images, "--diag-images")
    _require(reflow.reflow_mode in REFLOW_MODES, f"--reflow-mode must be one of {REFLOW_MODES}, got {reflow.reflow_mode!r}")
    _require(
        math.isfinite(reflow.reflow_momentum) and 0.0 < reflow.reflow_momentum <= 1.0,
        f"--reflow-momentum must be in (0, 1] (the EMA weight of each new batch), got {reflow.reflow_momentum}",
    )
    spec.corrections.validate()
    pattern = spec.targets.sparsity_pattern()
    if pattern.kind == "n:m":
        fixed = pattern.sparsity()
        wrong = [s for s in sweep.sparsities if abs(s - fixed) > 1e-9]
        _require(
            not wrong,
            f"--pattern {pattern} fixes the sparsity at {fixed:g}, but --sparsities has {','.join(f'{s:g}' for s in wrong)}: omit --sparsities or give {fixed:g}",
        )
    _positive_int(data.eval_batch_size, "--eval-batch-size")
    _positive_int(data.workers, "--workers", minimum=0)
    _require(model.shortcut in SHORTCUTS, f"--shortcut must be one of {SHORTCUTS}, got {model.shortcut!r}")
    if model.num_classes is not None:
        _positive_int(model.num_classes, "--num-classes", minimum=2)
    objective = spec.objective
    _positive_int(objective.objective_grads, "--objective-grads", minimum=0)
    _positive_int(objective.objective_minibatch, "--objective-minibatch")
    _require(
        math.isfinite(objective.objective_damp) and objective.objective_damp > 0,
        f"--objective-damp must be a positive number (lam of the reference Fisher), got {objective.objective_damp}",
    )
    return spec


def spec_summary(spec: SweepSettings) -> Tuple[str, ...]:
    """Short human lines describing what a sweep will run (printed before any work)."""
    sweep, reflow = spec.sweep, spec.reflow
    return (
        f"model {spec.model.model}" + (f" from {spec.model.checkpoint}" if spec.model.checkpoint else ""),
        f"methods {','.join(sweep.methods)}; sparsities {','.join(f'{s:g}' for s in sweep.sparsities)}; seeds {','.join(map(str, sweep.seeds))}",
        f"REFLOW {reflow.calib_batches} x {reflow.calib_batch_size} images ({reflow.reflow_mode}); diagnostics on {reflow.diag_images} held-out images",
    )
