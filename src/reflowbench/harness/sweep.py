"""A sweep: methods x sparsities x seeds; finished runs are skipped, so an interrupted sweep resumes.

Each run is claimed before it starts (``claims.py``), so several sweeps may share one ``--out``:
each runs what nobody else has finished or is running.

A run whose pruner diverges is written as a ``failed`` record (the error, the cost spent) and the sweep goes on;
a failed run counts as finished (a rerun of the same command does not repeat it) unless ``--retry-failed``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from reflowbench.harness.claims import try_claim
from reflowbench.harness.distributed import from_main_rank, is_main_rank
from reflowbench.harness.plan import SweepPlan
from reflowbench.harness.run import SweepState, run_one
from reflowbench.hessian.distributed_fisher import is_distributed
from reflowbench.pruners import PRUNERS, Pruner, make_pruner, pruner_names
from reflowbench.pruners.base import StageCheckpoint, key_options
from reflowbench.schema.results import (
    correction_stages,
    is_finished,
    load_runs,
    run_path,
    run_wall_seconds,
    scan_runs,
    stage_path,
    timing_doubts,
    write_csv,
    write_run,
)
from reflowbench.utils.io import atomic_write_json

Log = Callable[[str], None]
Todo = Tuple[Pruner, float, int, str, Path]  # pruner, sparsity, seed, run key, run file


def run_line(record: Dict[str, Any]) -> str:
    """One line of a finished run: top-1 after pruning and after each correction, pruning seconds, last variance ratios."""
    after = "".join(f" -> {'REFLOW' if name == 'reflow' else name} {metrics['top1']:6.2f}%" for name, metrics, _, _ in correction_stages(record)[1:])
    ratios = " -> ".join(f"{summary.get('last', float('nan')):.3g}" for _, _, summary, _ in correction_stages(record))
    return f"top-1 {record['pruned']['top1']:6.2f}%{after}  (prune {record['cost']['prune']['seconds']:.1f}s, last var ratio {ratios})"


def planned_runs(state: SweepState, plan: SweepPlan) -> List[Todo]:
    """Every run of ``plan``, keyed, seed-major (a seed's dense gradients are collected once for all its sparsities)."""
    sweep = plan.spec.sweep
    out = Path(sweep.out)
    runs: List[Todo] = []
    for seed in sweep.seeds:
        for pruner in plan.pruners:
            for sparsity in sweep.sparsities:
                key = state.run_key(pruner, sparsity, seed)
                runs.append((pruner, sparsity, seed, key, run_path(out, pruner.name, sparsity, seed, key)))
    return runs


def unfinished(runs: List[Todo], retry_failed: bool) -> List[Todo]:
    """The runs of ``runs`` without a finished record (a failed one counts as finished unless ``retry_failed``)."""
    return [run for run in runs if not is_finished(run[4], run[3], retry_failed)]


def pending_runs(state: SweepState, plan: SweepPlan) -> Tuple[List[Todo], int]:
    """The runs still to do, seed-major, and the number of runs in the sweep."""
    runs = planned_runs(state, plan)
    return unfinished(runs, plan.spec.sweep.retry_failed), len(runs)


def _reused_later(todo: List[Todo], index: int) -> bool:
    """Whether a run after ``todo[index]`` has its pruner and seed (and so may reuse the seed's dense curvature)."""
    pruner, _, seed, _, _ = todo[index]
    return any(later[0] is pruner and later[2] == seed for later in todo[index + 1 :])


class Progress(NamedTuple):
    """What ``--dry-run`` reports of one sweep."""

    complete: int  # finished runs
    total: int  # runs in the sweep
    saved: int  # unfinished runs with saved pruning steps
    estimate_s: float  # wall seconds the unfinished runs would take, each at the mean of its like finished runs (see estimate_seconds)
    unestimated: int  # unfinished runs with no finished run of their method in --out to estimate from
    keys: Optional[Dict[str, FrozenSet[str]]] = None  # method -> the run keys of its runs in the sweep (finished or not)
    todo: Optional[Dict[str, int]] = None  # method -> its unfinished runs


def estimate_seconds(out: Path, todo: List[Todo]) -> Tuple[float, int]:
    """(estimated wall seconds of ``todo``, how many of them had nothing to estimate from): each run at the mean
    :func:`~reflowbench.schema.results.run_wall_seconds` of the finished runs in ``out`` with its method and options, else of its method's
    (any options); a rough guide, on the hardware and thread count those runs recorded."""
    finished = load_runs(out, skip_unreadable=True)  # a guide only: the report names unreadable files
    total, missing = 0.0, 0
    for pruner, _, _, _, _ in todo:
        options = key_options(pruner)
        same_method = [r for r in finished if r["method"] == pruner.name]
        alike = [r for r in same_method if all(r.get("options", {}).get(k, v) == v for k, v in options.items())] or same_method  # an option added later matches
        if alike:
            total += sum(run_wall_seconds(r) for r in alike) / len(alike)
        else:
            missing += 1
    return total, missing


def count_complete(plan: SweepPlan) -> Progress:
    """Finished, total and resumable runs of ``plan`` in its ``--out``, and an estimate of the rest's wall time (loads
    the data and the model to key the runs; each run is keyed once)."""
    runs = planned_runs(SweepState(plan, log=lambda message: None), plan)
    todo = unfinished(runs, plan.spec.sweep.retry_failed)
    estimate, unestimated = estimate_seconds(Path(plan.spec.sweep.out), todo) if todo else (0.0, 0)
    by_method: Dict[str, int] = {}
    for pruner, _, _, _, _ in todo:
        by_method[pruner.name] = by_method.get(pruner.name, 0) + 1
    return Progress(len(runs) - len(todo), len(runs), _with_saved_steps(todo), estimate, unestimated, keys_by_method(runs), by_method)


def keys_by_method(runs: List[Todo]) -> Dict[str, FrozenSet[str]]:
    """Method -> the keys of its runs in ``runs``."""
    keys: Dict[str, set] = {}
    for pruner, _, _, key, _ in runs:
        keys.setdefault(pruner.name, set()).add(key)
    return {method: frozenset(found) for method, found in keys.items()}


def _with_saved_steps(todo: List[Todo]) -> int:
    """How many of ``todo`` have a multi-step pruner's saved steps (``<out>/partial/``). Only the files' presence: a stage
    file is named after its run's record, whose name carries the run key's hash, and the pruner checks the whole key when
    it resumes (so the file, up to MobileNetV1's 16 MB, is read once, by the run)."""
    return sum(stage_path(path).exists() for _, _, _, _, path in todo)


def run_sweep(plan: SweepPlan, log: Log = print, report: bool = True) -> Dict[str, int]:
    """Run every (method, sparsity, seed) of ``plan`` not already complete (or claimed by another
    live worker) in ``--out``; then write results.csv and the report.

    Returns {"done": runs executed now, "failed": how many of those failed (pruner diverged), "skipped": runs found
    finished, "elsewhere": runs another worker was running, "total": runs in the sweep}.
    """
    spec = plan.spec
    out = Path(spec.sweep.out)
    state = SweepState(plan, log)
    log(f"targets: {state.targets_record['description']}: {state.targets_record['num_layers']} tensors, {state.targets_record['num_weights']:,} weights")
    if is_main_rank():
        atomic_write_json(out / "suite.json", {"spec": asdict(spec), "settings": state.settings, "targets": state.targets_record})
    todo, total = pending_runs(state, plan)
    if is_main_rank():
        _say_unreadable(out, {path for _, _, _, _, path in todo}, spec.sweep.skip_unreadable, log)
    left = set(from_main_rank([key for _, _, _, key, _ in todo]))  # every rank runs rank 0's list, in the same order
    todo = [run for run in todo if run[3] in left]
    saved = _with_saved_steps(todo)
    log(
        f"{total} runs in the sweep, {total - len(todo)} already complete in {out}, {len(todo)} to run"
        + (f" ({saved} resume from saved steps)" if saved else "")
    )
    main = is_main_rank()  # under torchrun every rank runs the same runs; rank 0 alone claims and writes
    progress = _progress(len(todo), spec.sweep.progress and main)
    done = elsewhere = 0
    failed: List[str] = []
    for index, (pruner, sparsity, seed, key, path) in enumerate(todo):
        claim = try_claim(path) if main else None
        skip = from_main_rank(claim is None or is_finished(path, key, spec.sweep.retry_failed))
        if skip:
            if claim is not None:
                claim.release()
            elsewhere += claim is None
            progress.update(1)
            continue
        with claim or nullcontext():
            progress.set_description(f"{pruner.name} s={sparsity:g} seed={seed}")
            stages = StageCheckpoint(stage_path(path), key) if main and not is_distributed() else None
            record = run_one(state, pruner, sparsity, seed, key, _reused_later(todo, index), stages)
            if main:
                write_run(path, record)
                if stages is not None:
                    stages.clear()
        done += 1
        if record["status"] == "failed":
            failed.append(f"{pruner.name} s={sparsity:g} seed={seed}")
        if main:
            _say_outcome(progress.write, f"{pruner.name:>12} s={sparsity:<5g} seed={seed}", record, path)
            write_csv(out)
        progress.update(1)
    progress.close()
    if main:
        _say_leftovers(out, elsewhere, failed, log)
        write_results(out, log, report, spec.sweep.report_sparsity, spec.sweep.skip_unreadable)
    return {"done": done, "failed": len(failed), "skipped": total - len(todo), "elsewhere": elsewhere, "total": total}


def _say_outcome(write: Log, label: str, record: Dict[str, Any], path: Path) -> None:
    """One line for a finished run (its accuracies, or FAILED and why), then any doubt about its timing."""
    if record["status"] == "failed":
        write(f"{label}: FAILED (recorded in {path.name}): {record['error']}")
    else:
        write(f"{label}: {run_line(record)}")
    for doubt in timing_doubts(record):
        write(f"{label}: timing doubtful, {doubt}")


def _say_leftovers(out: Path, elsewhere: int, failed: List[str], log: Log) -> None:
    """What the sweep leaves undone: runs another worker held, runs whose pruner diverged."""
    if elsewhere:
        log(f"{elsewhere} runs were being run by another worker sharing {out}; run the command again after it finishes to collect them")
    if failed:
        log(
            f"{len(failed)} runs failed (their pruner diverged; the report lists them): {', '.join(failed)}. A rerun skips them; --retry-failed runs them again"
        )


def _say_unreadable(out: Path, todo_paths: set, skip: bool, log: Log) -> None:
    """Name every file under ``out/runs`` that is not a readable run record: one this sweep makes again (its run is not
    finished), or one the report will refuse (unless ``skip``)."""
    for bad in scan_runs(out)[1]:
        if Path(bad.path) in todo_paths:
            log(f"warning: {bad.path} {bad.why}: its run is made again")
        else:
            then = "left out of the report (--skip-unreadable)" if skip else "the report refuses it: move or delete it, or pass --skip-unreadable"
            log(f"warning: {bad.path} {bad.why}; it is no run of this sweep: {then}")


def write_results(out: Path, log: Log, report: bool = True, signal_sparsity: Optional[float] = None, skip_unreadable: bool = False) -> None:
    """results.csv from every run JSON in ``out``, and (``report``) the report: what a sweep ends with and what
    ``reflowbench report OUT`` does. A file under ``runs/`` that is not a readable run record stops both with its name
    (:class:`~reflowbench.errors.UnreadableRunsError`), unless ``skip_unreadable`` (then it is left out, and said)."""
    if skip_unreadable:
        for bad in scan_runs(out)[1]:
            log(f"left out: {bad.path} {bad.why}")
    log(f"results: {write_csv(out, skip_unreadable)}")
    if report:
        from reflowbench.reports import write_report

        paths = write_report(out, signal_sparsity=signal_sparsity, reference_options=default_options(), skip_unreadable=skip_unreadable)
        log(f"report: {paths['markdown']} and {paths['html']}")


def default_options() -> Dict[str, Dict[str, Any]]:
    """method -> the options of its default settings as they enter a run's key, for every registered pruner whose
    defaults are its authors' published settings (``DEFAULTS_PUBLISHED``): what names a report's configuration
    "reference" (a layer-wise pruner's defaults are a search's choice, never called reference)."""
    return {name: key_options(make_pruner(name)) for name in pruner_names() if PRUNERS[name].DEFAULTS_PUBLISHED}


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="run", dynamic_ncols=True)
