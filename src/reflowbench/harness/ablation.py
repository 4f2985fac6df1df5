"""The REFLOW ablation: how many calibration batches, and how large, REFLOW needs; or which BN layers need it.

Per seed, one pruned model (``ReflowAblationSpec.method`` at ``.sparsity``) is evaluated once, then
recalibrated with every (batches, batch size) cell of the two one-knob grids (each REFLOW starts
again from the statistics right after pruning) and evaluated on the test split after each. The
calibration images of a cell are the first ``batches x batch_size`` of the seed's calibration range
(shuffled per cell with the seed, as in a run), so a larger cell sees a superset of a smaller one's pool.
With ``--layers``, the cells are layer subsets instead (``subset`` first/last/each and ``k``): REFLOW of only those BN
layers at the sweep's --calib-batches x --calib-batch-size, the other layers keeping the dense statistics.

Results go to ``<out>/reflow-ablation/<model>_<method>_s<sparsity>_seed<k>.json``, rewritten
atomically after every cell: an interrupted ablation resumes at the first cell it has not finished
(a file written under other settings is started again).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from reflowbench.config import ReflowAblationSpec
from reflowbench.datasets import SubsetSizes, check_subset_sizes, disjoint_subsets
from reflowbench.errors import DatasetError
from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import SweepPlan
from reflowbench.harness.run import SweepState, prune_fresh
from reflowbench.pruners.base import key_options
from reflowbench.reflow import batchnorm_layers
from reflowbench.reports.ablation import FOLDER as ABLATION_FOLDER
from reflowbench.utils.cost import CostLedger
from reflowbench.utils.io import atomic_write_json, read_keyed_json, stable_hash

Log = Callable[[str], None]


def ablation_path(out: Path, model: str, method: str, sparsity: float, seed: int) -> Path:
    return Path(out) / ABLATION_FOLDER / f"{model}_{method}_s{sparsity:g}_seed{seed}.json"


def _pool_sizes(state: SweepState, ablation: ReflowAblationSpec) -> SubsetSizes:
    """Subset sizes with a calibration pool as large as the largest cell needs; raises naming --batches/--batch-sizes."""
    reflow = state.spec.reflow
    need = max(b * size for b, size in [*ablation.cells(reflow.calib_batches, reflow.calib_batch_size), (reflow.calib_batches, reflow.calib_batch_size)])
    sizes = SubsetSizes(need, state.sizes.fisher, state.sizes.heldout)
    try:
        check_subset_sizes(len(state.data.train), sizes)
    except DatasetError as exc:
        raise DatasetError(f"the largest REFLOW cell needs {need} calibration images: {exc}; lower --batches or --batch-sizes") from None
    return sizes


def run_reflow_ablation(plan: SweepPlan, ablation: ReflowAblationSpec, log: Log = print) -> List[Path]:
    """Run (or resume) the ablation for every seed of ``plan`` (whose one method and sparsity are
    ``ablation.method`` and ``.sparsity``: its sweep narrowed by ``ablation.narrowing()``); returns the result files."""
    spec = plan.spec
    reflow = spec.reflow
    (pruner,) = plan.pruners
    state = SweepState(plan, log)
    cells = ablation.cells(reflow.calib_batches, reflow.calib_batch_size)
    bn_names = [name for name, _ in batchnorm_layers(state.dense)]
    layer_cells = ablation.layer_cells(len(bn_names))
    sizes = _pool_sizes(state, ablation)
    paths = []
    for seed in spec.sweep.seeds:
        pool = disjoint_subsets(len(state.data.train), sizes, seed)["calibration"]
        key = stable_hash({**state.settings, "method": pruner.name, "options": key_options(pruner), "sparsity": ablation.sparsity, "seed": seed})
        path = ablation_path(Path(spec.sweep.out), spec.model.model, pruner.name, ablation.sparsity, seed)
        record = read_keyed_json(path, key, "cells")
        done = {(c["batches"], c["batch_size"]) for c in record.get("cells", []) if "subset" not in c}
        done_layers = {(c["subset"], c["k"]) for c in record.get("cells", []) if "subset" in c}
        if done >= set(cells) and done_layers >= set(layer_cells):
            log(f"seed {seed}: all {len(cells) + len(layer_cells)} REFLOW cells already in {path}")
            paths.append(path)
            continue
        ledger = CostLedger()
        model, actual, _ = prune_fresh(state, pruner, ablation.sparsity, seed, ledger, keep_curvature=True)
        if not done and not done_layers:
            record = _new_record(state, pruner.name, asdict(pruner.options), ablation, seed, key, actual)
            record["pruned"] = evaluate(model, state.test_batches(), state.device)
            log(f"seed {seed}: {pruner.name} at {ablation.sparsity:g}: top-1 {record['pruned']['top1']:.2f}% before REFLOW")
        for batches, size in cells:
            if (batches, size) in done:
                continue
            record["cells"].append(_one_cell(state, model, pool, batches, size, seed))
            atomic_write_json(path, record)
            cell = record["cells"][-1]
            log(f"seed {seed}: REFLOW {batches:>3} x {size:<3}: top-1 {cell['top1']:.2f}% ({cell['reflow_seconds']:.1f} s)")
        for subset, k in layer_cells:
            if (subset, k) in done_layers:
                continue
            names = bn_names[:k] if subset == "first" else bn_names[-k:] if subset == "last" else [bn_names[k - 1]]
            cell = _one_cell(state, model, pool, reflow.calib_batches, reflow.calib_batch_size, seed, names)
            record["cells"].append({"subset": subset, "k": k, "layers": names, **cell})
            atomic_write_json(path, record)
            what = f"BN layer {k} alone ({names[0]})" if subset == "each" else f"the {subset} {k} BN layer{'s' if k > 1 else ''}"
            log(f"seed {seed}: REFLOW of {what}: top-1 {cell['top1']:.2f}%")
        paths.append(path)
    return paths


def _one_cell(state: SweepState, model, pool, batches: int, size: int, seed: int, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """REFLOW with ``batches`` x ``size`` images from ``pool`` (from the statistics right after pruning; of the BN layers
    in ``only``, default all), then the test top-1."""
    started = time.perf_counter()
    handle = state.recalibrate(model, seed, pool[: batches * size], batches, size, only)
    seconds = time.perf_counter() - started
    metrics = evaluate(model, state.test_batches(), state.device)
    handle.undo()
    return {
        "batches": batches,
        "batch_size": size,
        "images": handle.images_seen,
        "top1": metrics["top1"],
        "top5": metrics.get("top5"),
        "reflow_seconds": seconds,
    }


def _new_record(state: SweepState, method: str, options: Dict[str, Any], ablation: ReflowAblationSpec, seed: int, key: str, actual: float) -> Dict[str, Any]:
    reflow = state.spec.reflow
    return {
        "kind": "reflow-ablation",
        "key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": state.spec.model.model,
        "dataset": state.data.name,
        "method": method,
        "options": options,
        "sparsity": ablation.sparsity,
        "sparsity_actual": actual,
        "seed": seed,
        "grid": {
            "batches": ablation.batches,
            "batch_sizes": ablation.batch_sizes,
            "at_batch_size": reflow.calib_batch_size,
            "at_batches": reflow.calib_batches,
            "layers": ablation.layers,
        },
        "settings": state.settings,
        "dense": state.dense_metrics(),
        "environment": state.environment,
        "cells": [],
    }
