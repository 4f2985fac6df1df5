"""The cost plan a suite's ``--dry-run`` prints before anything runs: per job, the estimated peak memory of one run
(on the device the runs use, and on the host) and the wall time of the runs still to do, from the pruners' own memory
formulas (:meth:`~reflowbench.pruners.base.Pruner.working_set`) and one short measurement on this machine: a forward
and a forward-backward pass of a small batch of the model (random weights: the cost does not depend on them).

What it counts: the process as it is now (Python, torch, the data held in memory), the model three times (the dense
network, the pruned copy, a correction's copy), the largest pruner working set of the job, and a batch of activations;
the forward passes of evaluation, diagnostics, REFLOW and the other corrections; the pruner's own forward and
per-sample backward passes (:meth:`~reflowbench.pruners.base.Pruner.forward_passes`). What it does not: the linear
algebra of the solvers (an IHT, a CBS search or a block factorisation can dominate on large layers) and the data
loading of an ImageFolder tree. It is a plan, not a measurement: the suite's records give the measured peaks and times.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from reflowbench.config import SweepSettings
from reflowbench.corrections import CORRECTIONS, make_correction
from reflowbench.hessian.gradients import image_activation_bytes
from reflowbench.hessian.memory import gib
from reflowbench.models import BUILTIN_MODELS, build_model
from reflowbench.pruners import Pruner, select_targets
from reflowbench.pruners.base import WorkingSet
from reflowbench.reflow.staged import CACHE_BYTES as STAGED_CACHE_BYTES
from reflowbench.utils.cost import current_rss_mb, format_duration, peak_rss_mb, reset_peak_rss

MODEL_COPIES = 3  # the dense network, the pruned copy, one correction's copy
PER_SAMPLE_BACKWARD = 3.0  # a per-sample gradient costs about this many batched forward-backward passes per image (hooks/vmap)
CALIBRATION_BATCH = {"small": 64, "large": 16}  # images per calibration pass: 32 x 32 and smaller, 224 x 224
IMAGE_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}  # every other dataset: 3 x 224 x 224
TEST_IMAGES: Dict[str, int] = {"digits": 450, "cifar10": 10000, "imagenet": 50000}
CLASSES = {"digits": 10, "cifar10": 10, "imagenet": 1000}
IN_MEMORY_BYTES = {"digits": 1797 * 64 * 4, "cifar10": 60000 * 3072}  # the splits held in memory (ImageFolder trees stream)


@dataclass(frozen=True)
class Calibration:
    """One model measured on this device: seconds per image of a forward pass (eval mode, no gradients) and of a
    forward-backward pass, the bytes one image keeps for a backward pass, and the model's own bytes."""

    forward_s: float
    backward_s: float
    activation_bytes: int
    model_bytes: int
    eval_bytes: int = 0  # the peak memory one image of a no-gradient forward batch adds (measured: the allocator's peak)


@dataclass(frozen=True)
class JobCost:
    """One job's plan: its largest peak (bytes, and which method sets it), the budget it is compared with, the seconds of
    one run of each method and of the runs still to do, and, when it does not fit, the settings that lower it."""

    peak_bytes: int
    peak_method: str
    host_bytes: int
    budget_bytes: int
    where: str
    run_seconds: Dict[str, float]
    todo_seconds: float
    fits: bool
    knobs: str
    over_working_budget: Tuple[Tuple[str, int], ...] = ()  # (pruner, working-set bytes) of those over --memory-budget-gb
    working_budget_bytes: int = 0  # --memory-budget-gb in bytes

    def verdict(self) -> str:
        """ "fits", or which limit the job crosses (the device's memory, or --memory-budget-gb for a pruner's working
        set) and the settings that bring it under."""
        if self.fits:
            return "fits"
        if self.peak_bytes > self.budget_bytes:
            return f"DOES NOT FIT: lower it with {self.knobs}"
        over = ", ".join(f"{name}'s working set {gib(size):.1f} GiB" for name, size in self.over_working_budget)
        return f"fits, but {over} is over --memory-budget-gb {gib(self.working_budget_bytes):g}: raise it, or lower the working set with {self.knobs}"

    def line(self) -> str:
        per_run = ", ".join(f"{method} {format_duration(seconds)}" for method, seconds in self.run_seconds.items())
        verdict = self.verdict()
        return (
            f"    cost plan: peak about {gib(self.peak_bytes):.1f} GiB on {self.where} ({self.peak_method}; budget {gib(self.budget_bytes):.0f} GiB, {verdict}), "
            f"host about {gib(self.host_bytes):.1f} GiB; per run {per_run}; the runs to do about {format_duration(self.todo_seconds)}"
        )


def image_shape(spec: SweepSettings) -> Tuple[int, ...]:
    return IMAGE_SHAPES.get(spec.data.dataset or "", (3, 224, 224))


def _tree_count(spec: SweepSettings, split: str, classes: bool) -> Optional[int]:
    """Files (or class folders) under ``<data>/<split>`` of an ImageFolder tree, None when there is no such folder."""
    root = Path(spec.data.data or "") / split
    if not spec.data.data or not root.is_dir():
        return None
    if classes:
        return sum(1 for entry in root.iterdir() if entry.is_dir())
    return sum(len(files) for _, _, files in os.walk(root))


def test_images(spec: SweepSettings) -> int:
    """The test split's size: digits' and CIFAR-10's, an ImageFolder tree's val/ files, else ImageNet's 50,000."""
    if spec.data.dataset in ("digits", "cifar10"):
        return TEST_IMAGES[spec.data.dataset]
    return _tree_count(spec, "val", False) or TEST_IMAGES["imagenet"]


def num_classes(spec: SweepSettings) -> int:
    return spec.model.num_classes or CLASSES.get(spec.data.dataset or "") or _tree_count(spec, "train", True) or CLASSES["imagenet"]


def calibration_model(spec: SweepSettings) -> nn.Module:
    """The job's architecture with random weights (no checkpoint, no download)."""
    shortcut = spec.model.shortcut if spec.model.shortcut != "auto" else "A"
    return build_model(spec.model.model, num_classes(spec), None, shortcut if spec.model.model in BUILTIN_MODELS else "auto", None)


def calibrate(model: nn.Module, shape: Tuple[int, ...], device: torch.device, batch: Optional[int] = None) -> Calibration:
    """Time one forward (after a warm-up) and one forward-backward pass of ``batch`` random images of ``shape``
    (default: 64 small images, 16 of 224 x 224)."""
    batch = batch or CALIBRATION_BATCH["small" if shape[-1] <= 64 else "large"]
    model = model.to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    with torch.no_grad():
        before = _peak_reset(device)
        model(x)  # the first pass: its peak over the memory before it is what a batch adds (the second is timed)
        _sync(device)
        eval_bytes = max(0, _peak(device) - before) // batch
        start = time.perf_counter()
        model(x)
        _sync(device)
        forward = (time.perf_counter() - start) / batch
    start = time.perf_counter()
    model(x).float().logsumexp(dim=1).sum().backward()
    _sync(device)
    backward = (time.perf_counter() - start) / batch
    model.zero_grad(set_to_none=True)
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return Calibration(forward, backward, image_activation_bytes(model, x), size, eval_bytes)


def _peak_reset(device: torch.device) -> int:
    """Reset the peak-memory counter of ``device`` (CUDA's allocator, the process's RSS on a CPU); the current bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_peak_rss()
    return int(current_rss_mb() * 2**20)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else int(peak_rss_mb() * 2**20)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_budget(device: torch.device) -> Tuple[int, str]:
    """(bytes, where): a GPU's memory, else this machine's (a pruner's own working set is also held to --memory-budget-gb)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this CPU's memory"
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 2**40, "this CPU (memory unknown)"


def correction_passes(spec: SweepSettings, model: nn.Module, targets, calibration: Calibration) -> float:
    """Whole forward passes over the calibration images that the run's corrections make together (each correction's
    own count: REFLOW one; the layer-by-layer corrections one dense pass, then one pass in stages when every calibration
    image's activations fit the stages' cache (judged by an evaluation image's measured peak), else a pass per layer
    cut short after it)."""
    layers = list(dict.fromkeys(t.module_name for t in targets))
    images = spec.reflow.calib_batches * spec.reflow.calib_batch_size
    staged = images * calibration.eval_bytes <= STAGED_CACHE_BYTES
    return sum(make_correction(name, spec.corrections).calibration_passes(model, layers, staged) for name in spec.corrections.applied())


def staged_cache_bytes(spec: SweepSettings, calibration: Calibration) -> int:
    """What a layer-by-layer correction's stages keep for every calibration image (about an evaluation image's
    measured peak each), up to the stages' cap; 0 without such a correction."""
    if not any(CORRECTIONS[name].layer_by_layer for name in spec.corrections.applied() if name in CORRECTIONS):
        return 0
    images = spec.reflow.calib_batches * spec.reflow.calib_batch_size
    return min(images * calibration.eval_bytes, STAGED_CACHE_BYTES)


def run_seconds(pruner: Pruner, spec: SweepSettings, targets, calibration: Calibration, passes: float = 1.0) -> float:
    """Forward and backward images of one run of ``pruner`` at the calibrated seconds per image (``passes``: the
    corrections' calibration passes, :func:`correction_passes`)."""
    stages = 1 + len(spec.corrections.applied())  # the pruned network and each correction are evaluated
    reflow = spec.reflow
    calibration_images = reflow.calib_batches * reflow.calib_batch_size
    forward = stages * (test_images(spec) + reflow.diag_images) + calibration_images * passes
    pruner_forward, pruner_backward = pruner.forward_passes(targets)
    return (forward + pruner_forward) * calibration.forward_s + pruner_backward * PER_SAMPLE_BACKWARD * calibration.backward_s


def job_cost(
    spec: SweepSettings,
    pruners: List[Pruner],
    todo: Dict[str, int],
    calibration: Calibration,
    device: torch.device,
    plan_memory_gb: float = 0.0,
    model: Optional[nn.Module] = None,
    baseline_bytes: Optional[int] = None,
) -> JobCost:
    """The plan of one job (``todo``: method -> runs still to do; ``plan_memory_gb``: judge it against a device of that
    many GiB, the work all on it, instead of this machine's device; ``model``: the architecture already built for the
    calibration, else built here; ``baseline_bytes``: what a run's process holds before its model (default: this
    process's resident memory now))."""
    model = model if model is not None else calibration_model(spec)
    targets = select_targets(model, spec.targets.policy())
    budget_bytes = int(spec.sweep.memory_budget_gb * 2**30)
    working: Dict[str, WorkingSet] = {p.name: p.working_set(targets, calibration.activation_bytes, budget_bytes) for p in pruners}
    largest = max(working, key=lambda name: working[name].bytes)
    activations = spec.data.eval_batch_size * calibration.eval_bytes  # an evaluation batch's peak over what the process holds
    cache = staged_cache_bytes(spec, calibration)  # after the pruning, whose working set is gone by then
    resident = MODEL_COPIES * calibration.model_bytes + max(working[largest].bytes, cache) + activations
    baseline = baseline_bytes if baseline_bytes is not None else int(current_rss_mb() * 2**20)
    data = IN_MEMORY_BYTES.get(spec.data.dataset or "", 0)
    budget, where = device_budget(device)
    if plan_memory_gb > 0:
        budget, where = int(plan_memory_gb * 2**30), f"a {plan_memory_gb:g} GiB device (timings from this machine)"
    if device.type == "cuda" or plan_memory_gb > 0:
        peak, host = resident, baseline + data + calibration.model_bytes
    else:
        peak = host = baseline + data + resident
    passes = correction_passes(spec, model, targets, calibration)
    seconds = {p.name: run_seconds(p, spec, targets, calibration, passes) for p in pruners}
    over_budget = [name for name, w in working.items() if w.bytes > budget_bytes]
    fits = peak <= budget and not over_budget
    knobs = "; ".join(f"{name}: {working[name].knobs}" for name in (over_budget or [largest]) if working[name].knobs) or "a machine with more memory"
    todo_seconds = sum(seconds[m] * n for m, n in todo.items())
    over = tuple((name, working[name].bytes) for name in over_budget)
    return JobCost(peak, f"{largest}: {working[largest].what}", host, budget, where, seconds, todo_seconds, fits, knobs, over, budget_bytes)


class CostPlanner:
    """Calibrates each architecture once per suite (on the suite's device) and plans each job."""

    def __init__(self, device: torch.device, plan_memory_gb: float = 0.0) -> None:
        self.device = device
        self.plan_memory_gb = plan_memory_gb
        self.baseline_bytes = int(current_rss_mb() * 2**20)  # before any model is built: the planner keeps each one it calibrates
        self._calibrations: Dict[Tuple[str, Tuple[int, ...]], Tuple[Calibration, nn.Module]] = {}  # built and measured once per architecture

    def plan(self, spec: SweepSettings, pruners: List[Pruner], todo: Dict[str, int]) -> JobCost:
        shape = image_shape(spec)
        key = (spec.model.model, shape)
        if key not in self._calibrations:
            model = calibration_model(spec)
            self._calibrations[key] = (calibrate(model, shape, self.device), model)
        calibration, model = self._calibrations[key]
        return job_cost(spec, pruners, todo, calibration, self.device, self.plan_memory_gb, model, self.baseline_bytes)
