"""``reflowbench suite NAME``: every job of a named suite (:mod:`reflowbench.suites`) as an ordinary,
resumable ``run`` into ``<out>/<folder>``, then the combined report in ``<out>/<name>-suite/``.

Every job is planned (all settings checked, checkpoints found) before the first one runs, so a typo in
the last job does not surface after hours of the first. ``dry_run`` lists each job's finished and
missing runs instead.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from reflowbench.config import SuiteSpec, merge_into, preset
from reflowbench.errors import ConfigError
from reflowbench.harness.plan import SuitePlan, plan_suite
from reflowbench.harness.sweep import count_complete, run_suite
from reflowbench.schema.results import load_runs
from reflowbench.suites import SuiteCommandSpec, fill_placeholders, load_suite, suite_name
from reflowbench.utils.io import atomic_write_json

Log = Callable[[str], None]


@dataclass
class PlannedJob:
    folder: str
    role: str  # "sweep" (a method's main rows), "ablation" or "objective" (extra cells)
    plan: SuitePlan


def job_spec(job: Dict, command: SuiteCommandSpec, index: int) -> SuiteSpec:
    """The run settings of one job: its preset and settings, then the command's overrides."""
    source = f"suite job {index + 1} ({job['folder']})"
    spec = merge_into(preset(job.get("preset")), fill_placeholders(job.get("settings", {}), command.models_dir), source)
    spec.sweep.out = str(Path(command.out) / job["folder"])
    spec.sweep.device, spec.sweep.threads, spec.sweep.progress = command.device, command.threads, command.progress
    if command.data is not None:
        spec.data.data = command.data
    spec.data.download = command.download or spec.data.download
    if job.get("role", "sweep") == "sweep":
        spec.sweep.seeds = list(command.seeds) or spec.sweep.seeds
        spec.sweep.sparsities = list(command.sparsities) or spec.sweep.sparsities
    return spec


def plan_jobs(name: str, command: SuiteCommandSpec) -> List[PlannedJob]:
    """Every job of suite ``name`` planned (settings, checkpoints, data path, output folder checked), in order."""
    suite = load_suite(name)
    jobs = suite["jobs"]
    folders = {job["folder"] for job in jobs}
    unknown = sorted(set(command.only) - folders)
    if unknown:
        raise ConfigError(f"--only names {unknown}, which suite {name} has no job for: its folders are {sorted(folders)}")
    planned = []
    for index, job in enumerate(jobs):
        if command.only and job["folder"] not in command.only:
            continue
        try:
            plan = plan_suite(job_spec(job, command, index), check_out=not (command.dry_run or command.report_only))
        except ConfigError as exc:
            raise type(exc)(f"suite {name}, job {index + 1} ({job['folder']}): {exc}") from None
        planned.append(PlannedJob(job["folder"], job.get("role", "sweep"), plan))
    return planned


def run_comparison(name: str, command: SuiteCommandSpec, log: Log = print) -> Dict[str, int]:
    """Run (or, with ``dry_run``, list) every job, then write the combined report (``report_only``: only that) and,
    when runs were made, ``<name>-suite/timing.json`` (wall time against the floor of the runs made now);
    returns {"done", "skipped", "total"} summed over the jobs run or listed."""
    planned = plan_jobs(name, command)
    started, started_iso = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    totals = {"done": 0, "skipped": 0, "total": 0}
    for index, job in enumerate(planned):
        sweep = job.plan.spec.sweep
        header = f"[{index + 1}/{len(planned)}] {job.folder}: {job.plan.spec.model.model}, {','.join(sweep.methods)}" + (
            f" ({', '.join(f'{m} {o}' for m, o in job.plan.spec.method_options.items() if o)})" if any(job.plan.spec.method_options.values()) else ""
        )
        if command.report_only:
            continue
        if command.dry_run:
            complete, total = count_complete(job.plan)
            log(f"{header}: {complete} of {total} runs finished, {total - complete} to run")
            totals["skipped"] += complete
            totals["total"] += total
            continue
        log(header)
        counts = run_suite(job.plan, log=log, report=index == len(planned) - 1 or planned[index + 1].folder != job.folder)
        for key in totals:
            totals[key] += counts[key]
    if not command.dry_run:
        from reflowbench.reports.suite_report import write_suite_report

        folders = list(dict.fromkeys(job.folder for job in planned))
        if totals["done"]:
            _write_timing(Path(command.out), suite_name(name), folders, started_iso, time.perf_counter() - started, log)
        paths = write_suite_report(Path(command.out), suite_name(name), folders, load_suite(name).get("description", ""))
        log(f"suite report: {paths['markdown']}")
    return totals


def _write_timing(out: Path, name: str, folders: List[str], started_iso: str, wall_seconds: float, log: Log) -> None:
    """``<out>/<name>-suite/timing.json``: where this invocation's wall time went (the runs it created)."""
    from reflowbench.reports.suite_report import suite_timing

    records = [r for folder in folders for r in load_runs(out / folder) if r.get("created", "") >= started_iso]
    timing = suite_timing(records, wall_seconds)
    atomic_write_json(out / f"{name}-suite" / "timing.json", {**timing, "started": started_iso})
    ratio = timing["wall_over_floor"]
    log(
        f"suite time: {wall_seconds:.0f} s for {len(records)} runs; floor (test evaluations + REFLOW) {timing['floor_seconds']:.0f} s"
        + (f", {ratio:.2f}x" if ratio else "")
    )
