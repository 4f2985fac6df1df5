"""``reflowbench suite NAME``: every job of a named suite (:mod:`reflowbench.suites`) as an ordinary,
resumable ``run`` into ``<out>/<folder>``, then the combined report in ``<out>/<name>-suite/``.

Every job is planned (all settings checked, checkpoints found) before the first one runs, so a typo in
the last job does not surface after hours of the first. ``dry_run`` lists each job's finished and
missing runs instead.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from reflowbench.config import SettingsLayers, SuiteCommandSpec, SweepNarrowing, SweepSettings, TuneSpec, build_settings, narrow_sweep
from reflowbench.errors import ConfigError, ReflowbenchError
from reflowbench.harness.cost_plan import CostPlanner
from reflowbench.harness.plan import SweepPlan, plan_sweep
from reflowbench.harness.sweep import Progress, count_complete, run_sweep
from reflowbench.harness.tuning import SearchProgress, run_tuning, tune_plan, tuning_status
from reflowbench.pruners.base import option_sources
from reflowbench.reports.readme_block import check_block, replace_block
from reflowbench.schema.results import load_runs, run_wall_seconds
from reflowbench.schema.tuned import ReferenceRow, SuiteContext, TunedRow
from reflowbench.suites import fill_placeholders, load_suite, suite_name
from reflowbench.utils.cost import format_duration
from reflowbench.utils.io import atomic_write_json

Log = Callable[[str], None]
MAIN_ROLES = ("sweep", "variant", "tuned")  # jobs whose seeds and sparsities --seeds/--sparsities override
ROLES = (*MAIN_ROLES, "ablation", "objective")


@dataclass
class PlannedJob:
    number: int  # the job's place in the suite, from 1 (as --jobs and the messages name it)
    folder: str
    role: str  # "sweep" (the methods' reference rows), "variant" (a labelled main row with other settings), "tuned" (after a settings search), "ablation" or "objective" (extra cells)
    plan: SweepPlan
    tune: Optional[TuneSpec] = None  # the settings search run before a "tuned" job (its chosen options replace the method's)
    tuning: Optional[Tuple[SweepPlan, List[Dict[str, Any]]]] = None  # that search planned once: one pruner per cell on the tuning seeds, the cells
    sources: Dict[str, Dict[str, str]] = field(default_factory=dict)  # method -> option -> where the job's value comes from


def job_spec(job: Dict, command: SuiteCommandSpec, index: int) -> SweepSettings:
    """The run settings of one job: its preset and settings, then the command's overrides."""
    sweep = {"out": str(Path(command.out) / job["folder"]), "device": command.device, "threads": command.threads, "progress": command.progress}
    if command.memory_budget_gb:
        sweep["memory_budget_gb"] = command.memory_budget_gb
    data = {"data": command.data} if command.data is not None else {}
    if command.download:
        data["download"] = True
    main_row = job.get("role", "sweep") in MAIN_ROLES
    settings = fill_placeholders(job.get("settings", {}), command.models_dir)
    if command.random_weights and "weights" in settings.get("model", {}):
        settings = {**settings, "model": {k: v for k, v in settings["model"].items() if k != "weights"}}
    layers = SettingsLayers(
        preset=job.get("preset") or "none",
        file=settings,
        file_source=f"suite job {index + 1} ({job['folder']})",
        flags={"sweep": {**sweep, "skip_unreadable": command.skip_unreadable}, "data": data},
        flags_source="the suite command's flags",
    )
    narrowing = SweepNarrowing("suite", seeds=list(command.seeds) or None, sparsities=list(command.sparsities) or None) if main_row else None
    return build_settings(layers, narrowing).spec


def plan_jobs(name: str, command: SuiteCommandSpec) -> List[PlannedJob]:
    """Every job of suite ``name`` planned (settings, checkpoints, data path, output folder checked), in the suite's
    order, or in ``--jobs``'s order when it names them."""
    suite = load_suite(name)
    jobs = suite["jobs"]
    folders = {job["folder"] for job in jobs}
    unknown = sorted(set(command.only) - folders)
    if unknown:
        raise ConfigError(f"--only names {unknown}, which suite {name} has no job for: its folders are {sorted(folders)}")
    repeated = sorted({n for n in command.jobs if command.jobs.count(n) > 1})
    if repeated:
        raise ConfigError(f"--jobs names {repeated} more than once: name each job once (they run in the order given)")
    outside = sorted(n for n in command.jobs if not 1 <= n <= len(jobs))
    if outside:
        raise ConfigError(f"--jobs names {outside}, but suite {name} has jobs 1 to {len(jobs)} (`reflowbench suite {name} --dry-run` lists them)")
    if not (math.isfinite(command.memory_budget_gb) and command.memory_budget_gb >= 0):
        raise ConfigError(f"--memory-budget-gb must be a number of GiB > 0 (0: each job's own), got {command.memory_budget_gb}")
    if not (math.isfinite(command.plan_memory_gb) and command.plan_memory_gb >= 0):
        raise ConfigError(f"--plan-memory-gb must be a number of GiB >= 0 (0: this machine's device), got {command.plan_memory_gb}")
    if (command.only or command.jobs) and command.report_only:
        raise ConfigError("--report-only writes the combined report from every job of the suite: drop --only and --jobs")
    planned = []
    for index, job in enumerate(jobs):
        if (command.only and job["folder"] not in command.only) or (command.jobs and index + 1 not in command.jobs):
            continue
        check_out = not (command.dry_run or command.report_only)
        try:
            plan = plan_sweep(job_spec(job, command, index), check_out=check_out)
            tune, tuning = _job_tuning(job, command, index, check_out)
        except ConfigError as exc:
            raise type(exc)(f"suite {name}, job {index + 1} ({job['folder']}): {exc}") from None
        role = job.get("role", "sweep")
        if role not in ROLES:
            raise ConfigError(f"suite {name}, job {index + 1} ({job['folder']}): role {role!r} is not one of {ROLES}")
        planned.append(PlannedJob(index + 1, job["folder"], role, plan, tune, tuning, dict(job.get("sources", {}))))
    if command.jobs:  # in the order given: `--jobs 40,32` runs job 40 first
        planned.sort(key=lambda job: command.jobs.index(job.number))
    return planned


def _job_tuning(
    job: Dict, command: SuiteCommandSpec, index: int, check_out: bool
) -> Tuple[Optional[TuneSpec], Optional[Tuple[SweepPlan, List[Dict[str, Any]]]]]:
    """(TuneSpec, the search's plan and cells) of a job with a ``tune`` entry ({"method", "at_sparsities", "criterion",
    "seeds"}), its grid checked; (None, None) for any other job."""
    if "tune" not in job:
        return None, None
    settings = dict(job["tune"])
    seeds = settings.pop("seeds", [0])
    tune = TuneSpec(**settings).validate()
    spec = narrow_sweep(job_spec(job, command, index), SweepNarrowing("a suite's settings search", seeds=list(seeds)))
    return tune, tune_plan(spec, tune, check_out=check_out)  # checks the method, the grid and every cell's options


def _tuned_plan(job: PlannedJob, command: SuiteCommandSpec, log: Log) -> SweepPlan:
    """Run (or resume) the job's settings search, then its sweep planned with the chosen options."""
    plan, cells, tune = tuning_plan(job)
    chosen = run_tuning(plan, cells, tune, log=log)["chosen"]
    log(f"{job.folder}: tuned {job.tune.method}: {chosen}")
    return planned_with(job, chosen)


def _progress_note(progress: Progress) -> str:
    """`` (N resume from saved steps; about H h: ...)`` for a dry-run line, or '' when nothing is left to say."""
    notes = [f"{progress.saved} resume from saved steps"] if progress.saved else []
    if progress.estimate_s > 0:
        notes.append(f"about {format_duration(progress.estimate_s)} at the mean wall time of like finished runs here")
    if progress.unestimated:
        notes.append(f"{progress.unestimated} with no finished run of their method to estimate from")
    return f" ({'; '.join(notes)})" if notes else ""


def tuning_plan(job: PlannedJob) -> Tuple[SweepPlan, List[Dict[str, Any]], TuneSpec]:
    """The job's settings search, as planned with the job: its plan (one pruner per cell, on the tuning seeds), cells and spec."""
    plan, cells = job.tuning
    return plan, cells, copy.deepcopy(job.tune)


def planned_with(job: PlannedJob, chosen: Dict[str, Any]) -> SweepPlan:
    """The job's sweep with the tuned method's options replaced by the search's ``chosen`` ones."""
    tuned = copy.deepcopy(job.plan.spec)
    tuned.method_options[job.tune.method] = chosen
    return plan_sweep(tuned)


@dataclass
class JobStatus:
    """Where one job stands in its ``--out`` (what ``--dry-run`` prints and the suite report's completeness section lists)."""

    line: str  # "<folder>: <model>, <methods> (<options>)[, tuned ...]: N of M runs finished, K to run (...)"
    complete: int  # finished runs (0 while the job's settings search is open)
    total: int  # runs in the job (0 while its settings search is open: counted once it has chosen)
    estimate_s: float = 0.0
    unestimated: int = 0
    search_open: bool = False  # its settings search has scores missing
    keys: Dict[str, FrozenSet[str]] = field(default_factory=dict)  # method -> its runs' keys (empty while the search is open)
    todo: Optional[Dict[str, int]] = None  # method -> its unfinished runs (None while the search is open)
    search: Optional[SearchProgress] = None  # a tuned job's settings search


def job_header(job: PlannedJob) -> str:
    """``<folder>: <model>, <methods> (<method options>)``."""
    spec = job.plan.spec
    options = [f"{m} {o}" for m, o in spec.method_options.items() if o]
    return f"{job.folder}: {spec.model.model}, {','.join(spec.sweep.methods)}" + (f" ({', '.join(options)})" if options else "")


class SearchEstimate(NamedTuple):
    """Wall seconds an open settings search and the tuned row after it would take (0 where nothing to estimate from)."""

    search_s: float  # the remaining scores
    search_basis: str  # how search_s was estimated, for the dry-run line
    row_s: float  # the tuned row's runs
    row_runs: int  # runs in the tuned row


def search_estimate(job: PlannedJob, search: SearchProgress) -> SearchEstimate:
    """A rough guide from what is in the job's ``--out``: each remaining score at the mean pruning seconds of the scores
    in (else of the finished runs of the method, any options, plus their REFLOW pass), and each run of the tuned row at
    the mean :func:`~reflowbench.schema.results.run_wall_seconds` of the method's finished runs."""
    sweep = job.plan.spec.sweep
    row_runs = len(sweep.methods) * len(sweep.sparsities) * len(sweep.seeds)
    like = [r for r in load_runs(Path(sweep.out), skip_unreadable=True) if r["method"] == job.tune.method]  # a guide only
    left = search.needed - search.scored
    if search.scored:
        search_s, basis = left * search.prune_s, ", at the mean pruning time of the scores in"
    elif like:
        per_score = sum(r["cost"]["prune"]["seconds"] + r["cost"].get("recalibrate", {}).get("seconds", 0.0) for r in like) / len(like)
        search_s, basis = left * per_score, f", at the mean pruning and REFLOW time of the {job.tune.method} runs here"
    else:
        search_s, basis = 0.0, ""
    row_s = row_runs * sum(run_wall_seconds(r) for r in like) / len(like) if like else 0.0
    return SearchEstimate(search_s, basis, row_s, row_runs)


def job_status(job: PlannedJob) -> JobStatus:
    """The job's finished and missing runs from the files in its ``--out`` (loads the data and the model to key them)."""
    header, plan = job_header(job), job.plan
    search: Optional[SearchProgress] = None
    if job.tune is not None:
        search = tuning_status(*tuning_plan(job))
        if search.chosen is None:
            estimate = search_estimate(job, search)
            rest = f" (about {format_duration(estimate.search_s)} more{estimate.search_basis})" if estimate.search_s else ""
            row = (
                f" ({estimate.row_runs} runs, about {format_duration(estimate.row_s)} at the mean wall time of like finished runs here)"
                if estimate.row_s
                else ""
            )
            over = f", {search.over_budget} of them over the memory budget (scored again under a larger --memory-budget-gb)" if search.over_budget else ""
            line = (
                f"{header}: settings search {search.scored} of {search.needed} scores in{over}{rest}; its tuned row{row} is counted once "
                f"`reflowbench tune --method {job.tune.method}` has chosen"
            )
            return JobStatus(line, 0, 0, estimate.search_s + estimate.row_s, 0 if estimate.row_s else estimate.row_runs, search_open=True, search=search)
        header += f", tuned {job.tune.method} {search.chosen}" + (
            f" ({search.over_budget} scores of its search over the memory budget)" if search.over_budget else ""
        )
        plan = planned_with(job, search.chosen)
    progress = count_complete(plan)
    line = f"{header}: {progress.complete} of {progress.total} runs finished, {progress.total - progress.complete} to run" + _progress_note(progress)
    return JobStatus(
        line, progress.complete, progress.total, progress.estimate_s, progress.unestimated, keys=progress.keys or {}, search=search, todo=progress.todo
    )


def _relative_loss_of(search: Optional[SearchProgress], options: Dict[str, Any]) -> Optional[float]:
    """The relative loss of the search's cell with these option values (None: no such cell, or the search is open)."""
    found = [loss for cell, loss in (search.relative_losses if search else ()) if all(cell.get(k, v) == v for k, v in options.items())]
    return found[0] if found else None


def searched_options(cells: List[Dict[str, Any]], defaults: Dict[str, Any]) -> List[str]:
    """The options of a search's ``cells`` that take more than one value across the cells and the ``defaults`` row's
    options together: the ones the grid varies, or sets away from the defaults row (e.g. a dtype for memory)."""
    names = {k for cell in cells for k in cell if k in defaults}
    return sorted(k for k in names if len({repr(cell.get(k, defaults[k])) for cell in cells} | {repr(defaults[k])}) > 1)


def tuned_rows(planned: List[PlannedJob], statuses: List[JobStatus]) -> List[TunedRow]:
    """Per tuned job (with ``statuses`` from :func:`job_status`, in the same order): its defaults row (the method's
    runs in the main sweep of its folder) and its tuned row, by run key, and the options that differ between them."""
    rows = []
    for job, status in zip(planned, statuses):
        if job.tune is None:
            continue
        main = [
            (other, mine) for other, mine in zip(planned, statuses) if other.folder == job.folder and other.role == "sweep" and job.tune.method in mine.keys
        ]
        if main:
            rows.append(_tuned_row(job, status, *main[0]))
    return rows


def _tuned_row(job: PlannedJob, status: JobStatus, main: PlannedJob, main_status: JobStatus) -> TunedRow:
    """One tuned job's :class:`TunedRow`, its defaults row being ``main``'s runs of the method."""
    method, search = job.tune.method, status.search
    defaults = asdict(next(p for p in main.plan.pruners if p.name == method).options)
    changed = searched_options(job.tuning[1], defaults)
    chosen = None if search is None or search.chosen is None else search.chosen
    return TunedRow(
        folder=job.folder,
        model=job.plan.spec.model.model,
        method=method,
        defaults={k: defaults[k] for k in changed},
        chosen=None if chosen is None else {k: chosen[k] for k in changed if chosen.get(k, defaults[k]) != defaults[k]},
        defaults_keys=main_status.keys[method],
        tuned_keys=status.keys.get(method, frozenset()),
        table=f"{job.folder}/tuning/{job.plan.spec.model.model}_{method}.md",
        scored=search.scored if search else 0,
        needed=search.needed if search else 0,
        chosen_loss=search.relative_losses[0][1] if search and search.relative_losses else None,
        defaults_loss=_relative_loss_of(search, {k: defaults[k] for k in changed}),
    )


def reference_rows(planned: List[PlannedJob], statuses: List[JobStatus], notes: Dict[str, str]) -> List[ReferenceRow]:
    """Per main-sweep job (role ``sweep``) and method: every option of its runs with the source of its value (the job's
    ``sources`` for what it sets, else the pruner's own ``REFERENCE``), and ``notes`` for its model."""
    rows = []
    for job, status in zip(planned, statuses):
        if job.role != "sweep":
            continue
        model = job.plan.spec.model.model
        for pruner in job.plan.pruners:
            options = tuple(option_sources(pruner, job.sources.get(pruner.name)))
            rows.append(ReferenceRow(job.folder, model, pruner.name, options, notes.get(model, ""), status.keys.get(pruner.name, frozenset())))
    return rows


def row_roles(references: List[ReferenceRow], tuned: List[TunedRow]) -> Dict[str, str]:
    """run key -> ``reference`` or ``tuned``: what the report labels each configuration (a tuned row that is the defaults
    row stays ``reference``)."""
    roles = {key: "tuned" for row in tuned for key in row.tuned_keys}
    roles.update({key: "reference" for row in references for key in row.keys})
    return roles


def completeness_lines(statuses: List[JobStatus]) -> List[str]:
    """The suite report's account of what it holds: every run in, or the jobs with runs or a settings search missing."""
    total = sum(s.total for s in statuses)
    complete = sum(s.complete for s in statuses)
    open_searches = sum(s.search_open for s in statuses)
    if complete == total and not open_searches:
        return [f"Every run of the suite is in: {total} runs."]
    estimate = sum(s.estimate_s for s in statuses)
    summary = f"**Partial**: {complete} of the {total} runs planned so far are in" + (
        f", and {open_searches} settings searches are still open (each adds its tuned row once it has chosen)" if open_searches else ""
    )
    if estimate:
        summary += (
            f"; the missing runs{' and the open searches with their tuned rows' if open_searches else ''} would take about "
            f"{format_duration(estimate)} at the mean wall time of like finished runs"
        )
    lines = [summary + ". Jobs not finished (`reflowbench suite ... --dry-run` lists the same; running the suite again resumes them):", ""]
    return lines + [f"- {s.line}" for s in statuses if s.search_open or s.complete < s.total]


def run_named_suite(name: str, command: SuiteCommandSpec, log: Log = print, planned: Optional[List[PlannedJob]] = None) -> Dict[str, int]:
    """Run (or, with ``dry_run``, list) every job, then write the combined report (``report_only``: only that; it says which
    jobs are not finished) and, when runs were made, ``<name>-suite/timing.json`` (wall time against the floor of the
    runs made now); returns {"done", "failed", "skipped", "total"} summed over the jobs run or listed (a tuned job's runs
    are listed once its settings search has chosen; a dry run adds "estimate_s" and "unestimated"). ``planned``: the
    jobs :func:`plan_jobs` planned for this command, when the caller has them (else planned here)."""
    planned = plan_jobs(name, command) if planned is None else planned
    if command.readme is not None:
        check_block(Path(command.readme), suite_name(name))
    clock = start_clock()
    totals = {"done": 0, "failed": 0, "skipped": 0, "total": 0}
    planner: Optional[CostPlanner] = None
    for index, job in enumerate(planned):
        header = f"[{index + 1}/{len(planned)}] job {job.number}: {job_header(job)}"
        if command.report_only:
            continue
        if command.dry_run:
            try:
                status = job_status(job)
            except ReflowbenchError as error:  # e.g. a small tree standing in for the data: the cost plan is still made
                status = JobStatus(f"{job_header(job)}: runs not counted ({error})", 0, 0, 0.0, 0)
            log(f"[{index + 1}/{len(planned)}] job {job.number}: {status.line}")
            if command.cost_plan:
                planner = planner or CostPlanner(job.plan.device, command.plan_memory_gb)
                cost = planner.plan(job.plan.spec, job.plan.pruners, runs_to_do(job, status))
                log(cost.line())
                totals["cost_s"] = totals.get("cost_s", 0) + cost.todo_seconds
                totals["not_fitting"] = totals.get("not_fitting", 0) + (not cost.fits)
            totals["skipped"] += status.complete
            totals["total"] += status.total
            totals["estimate_s"] = totals.get("estimate_s", 0) + status.estimate_s
            totals["unestimated"] = totals.get("unestimated", 0) + status.unestimated
            continue
        log(header)
        plan = _tuned_plan(job, command, log) if job.tune is not None else job.plan
        counts = run_sweep(plan, log=log, report=index == len(planned) - 1 or planned[index + 1].folder != job.folder)
        for key in totals:
            totals[key] += counts[key]
    if not command.dry_run:
        write_combined_report(name, command, planned, clock if totals["done"] else None, log)
    return totals


class SuiteClock(NamedTuple):
    """When a suite invocation started: its UTC ISO time (runs created since are its own) and ``time.perf_counter()``."""

    started_iso: str
    started: float


def start_clock() -> SuiteClock:
    return SuiteClock(_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), time.perf_counter())


def write_combined_report(name: str, command: SuiteCommandSpec, planned: List[PlannedJob], clock: Optional[SuiteClock], log: Log) -> None:
    """``<out>/<name>-suite/`` from every job's runs (with ``clock``, the runs made since it started also give
    ``timing.json``), and the README block when ``--readme`` names one; left as it was when ``--only``/``--jobs`` ran part."""
    if command.only or command.jobs:  # the combined report needs every job: not rewritten from a part
        log(f"the combined report is left as it was (--only/--jobs ran part of the suite): `reflowbench suite {name} --report-only` rewrites it")
        return
    from reflowbench.reports.suite_report import write_suite_report

    folders = list(dict.fromkeys(job.folder for job in planned))
    if clock is not None:
        _write_timing(Path(command.out), suite_name(name), folders, clock.started_iso, time.perf_counter() - clock.started, log)
    tuned: Optional[List[TunedRow]] = None
    references: Optional[List[ReferenceRow]] = None
    suite = load_suite(name)
    try:
        statuses = [job_status(job) for job in planned]
        completeness, tuned = completeness_lines(statuses), tuned_rows(planned, statuses)
        references = reference_rows(planned, statuses, suite.get("notes", {}))
    except ReflowbenchError as error:  # e.g. --report-only without the data that keys the runs: the report is still written
        completeness = [f"Not checked which of the suite's runs are missing: {error}"]
    paths = write_suite_report(
        Path(command.out),
        suite_name(name),
        folders,
        SuiteContext(suite.get("description", ""), completeness, tuned, references, row_roles(references or [], tuned or []), command.skip_unreadable),
    )
    log(f"suite report: {paths['markdown']}")
    if command.readme is not None:
        changed = replace_block(Path(command.readme), suite_name(name), paths["summary"].read_text(encoding="utf-8"))
        log(f"{command.readme}: the {suite_name(name)} summary block {'rewritten' if changed else 'already up to date'}")


def runs_to_do(job: PlannedJob, status: JobStatus) -> Dict[str, int]:
    """Method -> the job's runs not finished yet (all of them while a settings search is open)."""
    if status.todo is not None:
        return status.todo
    sweep = job.plan.spec.sweep
    return {name: len(sweep.sparsities) * len(sweep.seeds) for name in sweep.methods}


def _write_timing(out: Path, name: str, folders: List[str], started_iso: str, wall_seconds: float, log: Log) -> None:
    """``<out>/<name>-suite/timing.json``: where this invocation's wall time went (the runs it created)."""
    from reflowbench.reports.suite_report import suite_timing

    records = [r for folder in folders for r in load_runs(out / folder, skip_unreadable=True) if r.get("created", "") >= started_iso]
    timing = suite_timing(records, wall_seconds)
    atomic_write_json(out / f"{name}-suite" / "timing.json", {**timing, "started": started_iso})
    ratio = timing["wall_over_floor"]
    log(
        f"suite time: {wall_seconds:.0f} s for {len(records)} runs; floor (test evaluations + REFLOW) {timing['floor_seconds']:.0f} s"
        + (f", {ratio:.2f}x" if ratio else "")
    )
