"""Runs of a sweep or a suite as submitit jobs: a Slurm job array on a cluster, local subprocesses elsewhere.

The scheduling is submitit's and Slurm's; this module only cuts the work into jobs, submits them as one batch
(one job array) and collects. Each job is one ``run_sweep`` restricted to its runs (one method and seed with its
unfinished sparsities, which share the dense Fisher; a single run; or a whole sweep, by ``--job-unit``): it claims
each run (:mod:`.claims`) and writes the run's JSON atomically into the shared ``--out``, exactly as an in-process
sweep does. A re-submission therefore skips finished runs and re-runs those whose job died (a dead job's claim is
stale); ``reflowbench report OUT`` collects at any time. A job of ``--ranks-per-job K`` > 1 tasks joins one
torch.distributed group (submitit exports its address and ranks) and shards the Hessian pruners' Fisher across
them, as under ``torchrun`` (:mod:`.distributed`).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from reflowbench.config import ExecutorSpec, SweepNarrowing, SweepSettings, TuneSpec, narrow_sweep
from reflowbench.errors import ConfigError
from reflowbench.harness.plan import SweepPlan, plan_sweep
from reflowbench.harness.run import SweepState
from reflowbench.harness.sweep import pending_runs, run_sweep, write_results

Log = Callable[[str], None]


@dataclass
class JobRuns:
    """The runs one job executes: one method (its index in ``--methods``) and seed with its sparsities, or (``method_index``
    None) every unfinished run of the sweep."""

    method_index: Optional[int]
    method: str
    seed: Optional[int]
    sparsities: List[float]

    def describe(self) -> str:
        if self.method_index is None:
            return f"{self.method}: every unfinished run"
        return f"{self.method} seed {self.seed} s={','.join(f'{s:g}' for s in self.sparsities)}"


@dataclass
class Submission:
    """One submitit job: a picklable function, its one argument, and a line naming what it does."""

    what: str
    function: Callable[[Any], Any]
    argument: Any


def group_runs(todo: List[Tuple[int, str, float, int]], unit: str) -> List[JobRuns]:
    """Pending runs (method index, method, sparsity, seed) cut into jobs: per method and seed (``seed``), one per run
    (``run``) or one for them all (``sweep``)."""
    if unit == "sweep":
        methods = ",".join(dict.fromkeys(method for _, method, _, _ in todo))
        return [JobRuns(None, methods, None, sorted({sparsity for _, _, sparsity, _ in todo}))] if todo else []
    jobs: Dict[Tuple[int, int], JobRuns] = {}
    out: List[JobRuns] = []
    for index, method, sparsity, seed in todo:
        if unit == "run":
            out.append(JobRuns(index, method, seed, [sparsity]))
            continue
        key = (index, seed)
        if key not in jobs:
            jobs[key] = JobRuns(index, method, seed, [])
            out.append(jobs[key])
        jobs[key].sparsities.append(sparsity)
    return out


def job_spec(spec: SweepSettings, job: JobRuns, threads: int) -> SweepSettings:
    """``spec`` restricted to ``job``'s runs (no progress bars; ``threads`` CPU threads where the spec leaves it open)."""
    restricted = copy.deepcopy(spec)
    if job.method_index is not None:
        narrowing = SweepNarrowing("a submitit job", methods=[spec.sweep.methods[job.method_index]], sparsities=list(job.sparsities), seeds=[job.seed])
        narrow_sweep(restricted, narrowing)
    sweep = restricted.sweep
    sweep.progress = False
    sweep.threads = sweep.threads or threads
    return restricted


def sweep_submissions(plan: SweepPlan, executor: ExecutorSpec, log: Log, label: str = "") -> Tuple[List[Submission], List[JobRuns], int, int]:
    """The submitit jobs of ``plan``'s unfinished runs: (submissions, their runs, runs to do, runs in the sweep)."""
    state = SweepState(plan, log)
    todo, total = pending_runs(state, plan)
    index_of = {id(pruner): i for i, pruner in enumerate(plan.pruners)}
    groups = group_runs([(index_of[id(pruner)], pruner.name, sparsity, seed) for pruner, sparsity, seed, _, _ in todo], executor.job_unit)
    prefix = f"{label}: " if label else ""
    submissions = [Submission(prefix + group.describe(), run_job, job_spec(plan.spec, group, executor.slurm_cpus)) for group in groups]
    return submissions, groups, len(todo), total


def _join_job_ranks() -> bool:
    """In a submitit job of several tasks, join their torch.distributed group (submitit's environment exported as
    torchrun's). Returns whether this task is the one that prints and writes."""
    import submitit

    from reflowbench.harness.distributed import join_launched_group

    if submitit.JobEnvironment().num_tasks <= 1:
        return True
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return join_launched_group()


def run_job(spec: SweepSettings) -> Dict[str, int]:
    """What a job executes (in its own process, on each of its tasks): plan the restricted sweep and run it without the report."""
    from reflowbench.pruners.base import load_plugins

    load_plugins()
    main = _join_job_ranks()
    return run_sweep(plan_sweep(spec), log=print if main else lambda message: None, report=False)


def run_search_job(search: Tuple[SweepSettings, TuneSpec]) -> Dict[str, Any]:
    """A suite's settings search as one job (resumed from its results file); on its first task only (the search is not
    sharded), the others return at once. Returns the chosen options ({} on the other tasks)."""
    import submitit

    from reflowbench.harness.tuning import run_tuning, tune_plan
    from reflowbench.pruners.base import load_plugins

    if submitit.JobEnvironment().global_rank != 0:
        return {}
    load_plugins()
    spec, tune = copy.deepcopy(search[0]), copy.deepcopy(search[1])
    plan, cells = tune_plan(spec, tune)
    return run_tuning(plan, cells, tune, log=print)["chosen"]


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor submitit needs the submitit package: pip install submitit (or pip install 'reflowbench[cluster]')") from None
    return submitit


def make_executor(executor: ExecutorSpec, out: Path) -> Any:
    """A submitit executor for ``executor``'s cluster and resources; its files go to ``--submitit-folder`` (default OUT/submitit/%j)."""
    submitit = _submitit()
    cluster = executor.submitit_cluster
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise ConfigError(
            f"--submitit-cluster slurm: {' and '.join(missing)} not on PATH (not a Slurm login node); use --submitit-cluster local to run the jobs here"
        )
    folder = executor.submitit_folder or str(out / "submitit" / "%j")
    try:
        auto = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "auto" else cluster)
    except RuntimeError as exc:  # submitit's own check of the cluster's tools
        raise ConfigError(f"--submitit-cluster {cluster}: submitit says {exc}; use --submitit-cluster local to run the jobs here") from None
    parameters: Dict[str, Any] = {
        "name": "reflowbench",
        "timeout_min": executor.slurm_time_min,
        "cpus_per_task": executor.slurm_cpus,
        "mem_gb": executor.slurm_mem_gb,
        "gpus_per_node": executor.slurm_gpus,
        "tasks_per_node": executor.ranks_per_job,
    }
    if auto.cluster == "slurm":
        parameters["slurm_array_parallelism"] = executor.slurm_array_parallelism
        if executor.slurm_partition:
            parameters["slurm_partition"] = executor.slurm_partition
    auto.update_parameters(**parameters)
    return auto


def submit_all(submissions: List[Submission], executor: ExecutorSpec, out: Path, log: Log) -> List[Any]:
    """Submit ``submissions`` as one batch (one job array on Slurm) and log each job's id; returns the job handles."""
    if not submissions:
        return []
    auto = make_executor(executor, out)
    with auto.batch():
        handles = [auto.submit(s.function, s.argument) for s in submissions]
    for submission, handle in zip(submissions, handles):
        log(f"job {handle.job_id}: {submission.what}")
    return handles


def wait_all(submissions: List[Submission], handles: List[Any], log: Log) -> List[Tuple[Submission, str]]:
    """Wait for every job; returns the failed ones with their error's last line (a failure never loses the others' results)."""
    failed: List[Tuple[Submission, str]] = []
    for submission, handle in zip(submissions, handles):
        try:
            handle.results()  # every task's: a job of several ranks fails if any of them does
        except Exception as exc:  # a job's failure (its traceback is in its submitit log) must not lose the others' results
            failed.append((submission, first_line(exc)))
            log(f"job {handle.job_id} ({submission.what}) failed: {first_line(exc)}; its log: {handle.paths.stderr}")
    return failed


def submit_sweep(plan: SweepPlan, executor: ExecutorSpec, log: Log = print) -> Dict[str, Any]:
    """Submit every unfinished run of ``plan`` as submitit jobs (one batch: a job array on Slurm). With ``executor.wait``,
    wait for them, then write results.csv and the report; a failed job is reported (its runs stay unfinished and are
    re-run on the next submission). ``executor`` is validated (:meth:`ExecutorSpec.validate`, with the other flags).
    Returns {"jobs": handles, "groups": their runs, "runs": pending runs, "failed": [(submission, error)], "total"}."""
    out = Path(plan.spec.sweep.out)
    submissions, groups, todo, total = sweep_submissions(plan, executor, log)
    log(f"{total} runs in the sweep, {total - todo} already complete in {out}, {todo} to run as {len(submissions)} submitit jobs")
    handles = submit_all(submissions, executor, out, log)
    failed: List[Tuple[Submission, str]] = []
    if executor.wait:
        failed = wait_all(submissions, handles, log)
        write_results(out, log, True, plan.spec.sweep.report_sparsity)
    return {"jobs": handles, "groups": groups, "runs": todo, "failed": failed, "total": total}


def first_line(exc: BaseException) -> str:
    """The line of an exception that names the error (submitit wraps a job's traceback: its last non-empty line)."""
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__
