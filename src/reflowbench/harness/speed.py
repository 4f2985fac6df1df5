"""``reflowbench speed``: inference latency and throughput of pruned models against the dense one, measured on this
machine with ``torch.utils.benchmark`` (warm-up, then ``blocked_autorange``: the median of blocks of timed forward passes
and its interquartile range), beside the parameter and FLOP counts (``torch.utils.flop_counter``, PyTorch's own counter:
the dense FLOPs of the shapes run, so an unstructured or N:M model counts as many FLOPs as the dense one, and only a
genuinely smaller network counts fewer).

Why ``torch.utils.benchmark`` rather than a hand-timed loop: it handles warm-up, thread settings and the block sizing
that makes sub-millisecond timings stable, and reports spread; pytest-benchmark stays the tool of the suite's own
benchmarks (``bench/``), whose baselines CI compares.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from reflowbench.config import SpeedSpec, SweepSettings
from reflowbench.errors import CheckpointError, ConfigError
from reflowbench.harness.plan import check_output_file
from reflowbench.models import BUILTIN_MODELS, build_model, default_dataset_for
from reflowbench.models.counts import counts
from reflowbench.utils.env import resolve_device
from reflowbench.utils.io import atomic_write_text
from reflowbench.utils.linalg import relative_output_error


def _import_benchmark() -> Any:
    """``torch.utils.benchmark``, imported without the "No CUDA runtime is found" warning it logs on CPU-only machines."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as module
    finally:
        logger.setLevel(level)
    return module


benchmark = _import_benchmark()
INPUT_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "imagenet": (3, 224, 224), "imagefolder": (3, 224, 224)}


WARM_UP_SECONDS = 1.0  # untimed forward passes before each timing (at least 3): the first model timed otherwise pays the machine's warm-up


def latency(model: nn.Module, shape: Tuple[int, ...], batch: int, device: torch.device, min_run_time: float) -> Dict[str, float]:
    """Median and interquartile range of one forward pass of ``batch`` images (milliseconds), and images per second."""
    x = torch.randn(batch, *shape, device=device, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        started, passes = time.perf_counter(), 0
        while passes < 3 or time.perf_counter() - started < WARM_UP_SECONDS:  # warm-up: allocator, kernels chosen, clocks up
            model(x)
            passes += 1
        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
        measured = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_ms": measured.median * 1e3, "iqr_ms": measured.iqr * 1e3, "images_per_s": batch / measured.median}


def _load(spec: SweepSettings, path: str) -> nn.Module:
    try:
        model = build_model(spec.model.model, spec.model.num_classes or 10, Path(path), spec.model.shortcut)
    except CheckpointError as exc:
        one_line = " ".join(str(exc).split())
        raise CheckpointError(f"{one_line} (--pruned takes the weights `reflowbench prune --save` wrote for this --model)") from None
    return model.eval()


def _default_checkpoint(spec: SweepSettings, device: torch.device, log: Callable[[str], None]) -> Optional[Path]:
    """The embedded CNNs' dense weights (shipped, or trained once and cached); any other built-in model needs --checkpoint."""
    from reflowbench.harness.process import load_spec_data
    from reflowbench.harness.run import default_checkpoint

    name = spec.model.model
    if name.startswith("smallcnn") and (spec.data.dataset or "digits") == "digits":
        return default_checkpoint(spec, load_spec_data(spec, "digits"), device, log)
    if name in BUILTIN_MODELS:
        raise CheckpointError(f"{name} needs its dense weights: pass --checkpoint PATH (the weights the pruned models were pruned from)")
    return None


def machine_load() -> str:
    """The 1-minute load average against the CPU count: timings on a busy machine are not idle-machine figures."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    return f"load average {load:.2f} on {os.cpu_count()} CPUs" + (" (busy: not idle-machine figures)" if load > 0.5 else " (idle)")


def measure_speed(spec: SweepSettings, speed: SpeedSpec, log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """Rows (model label, batch size, counts, latency, speed-up against dense) for the dense --checkpoint and each
    --pruned model; the markdown table goes to ``log`` and to ``speed.save``."""
    speed.validate()
    check_output_file(speed.save, "--save")
    for path in speed.pruned:
        if not Path(path).is_file():
            raise CheckpointError(f"--pruned {path} does not exist: give the file `reflowbench prune --save` wrote")
    device = resolve_device(spec.sweep.device)
    if speed.semi_structured and device.type != "cuda":
        raise ConfigError(
            f"--semi-structured times PyTorch's 2:4 kernels, which need a CUDA GPU with sparse tensor cores (Ampere or later); this run is on {device}: drop it"
        )
    if spec.sweep.threads:
        torch.set_num_threads(spec.sweep.threads)
    shape = INPUT_SHAPES[spec.data.dataset or default_dataset_for(spec.model.model)]
    checkpoint = Path(spec.model.checkpoint) if spec.model.checkpoint else _default_checkpoint(spec, device, log)
    models = [("dense", build_model(spec.model.model, spec.model.num_classes or 10, checkpoint, spec.model.shortcut, spec.model.weights).eval())]
    models += [(Path(path).name, _load(spec, path)) for path in speed.pruned]
    timed_models = _with_sparse_kernels(models, shape, device, log) if speed.semi_structured else [(label, m, m) for label, m in models]
    rows: List[Dict[str, Any]] = []
    dense_ms: Dict[int, float] = {}
    for label, model, counted_on in timed_models:
        model.to(device)
        counted = counts(counted_on, shape)
        for batch in speed.batch_sizes:
            timed = latency(model, shape, batch, device, speed.min_run_time)
            dense_ms.setdefault(batch, timed["median_ms"])
            rows.append({"model": label, "batch": batch, **counted, **timed, "speedup": dense_ms[batch] / timed["median_ms"]})
    table = speed_markdown(rows, device, torch.get_num_threads(), machine_load(), "float16" if speed.semi_structured else "float32")
    for line in table:
        log(line)
    if speed.save:
        atomic_write_text(Path(speed.save), "\n".join(table) + "\n")
    return rows


SPARSE_KERNEL_TOLERANCE = 2e-2  # relative output difference (of the largest output) allowed between a model's 2:4 kernels and its float16 dense kernels


def _with_sparse_kernels(
    models: List[Tuple[str, nn.Module]],
    shape: Tuple[int, ...],
    device: torch.device,
    log: Callable[[str], None],
    convert: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> List[Tuple[str, nn.Module, nn.Module]]:
    """(label, model to time, model to count) for every model in float16 on ``device``, and after each pruned one its copy
    on the 2:4 kernels, counted as the model it copies (checked against it on a batch of random inputs: a copy that
    computes something else is refused, never timed). ``convert``: the weight conversion (default PyTorch's; a test's
    stand-in on a CPU)."""
    from reflowbench.models.sparse_kernels import semi_structured_copy

    out: List[Tuple[str, nn.Module, nn.Module]] = []
    for index, (label, model) in enumerate(models):
        model = model.to(device=device, dtype=torch.float16).eval()
        out.append((label, model, model))
        if index == 0:
            continue
        sparse, converted, dense = semi_structured_copy(model, convert or torch.sparse.to_sparse_semi_structured)
        if not converted:
            log(f"{label}: no layer can use the 2:4 kernels ({len(dense)} stay dense, e.g. {next(iter(dense.items()), ('-', '-'))}): not timed on them")
            continue
        with torch.no_grad():
            x = torch.randn(8, *shape, device=device, dtype=torch.float16)
            error = relative_output_error(model(x), sparse(x))
        if not error <= SPARSE_KERNEL_TOLERANCE:
            raise CheckpointError(
                f"{label} on the 2:4 kernels differs from its dense kernels by {error:.1e} (relative): not timed; report it with the model name"
            )
        log(f"{label}: {len(converted)} layers on the 2:4 kernels (output within {error:.1e} of the dense kernels), {len(dense)} on dense kernels")
        out.append((f"{label} (2:4 kernels)", sparse, model))
    return out


def speed_markdown(rows: List[Dict[str, Any]], device: torch.device, threads: int, load: str = "", dtype: str = "float32") -> List[str]:
    """The table: per model and batch size, parameters (non-zero), FLOPs per image, latency and throughput, speed-up."""
    lines = [
        f"Measured on {device.type} in {dtype} with {threads} thread(s), torch {torch.__version__}, {load}: median of timed blocks (interquartile range); "
        "FLOPs per image as PyTorch counts them for the shapes run (dense kernels: pruned weights still cost FLOPs).",
        *(
            [
                "Every model runs on dense kernels here: unstructured and N:M zeros are multiplied like any weight. PyTorch's 2:4 "
                "kernels (semi-structured sparse tensors on sparse tensor cores) need a CUDA GPU, so a 2:4 model's speed-up on them "
                "is not measured by this table."
            ]
            if device.type != "cuda"
            else []
        ),
        "",
        "| model | batch | params (non-zero) | GFLOPs / image | latency ms (IQR) | images / s | speed-up vs dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['params'] / 1e6:.3f} M ({r['nonzero_params'] / 1e6:.3f} M) | {r['flops'] / 1e9:.4f} | "
            f"{r['median_ms']:.3f} ({r['iqr_ms']:.3f}) | {r['images_per_s']:.0f} | {r['speedup']:.2f}× |"
        )
    return lines
