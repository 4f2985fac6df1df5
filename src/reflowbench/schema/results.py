"""Results schema: one JSON per run (atomic, named by a hash of its settings) and the collected CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from reflowbench.errors import UnreadableRunsError
from reflowbench.utils.io import atomic_write_json, atomic_write_text, stable_hash

SCHEMA_VERSION = 1
RUNS_FOLDER = "runs"
CSV_NAME = "results.csv"
CSV_COLUMNS = [
    "model",
    "dataset",
    "method",
    "variant",
    "sparsity",
    "seed",
    "correction",
    "reflow",
    "top1",
    "top5",
    "loss",
    "dense_top1",
    "sparsity_actual",
    "prune_s",
    "gradients_s",
    "curvature_s",
    "selection_s",
    "update_s",
    "recal_s",
    "eval_s",
    "peak_mem_mb",
    "peak_cuda_mb",
    "last_bn_ratio",
    "min_bn_ratio",
    "targets",
    "num_target_weights",
    "device",
    "config",
    "key",
]


def run_filename(method: str, sparsity: float, seed: int, key: str) -> str:
    return f"{method}_s{sparsity:g}_seed{seed}_{key}.json"


def run_path(out: Path, method: str, sparsity: float, seed: int, key: str) -> Path:
    return Path(out) / RUNS_FOLDER / run_filename(method, sparsity, seed, key)


PARTIAL_FOLDER = "partial"  # multi-step pruners' saved steps of unfinished runs (see pruners.base.StageCheckpoint)


def stage_path(run_json: Path) -> Path:
    """Where the unfinished run whose record goes to ``run_json`` keeps its finished pruning steps:
    ``<out>/partial/<run stem>.stages.pt`` (outside ``runs/``, which holds records only)."""
    run_json = Path(run_json)
    return run_json.parent.parent / PARTIAL_FOLDER / f"{run_json.stem}.stages.pt"


FINISHED = ("complete", "failed")  # a failed run: its pruner diverged (the record holds the error); not retried unless asked


def run_status(path: Path, key: str) -> Optional[str]:
    """The status of the run JSON at ``path`` (``complete`` or ``failed``) when it exists, parses and carries
    ``key`` and this schema; else None (to run)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("schema") != SCHEMA_VERSION:
        return None
    status = record.get("status")
    return status if status in FINISHED else None


def is_finished(path: Path, key: str, retry_failed: bool = False) -> bool:
    """Complete, or failed when ``retry_failed`` is off: nothing a sweep would run again."""
    status = run_status(path, key)
    return status == "complete" or (status == "failed" and not retry_failed)


def write_run(path: Path, record: Dict[str, Any]) -> None:
    atomic_write_json(path, record)


REQUIRED_FIELDS = ("key", "method", "model", "sparsity", "seed", "settings", "options")  # every finished run record has these
COMPLETE_FIELDS = ("pruned", "dense", "cost", "variance")  # and a complete one these (and ``reflow`` where REFLOW was among its corrections)


def applied_corrections(record: Dict[str, Any]) -> List[str]:
    """The corrections a run applied, REFLOW first (the default, REFLOW alone, for a record without corrections settings)."""
    chosen = record.get("settings", {}).get("corrections")
    names = ["reflow"] if chosen is None else list(chosen.get("corrections", []))
    return sorted(names, key=lambda name: (name != "reflow", name))


class Unreadable(NamedTuple):
    """A file under ``runs/`` that is not a finished run record, and why."""

    path: Path
    why: str


def read_run_file(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the record, None) for a finished run record of this schema; (None, why) for anything else: unreadable, not
    JSON (e.g. cut short), another schema, a status that is neither complete nor failed, fields missing."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"is not valid JSON ({exc}; cut short?)"
    if not isinstance(record, dict):
        return None, "is not a run record (not a JSON object)"
    if record.get("schema") != SCHEMA_VERSION:
        return None, f"has schema {record.get('schema')!r} where this reflowbench reads {SCHEMA_VERSION}"
    if record.get("status") not in FINISHED:
        return None, f"has status {record.get('status')!r}, not one of {FINISHED}"
    complete = (*COMPLETE_FIELDS, *(("reflow",) if "reflow" in applied_corrections(record) else ())) if record["status"] == "complete" else ()
    missing = [name for name in (*REQUIRED_FIELDS, *complete) if name not in record]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    return record, None


def unreadable_message(folder: Path, unreadable: List[Unreadable]) -> str:
    """One line naming each unreadable run file and why, and the two ways on."""
    shown = "; ".join(f"{u.path.name} {u.why}" for u in unreadable[:5]) + (f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
    return (
        f"{len(unreadable)} file(s) under {Path(folder) / RUNS_FOLDER} are not readable run records: {shown}. Move or delete them "
        "(running the same `reflowbench run` again makes those runs anew), or pass --skip-unreadable to leave them out"
    )


def load_runs(out: Path, status: str = "complete", skip_unreadable: bool = False) -> List[Dict[str, Any]]:
    """Every run record under ``out/runs`` with ``status`` (``complete``, or ``failed``: the runs whose pruner
    diverged), each annotated with ``config``, ``variant`` and ``label`` (see :func:`annotate_variants`; complete and
    failed runs are annotated together, so their labels agree). A file that is not a readable run record raises
    :class:`UnreadableRunsError` naming it, unless ``skip_unreadable``."""
    return load_finished_runs(out, skip_unreadable)[FINISHED.index(status)]


def scan_runs(out: Path) -> Tuple[List[Dict[str, Any]], List[Unreadable]]:
    """(every finished run record under ``out/runs``, every other ``*.json`` file there with why it is not one)."""
    records, unreadable = [], []
    for path in sorted((Path(out) / RUNS_FOLDER).glob("*.json")):
        record, why = read_run_file(path)
        if why is not None:
            unreadable.append(Unreadable(path, why))
        else:
            records.append(record)
    return records, unreadable


def load_finished_runs(out: Path, skip_unreadable: bool = False) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(complete runs, failed runs) under ``out/runs`` from one read of the folder, annotated as :func:`load_runs`."""
    records, unreadable = scan_runs(out)
    if unreadable and not skip_unreadable:
        raise UnreadableRunsError(unreadable_message(out, unreadable))
    annotated = annotate_variants(records)
    return [r for r in annotated if r["status"] == "complete"], [r for r in annotated if r["status"] == "failed"]


# Pruner options that change how the work is done but not its result (layer-group streaming gives the one-pass
# results; the gradient engines the same rows up to rounding): left out of run keys and of configurations, so runs
# recorded before such an option existed and runs after it stay one configuration.
RESULT_NEUTRAL_OPTIONS = ("layer_groups", "grad_engine")

# Result-changing pruner options added after runs were recorded, with the value that reproduces the earlier
# behaviour: at that value an option is left out of run keys and configurations (the runs recorded before it keep
# their keys and share their rows with the runs after it); at any other value it is part of both.
LATER_OPTIONS: Dict[str, Any] = {"update_guard": "finite", "nm_selection": "single", "channel_norm": "l1"}


# Settings added after runs were recorded, with the value that reproduces the earlier behaviour: left out of a run's
# settings (so of its key and configuration) at that value.
LATER_SETTINGS: Dict[Tuple[str, str], Any] = {("model", "fold_bn"): False, ("targets", "pattern"): "unstructured"}


def settings_in_key(section: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` of settings section ``section`` without the later settings at their earlier behaviour (see above)."""
    return {name: value for name, value in values.items() if not ((section, name) in LATER_SETTINGS and value == LATER_SETTINGS[(section, name)])}


def option_in_key(name: str, value: Any) -> bool:
    """Whether a pruner option enters a run's key and configuration (see the two lists above)."""
    return name not in RESULT_NEUTRAL_OPTIONS and not (name in LATER_OPTIONS and value == LATER_OPTIONS[name])


def config_fields(record: Dict[str, Any]) -> Dict[str, Any]:
    """Every setting of a run that changes its result except the seed, flattened to ``section.field``.

    Two runs belong in one mean ± std row exactly when these are equal.
    """
    flat: Dict[str, Any] = {"method": record["method"], "sparsity": record["sparsity"]}
    for section, values in record.get("settings", {}).items():
        if isinstance(values, dict):
            for name, value in values.items():
                flat[f"{section}.{name}"] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        else:
            flat[section] = values
    for name, value in record.get("options", {}).items():
        if option_in_key(name, value):
            flat[f"options.{name}"] = value
    return flat


def config_id(record: Dict[str, Any]) -> str:
    """Hash of :func:`config_fields` without the sparsity: one id per configuration of a method."""
    fields = {k: v for k, v in config_fields(record).items() if k != "sparsity"}
    return stable_hash(fields, 10)


def omitted_value(field: str) -> Any:
    """The value a configuration without ``field`` has: a later option's or setting's earlier behaviour (left out of
    configurations at that value, see :data:`LATER_OPTIONS` and :data:`LATER_SETTINGS`), else None."""
    section, _, name = field.partition(".")
    return LATER_OPTIONS.get(name) if section == "options" else LATER_SETTINGS.get((section, name))


def annotate_variants(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Give each record ``variant`` (the settings that set its configuration apart from the other
    configurations of the same model and method, e.g. ``reflow.calib_batches=5``; empty when there is
    one) and ``label`` (method plus variant). Tables and figures group by label, never pooling runs of
    different settings as if they were seeds. Returns ``records`` (modified in place).
    """
    by_method: Dict[Any, Dict[str, Dict[str, Any]]] = {}
    for record in records:
        record["config"] = config_id(record)
        by_method.setdefault((record["model"], record["method"]), {})[record["config"]] = config_fields(record)
    for record in records:
        configs = by_method[(record["model"], record["method"])]
        variant = ""
        if len(configs) > 1:
            mine = configs[record["config"]]
            names = sorted({k for fields in configs.values() for k in fields if k != "sparsity"})
            differing = [k for k in names if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in configs.values()}) > 1]
            variant = ", ".join(f"{k}={mine.get(k, omitted_value(k))}" for k in differing)
        record["variant"] = variant
        record["label"] = f"{record['method']} [{variant}]" if variant else record["method"]
    return records


def _phase_s(record: Dict[str, Any], name: str) -> Optional[float]:
    phase = record["cost"].get(name)
    return None if phase is None else round(phase["seconds"], 4)


def correction_stages(record: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any], Dict[str, Any], Optional[float]]]:
    """(correction, its test metrics, its variance-ratio summary, its seconds) for each row of a run: ``none`` (right
    after pruning), ``reflow`` where it ran, then every other correction in name order."""
    variance = record["variance"]
    stages = [("none", record["pruned"], variance.get("pruned", {}), 0.0)]
    if "reflow" in record:
        stages.append(("reflow", record["reflow"], variance.get("reflow", {}), _phase_s(record, "recalibrate")))
    for name, entry in sorted(record.get("corrections", {}).items()):
        stages.append((name, entry, entry.get("ratios", {}), round(entry["seconds"], 4)))
    return stages


def csv_rows(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per run and correction: ``correction`` none (right after pruning), reflow (after BN recalibration), and
    any other --corrections; ``reflow`` keeps its meaning (0 right after pruning, 1 after REFLOW, empty for the other
    corrections); ``recal_s`` is the correction's seconds."""
    rows = []
    for record in records:
        prune_cost = record["cost"].get("prune", {})
        for correction, metrics, ratios, correction_s in correction_stages(record):
            reflow = {"none": 0, "reflow": 1}.get(correction, "")
            rows.append(
                {
                    "model": record["model"],
                    "dataset": record["dataset"],
                    "method": record["method"],
                    "variant": record["variant"],
                    "sparsity": record["sparsity"],
                    "seed": record["seed"],
                    "correction": correction,
                    "reflow": reflow,
                    "top1": metrics["top1"],
                    "top5": metrics.get("top5"),
                    "loss": metrics.get("loss"),
                    "dense_top1": record["dense"]["top1"],
                    "sparsity_actual": record["sparsity_actual"],
                    "prune_s": _phase_s(record, "prune"),
                    "gradients_s": _phase_s(record, "gradients"),
                    "curvature_s": _phase_s(record, "curvature"),
                    "selection_s": _phase_s(record, "selection"),
                    "update_s": _phase_s(record, "update"),
                    "recal_s": correction_s,
                    "eval_s": _phase_s(record, {"none": "eval_pruned", "reflow": "eval_reflow"}.get(correction, f"eval_{correction}")),
                    "peak_mem_mb": prune_cost.get("peak_rss_mb"),
                    "peak_cuda_mb": prune_cost.get("peak_cuda_mb"),
                    "last_bn_ratio": ratios.get("last"),
                    "min_bn_ratio": ratios.get("min"),
                    "targets": record["targets"]["description"],
                    "num_target_weights": record["targets"]["num_weights"],
                    "device": record["environment"]["device"],
                    "config": record["config"],
                    "key": record["key"],
                }
            )
    return rows


def write_csv(out: Path, skip_unreadable: bool = False) -> Path:
    """Collect ``out/runs/*.json`` into ``out/results.csv`` (rewritten atomically); an unreadable run file raises
    :class:`UnreadableRunsError` unless ``skip_unreadable``."""
    rows = csv_rows(load_runs(out, skip_unreadable=skip_unreadable))
    order = {"none": 0, "reflow": 1}
    rows.sort(key=lambda r: (r["model"], r["method"], r["variant"], r["sparsity"], r["seed"], order.get(r["correction"], 2), r["correction"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out) / CSV_NAME
    atomic_write_text(path, buffer.getvalue())
    return path


FLOOR_PHASES = ("eval_pruned", "eval_reflow", "recalibrate")  # the work no implementation of the comparison can skip


def spent_seconds(record: Dict[str, Any], phase: str) -> float:
    """Seconds a run really spent in ``phase``: a run that reused its seed's dense gradients and curvature is
    charged their cost in its record (so every run shows what it needs), but did not spend it again."""
    cost = record["cost"].get(phase, {}).get("seconds", 0.0)
    if not record.get("notes", {}).get("gradients_reused"):
        return cost
    if phase in ("gradients", "curvature"):
        return 0.0
    if phase == "prune":
        return max(cost - sum(record["cost"].get(p, {}).get("seconds", 0.0) for p in ("gradients", "curvature")), 0.0)
    return cost


RUN_PHASES = ("prune", "diagnostics", "objective", *FLOOR_PHASES)  # a run's wall time, phase by phase (prune holds its sub-phases)


DOUBT_MIN_SECONDS = 60.0  # phases shorter than this are not judged (start-up noise)
DOUBT_MIN_CPU_SHARE = 0.3  # below this CPU seconds per wall second, a CPU phase did not run most of the time


def cpu_share(record: Dict[str, Any], phase: str) -> Optional[float]:
    """CPU seconds per wall second this run's process spent in ``phase`` (all its threads: about the torch thread
    count on an idle machine), or None where the record predates the measurement or the phase is absent or empty."""
    cost = record.get("cost", {}).get(phase, {})
    wall, cpu = cost.get("seconds"), cost.get("cpu_seconds")
    if wall is None or cpu is None or wall <= 0:
        return None
    return cpu / wall


def timing_doubts(record: Dict[str, Any]) -> List[str]:
    """Why this run's wall seconds overstate its cost, one line per doubtful phase (empty when none): a CPU run's phase
    of at least :data:`DOUBT_MIN_SECONDS` during which the process used under :data:`DOUBT_MIN_CPU_SHARE` CPU seconds
    per wall second was stopped (SIGSTOP, Ctrl-Z) or starved by other work on its cores. Runs on CUDA (the
    host waits for the device) and records without ``cpu_seconds`` are not judged."""
    if record.get("environment", {}).get("device", "cpu") != "cpu":
        return []
    doubts = []
    for phase in RUN_PHASES:
        share = cpu_share(record, phase)
        wall = record.get("cost", {}).get(phase, {}).get("seconds", 0.0)
        if share is not None and wall >= DOUBT_MIN_SECONDS and share < DOUBT_MIN_CPU_SHARE:
            doubts.append(
                f"{phase}: {wall:.0f} s of wall time with {share * wall:.0f} s on a CPU ({share:.0%}): the process was suspended "
                "or its cores were busy with other work; rerun it on an idle machine for its cost"
            )
    return doubts


def correction_phases(record: Dict[str, Any]) -> List[str]:
    """The phases of the corrections other than REFLOW (``correct_<name>`` and ``eval_<name>``) in a run's cost."""
    names = record.get("corrections", {})
    return [phase for name in names for phase in (f"correct_{name}", f"eval_{name}") if phase in record.get("cost", {})]


def run_wall_seconds(record: Dict[str, Any]) -> float:
    """Wall seconds a finished run really spent (:func:`spent_seconds` over :data:`RUN_PHASES` and its corrections'
    phases): what a like run costs again on the same machine, its seed's shared gradients and curvature counted once."""
    return sum(spent_seconds(record, phase) for phase in (*RUN_PHASES, *correction_phases(record)))
