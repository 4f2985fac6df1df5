"""``reflowbench suite NAME --executor submitit``: every job of a suite as submitit jobs (one Slurm job array, or local
subprocesses), then the per-folder reports and the combined report, as the in-process suite writes them.

Round one submits, in one batch, the unfinished runs of every job (cut by ``--job-unit``) and each open settings
search as a job of its own. A tuned job's row needs its search's choice, so with ``--wait`` (the default) its runs
go in a second batch once the searches are done; with ``--no-wait`` the next submission sends them. Runs are claimed
and written as in any sweep, so submitting again resumes: finished runs are skipped, a dead job's runs run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from reflowbench.config import ExecutorSpec, SuiteCommandSpec
from reflowbench.errors import ReflowbenchError
from reflowbench.harness.executor import Submission, run_search_job, submit_all, sweep_submissions, wait_all
from reflowbench.harness.suite import PlannedJob, plan_jobs, planned_with, start_clock, tuning_plan, write_combined_report
from reflowbench.harness.sweep import write_results
from reflowbench.harness.tuning import tuning_status
from reflowbench.reports.readme_block import check_block
from reflowbench.suites import suite_name

Log = Callable[[str], None]


@dataclass
class SuiteBatch:
    """One batch of submitit jobs for a suite, and the tuned jobs whose rows wait on a search in it."""

    submissions: List[Submission] = field(default_factory=list)
    waiting: List[PlannedJob] = field(default_factory=list)  # tuned jobs whose settings search is one of the submissions
    runs: int = 0  # unfinished runs submitted
    total: int = 0  # runs of the jobs whose runs are known (a tuned job's once its search has chosen)


def batch_of(planned: List[PlannedJob], executor: ExecutorSpec, log: Log) -> SuiteBatch:
    """The jobs to submit now: each planned job's unfinished runs, or its open settings search (its row then waits)."""
    batch = SuiteBatch()
    for job in planned:
        label = f"suite job {job.number} ({job.folder})"
        plan = job.plan
        if job.tune is not None:
            search_plan, cells, tune = tuning_plan(job)
            chosen = tuning_status(search_plan, cells, tune).chosen
            if chosen is None:
                batch.submissions.append(Submission(f"{label}: settings search for {tune.method}", run_search_job, (search_plan.spec, tune)))
                batch.waiting.append(job)
                continue
            plan = planned_with(job, chosen)
        submissions, _, todo, total = sweep_submissions(plan, executor, log, label)
        batch.submissions += submissions
        batch.runs += todo
        batch.total += total
    return batch


def describe_submission(planned: List[PlannedJob], executor: ExecutorSpec) -> str:
    """What ``--executor submitit`` would submit now for the ``planned`` jobs (``--dry-run``): one line, nothing submitted."""
    try:
        batch = batch_of(planned, executor, lambda message: None)
    except ReflowbenchError as error:  # e.g. a small tree standing in for the data: the runs cannot be keyed
        return f"submitit: jobs not counted ({error})"
    searches = f", {len(batch.waiting)} of them settings searches whose tuned rows follow in a second array" if batch.waiting else ""
    return (
        f"submitit: would submit {len(batch.submissions)} jobs in one array (--job-unit {executor.job_unit}, {executor.ranks_per_job} "
        f"rank(s) each){searches}, for {batch.runs} runs"
    )


def submit_suite(name: str, command: SuiteCommandSpec, executor: ExecutorSpec, log: Log = print) -> Dict[str, Any]:
    """Submit the suite's unfinished work (see the module); with ``executor.wait``, wait, send the tuned rows whose
    searches have chosen, wait again, then write every folder's report and the combined report.
    Returns {"jobs": submitted, "runs": runs submitted, "total": runs known, "failed": [(what, error)], "waiting": searches left open}."""
    planned = plan_jobs(name, command)
    if command.readme is not None:
        check_block(Path(command.readme), suite_name(name))
    out = Path(command.out)
    clock = start_clock()
    batch = batch_of(planned, executor, log)
    searches = len(batch.waiting)
    log(
        f"suite {name}: {batch.total} runs known, {batch.runs} to run"
        + (f", and {searches} settings searches (their tuned rows follow once they have chosen)" if searches else "")
        + f": {len(batch.submissions)} submitit jobs"
    )
    handles = submit_all(batch.submissions, executor, out, log)
    result = {"jobs": len(handles), "runs": batch.runs, "total": batch.total, "failed": [], "waiting": searches}
    if not executor.wait and handles:  # the next submission (or --report-only) writes the reports once all is done
        return result
    failed = _failures(wait_all(batch.submissions, handles, log))
    chosen = [job for job in batch.waiting if tuning_status(*tuning_plan(job)).chosen is not None]  # a failed search stays open
    if chosen:
        rows = batch_of(chosen, executor, log)
        failed += _failures(wait_all(rows.submissions, submit_all(rows.submissions, executor, out, log), log))
        result.update(jobs=result["jobs"] + len(rows.submissions), runs=batch.runs + rows.runs, total=batch.total + rows.total)
    result["waiting"] = len(batch.waiting) - len(chosen)
    result["failed"] = failed
    last_of_folder = {job.folder: job for job in planned}  # each folder's report once, with its last job's settings (as the in-process suite)
    for folder, job in last_of_folder.items():
        if (out / folder / "runs").is_dir():
            sweep = job.plan.spec.sweep
            write_results(out / folder, log, True, sweep.report_sparsity, sweep.skip_unreadable)
    write_combined_report(name, command, planned, clock if result["runs"] else None, log)
    return result


def _failures(failed: List[Tuple[Submission, str]]) -> List[Tuple[str, str]]:
    return [(submission.what, error) for submission, error in failed]
