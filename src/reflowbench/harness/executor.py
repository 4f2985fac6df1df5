"""Runs of a suite as submitit jobs: a Slurm job array on a cluster, local subprocesses elsewhere.

The scheduling is submitit's and Slurm's; this module only cuts the suite into jobs and collects. Each job is
one ``run_sweep`` restricted to its runs (one method and seed with its unfinished sparsities, which share the
dense Fisher, or a single run): it claims each run (:mod:`.claims`) and writes the run's JSON atomically into the
shared ``--out``, exactly as an in-process sweep does. A re-submission therefore skips finished runs and re-runs
those whose job died (a dead job's claim is stale); ``reflowbench report OUT`` collects at any time.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from reflowbench.config import ExecutorSpec, SweepNarrowing, SweepSettings, narrow_sweep
from reflowbench.errors import ConfigError
from reflowbench.harness.plan import SweepPlan, plan_sweep
from reflowbench.harness.run import SweepState
from reflowbench.harness.sweep import pending_runs, run_sweep, write_results

Log = Callable[[str], None]


@dataclass
class JobRuns:
    """The runs one job executes: one method (its index in ``--methods``), one seed, its sparsities."""

    method_index: int
    method: str
    seed: int
    sparsities: List[float]

    def describe(self) -> str:
        return f"{self.method} seed {self.seed} s={','.join(f'{s:g}' for s in self.sparsities)}"


def group_runs(todo: List[Tuple[int, str, float, int]], unit: str) -> List[JobRuns]:
    """Pending runs (method index, method, sparsity, seed) cut into jobs: per method and seed (``seed``) or one per run (``run``)."""
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
    narrow_sweep(
        restricted, SweepNarrowing("a submitit job", methods=[spec.sweep.methods[job.method_index]], sparsities=list(job.sparsities), seeds=[job.seed])
    )
    sweep = restricted.sweep
    sweep.progress = False
    sweep.threads = sweep.threads or threads
    return restricted


def run_job(spec: SweepSettings) -> Dict[str, int]:
    """What a job executes (in its own process): plan the restricted suite and run it without the report."""
    from reflowbench.pruners.base import load_plugins

    load_plugins()
    return run_sweep(plan_sweep(spec), log=print, report=False)


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
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--submitit-cluster slurm: sbatch is not on PATH (not a Slurm login node); use --submitit-cluster local to run the jobs here")
    folder = executor.submitit_folder or str(out / "submitit" / "%j")
    auto = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "auto" else cluster)
    parameters: Dict[str, Any] = {
        "name": "reflowbench",
        "timeout_min": executor.slurm_time_min,
        "cpus_per_task": executor.slurm_cpus,
        "mem_gb": executor.slurm_mem_gb,
        "gpus_per_node": executor.slurm_gpus,
    }
    if auto.cluster == "slurm":
        parameters["slurm_array_parallelism"] = executor.slurm_array_parallelism
        if executor.slurm_partition:
            parameters["slurm_partition"] = executor.slurm_partition
    auto.update_parameters(**parameters)
    return auto


def submit_sweep(plan: SweepPlan, executor: ExecutorSpec, log: Log = print) -> Dict[str, Any]:
    """Submit every unfinished run of ``plan`` as submitit jobs (one batch: a job array on Slurm). With ``executor.wait``,
    wait for them, then write results.csv and the report; a failed job is reported (its runs stay unfinished and are
    re-run on the next submission). ``executor`` is validated (:meth:`ExecutorSpec.validate`, with the other flags).
    Returns {"jobs": handles, "runs": pending runs, "failed": [(job, error)], "total"}."""
    out = Path(plan.spec.sweep.out)
    state = SweepState(plan, log)
    todo, total = pending_runs(state, plan)
    index_of = {id(pruner): i for i, pruner in enumerate(plan.pruners)}
    jobs = group_runs([(index_of[id(pruner)], pruner.name, sparsity, seed) for pruner, sparsity, seed, _, _ in todo], executor.job_unit)
    log(f"{total} runs in the sweep, {total - len(todo)} already complete in {out}, {len(todo)} to run as {len(jobs)} submitit jobs")
    handles: List[Any] = []
    if jobs:
        auto = make_executor(executor, out)
        with auto.batch():
            for job in jobs:
                handles.append(auto.submit(run_job, job_spec(plan.spec, job, executor.slurm_cpus)))
        for job, handle in zip(jobs, handles):
            log(f"job {handle.job_id}: {job.describe()}")
    failed: List[Tuple[JobRuns, str]] = []
    if executor.wait:
        for job, handle in zip(jobs, handles):
            try:
                handle.result()
            except Exception as exc:  # a job's failure (its traceback is in its submitit log) must not lose the others' results
                failed.append((job, _first_line(exc)))
                log(f"job {handle.job_id} ({job.describe()}) failed: {_first_line(exc)}; its log: {handle.paths.stderr}")
        write_results(out, log, True, plan.spec.sweep.report_sparsity)
    return {"jobs": handles, "groups": jobs, "runs": len(todo), "failed": failed, "total": total}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):  # submitit wraps the job's traceback: its last line names the error
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__
