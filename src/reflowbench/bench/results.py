"""Results schema: one JSON per run (atomic, named by a hash of its settings) and the collected CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from reflowbench.utils.io import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1
RUNS_FOLDER = "runs"
CSV_NAME = "results.csv"
CSV_COLUMNS = [
    "model", "dataset", "method", "sparsity", "seed", "reflow", "top1", "top5", "loss", "dense_top1",
    "sparsity_actual", "prune_s", "gradients_s", "curvature_s", "selection_s", "update_s", "recal_s", "eval_s",
    "peak_mem_mb", "peak_cuda_mb", "last_bn_ratio", "min_bn_ratio", "targets", "num_target_weights", "device", "key",
]


def run_filename(method: str, sparsity: float, seed: int, key: str) -> str:
    return f"{method}_s{sparsity:g}_seed{seed}_{key}.json"


def run_path(out: Path, method: str, sparsity: float, seed: int, key: str) -> Path:
    return Path(out) / RUNS_FOLDER / run_filename(method, sparsity, seed, key)


def is_complete(path: Path, key: str) -> bool:
    """A run is done when its JSON exists, parses, carries the same key and schema, and says complete."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("key") == key and record.get("schema") == SCHEMA_VERSION and record.get("status") == "complete"


def write_run(path: Path, record: Dict[str, Any]) -> None:
    atomic_write_json(path, record)


def load_runs(out: Path) -> List[Dict[str, Any]]:
    """Every complete run record under ``out/runs`` (unreadable or partial files are skipped)."""
    records = []
    for path in sorted((Path(out) / RUNS_FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("schema") == SCHEMA_VERSION and record.get("status") == "complete":
            records.append(record)
    return records


def _phase_s(record: Dict[str, Any], name: str) -> Optional[float]:
    phase = record["cost"].get(name)
    return None if phase is None else round(phase["seconds"], 4)


def csv_rows(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Two rows per run: reflow=0 (right after pruning) and reflow=1 (after BN recalibration)."""
    rows = []
    for record in records:
        prune_cost = record["cost"].get("prune", {})
        for reflow, stage in ((0, "pruned"), (1, "reflow")):
            metrics = record[stage]
            ratios = record["variance"].get(stage, {})
            rows.append({
                "model": record["model"], "dataset": record["dataset"], "method": record["method"],
                "sparsity": record["sparsity"], "seed": record["seed"], "reflow": reflow,
                "top1": metrics["top1"], "top5": metrics.get("top5"), "loss": metrics.get("loss"),
                "dense_top1": record["dense"]["top1"], "sparsity_actual": record["sparsity_actual"],
                "prune_s": _phase_s(record, "prune"), "gradients_s": _phase_s(record, "gradients"),
                "curvature_s": _phase_s(record, "curvature"), "selection_s": _phase_s(record, "selection"),
                "update_s": _phase_s(record, "update"),
                "recal_s": _phase_s(record, "recalibrate") if reflow else 0.0,
                "eval_s": _phase_s(record, "eval_reflow" if reflow else "eval_pruned"),
                "peak_mem_mb": prune_cost.get("peak_rss_mb"), "peak_cuda_mb": prune_cost.get("peak_cuda_mb"),
                "last_bn_ratio": ratios.get("last"), "min_bn_ratio": ratios.get("min"),
                "targets": record["targets"]["description"], "num_target_weights": record["targets"]["num_weights"],
                "device": record["environment"]["device"], "key": record["key"],
            })
    return rows


def write_csv(out: Path) -> Path:
    """Collect ``out/runs/*.json`` into ``out/results.csv`` (rewritten atomically)."""
    rows = csv_rows(load_runs(out))
    rows.sort(key=lambda r: (r["model"], r["method"], r["sparsity"], r["seed"], r["reflow"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out) / CSV_NAME
    atomic_write_text(path, buffer.getvalue())
    return path
