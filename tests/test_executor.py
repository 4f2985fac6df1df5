"""Runs as submitit jobs (submitit's local executor: real subprocesses), collected into the same --out."""

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from reflowbench.config import ExecutorSpec, merge_into, preset
from reflowbench.errors import ConfigError
from reflowbench.harness import plan_sweep, run_sweep
from reflowbench.harness.executor import group_runs, submit_sweep

pytest.importorskip("submitit")

# Columns that a run's work decides (not its timing, host or memory).
RESULT_COLUMNS = ("model", "method", "variant", "sparsity", "seed", "reflow", "top1", "top5", "loss", "sparsity_actual", "last_bn_ratio", "min_bn_ratio", "key")

SLOW_PRUNER = """
import os, time
from reflowbench.pruners.base import register_pruner
from reflowbench.pruners.magnitude import MagnitudePruner

@register_pruner("slowmp", "magnitude pruning that waits while a marker file exists at 0.9 (a job to kill mid-run)")
class SlowMagnitude(MagnitudePruner):
    def prune(self, model, targets, sparsity, ctx):
        while sparsity == 0.9 and os.path.exists(os.environ["SLOWMP_MARKER"]):
            time.sleep(0.2)
        return super().prune(model, targets, sparsity, ctx)
"""


def _spec(out: Path, checkpoint: Path, methods=("mp",)):
    spec = preset("embedded")
    merge_into(
        spec,
        {
            "model": {"checkpoint": str(checkpoint)},
            "reflow": {"calib_batches": 4, "calib_batch_size": 64, "diag_images": 128},
            "sweep": {"methods": list(methods), "sparsities": [0.5, 0.9], "seeds": [0, 1], "out": str(out), "progress": False, "threads": 1},
        },
        "test",
    )
    return spec


@pytest.fixture
def checkpoint(tmp_path, trained_smallcnn):
    path = tmp_path / "smallcnn.pt"
    torch.save(trained_smallcnn, path)
    return path


def _results(out: Path):
    with open(out / "results.csv") as handle:
        return sorted(tuple(row[c] for c in RESULT_COLUMNS) for row in csv.DictReader(handle))


def _local(**kwargs) -> ExecutorSpec:
    return ExecutorSpec(executor="submitit", submitit_cluster="local", slurm_cpus=1, **kwargs)


def test_local_submitit_jobs_collect_the_results_of_the_serial_run(tmp_path, checkpoint):
    run_sweep(plan_sweep(_spec(tmp_path / "serial", checkpoint)), log=lambda m: None, report=False)
    from reflowbench.schema.results import write_csv

    write_csv(tmp_path / "serial")
    result = submit_sweep(plan_sweep(_spec(tmp_path / "jobs", checkpoint)), _local(), log=lambda m: None)
    assert len(result["jobs"]) == 2 and result["runs"] == 4 and not result["failed"]  # one job per seed, its two sparsities
    assert _results(tmp_path / "jobs") == _results(tmp_path / "serial")
    assert (tmp_path / "jobs" / "report.md").exists()
    again = submit_sweep(plan_sweep(_spec(tmp_path / "jobs", checkpoint)), _local(), log=lambda m: None)
    assert again["runs"] == 0 and again["jobs"] == []  # re-submission: nothing left to run


def test_a_job_killed_mid_run_is_rerun_on_resubmission_and_nothing_finished_is_lost(tmp_path, checkpoint, monkeypatch):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "slowmp_plugin.py").write_text(SLOW_PRUNER)
    marker = tmp_path / "hold"
    marker.write_text("")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "plugin"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", "slowmp_plugin")
    monkeypatch.setenv("SLOWMP_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    from reflowbench.pruners.base import PRUNERS, load_plugins

    load_plugins()
    try:
        _kill_and_resubmit(tmp_path, checkpoint, marker)
    finally:
        PRUNERS.pop("slowmp", None)
        sys.modules.pop("slowmp_plugin", None)


def _kill_and_resubmit(tmp_path: Path, checkpoint: Path, marker: Path) -> None:
    out = tmp_path / "out"
    spec = _spec(out, checkpoint, methods=("slowmp",))
    spec.sweep.seeds = [0]
    first = submit_sweep(plan_sweep(spec), _local(job_unit="run", wait=False), log=lambda m: None)
    held = next(h for h, g in zip(first["jobs"], first["groups"]) if g.sparsities == [0.9])
    others = [h for h in first["jobs"] if h is not held]
    for handle in others:
        handle.result()
    deadline = time.time() + 120
    while not list((out / "runs").glob("*0.9*.claim")) and time.time() < deadline:  # the held job is inside its run
        time.sleep(0.2)
    claims = list((out / "runs").glob("*0.9*.claim"))
    assert claims, "the held job never claimed its run"
    worker = json.loads(claims[0].read_text())["pid"]  # the task process submitit's controller started: the one running
    os.kill(worker, signal.SIGKILL)  # killed mid-run, as a node failure or a Slurm time limit would
    os.kill(held._process.pid, signal.SIGKILL)  # and its controller, so nothing of the job is left
    held._process.wait()
    _wait_until_gone(worker)
    finished = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(finished) == 1 and all("0.5" in p.name for p in finished)
    marker.unlink()
    second = submit_sweep(plan_sweep(spec), _local(job_unit="run"), log=lambda m: None)
    assert second["runs"] == 1 and not second["failed"]  # only the killed run
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # nothing finished was redone or lost
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2 and not list((out / "runs").glob("*.claim"))
    assert all(json.loads(p.read_text())["status"] == "complete" for p in runs)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _wait_until_gone(pid: int, timeout_s: float = 60.0) -> None:
    """Wait until ``pid`` no longer exists (reaped by its parent, or by init once its parent died)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _is_zombie(pid):  # dead, waiting for a parent that may never reap it (a container's init)
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still exists {timeout_s:.0f} s after SIGKILL")


def test_jobs_are_one_per_method_and_seed_or_one_per_run():
    todo = [(0, "mp", 0.5, 0), (0, "mp", 0.9, 0), (1, "woodfisher", 0.5, 0), (0, "mp", 0.5, 1)]
    by_seed = group_runs(todo, "seed")
    assert [(g.method, g.seed, g.sparsities) for g in by_seed] == [("mp", 0, [0.5, 0.9]), ("woodfisher", 0, [0.5]), ("mp", 1, [0.5])]
    assert len(group_runs(todo, "run")) == 4
    (whole,) = group_runs(todo, "sweep")  # one job for every unfinished run of the sweep
    assert (whole.method_index, whole.method, whole.sparsities) == (None, "mp,woodfisher", [0.5, 0.9])
    assert group_runs([], "sweep") == []


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"executor": "slurmish"}, "--executor must be one of local, submitit"),
        ({"job_unit": "layer"}, "--job-unit must be one of seed, run"),
        ({"slurm_cpus": 0}, "--slurm-cpus must be >= 1"),
        ({"submitit_cluster": "pbs"}, "--submitit-cluster must be one of"),
        ({"executor": "submitit", "ranks_per_job": 0}, "--ranks-per-job must be >= 1"),
        ({"executor": "submitit", "ranks_per_job": 2, "slurm_gpus": 1}, "one rank per GPU: give --slurm-gpus 2"),
        ({"ranks_per_job": 2}, "--ranks-per-job needs --executor submitit"),
    ],
)
def test_bad_executor_settings_name_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        ExecutorSpec(**settings).validate()


def test_submitit_missing_or_no_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    from reflowbench.harness.executor import make_executor

    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch and srun not on PATH"):
        make_executor(ExecutorSpec(executor="submitit", submitit_cluster="slurm"), tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install submitit"):
        make_executor(ExecutorSpec(executor="submitit"), tmp_path)


def test_cli_refuses_a_bad_executor_before_writing_anything(tmp_path, capsys):
    from reflowbench.cli import main

    out = tmp_path / "out"
    assert main(["run", "--executor", "slurmish", "--out", str(out)]) == 2
    assert "--executor must be one of local, submitit" in capsys.readouterr().err
    assert not out.exists()


def test_a_job_of_two_ranks_shards_the_fisher_and_gives_the_one_process_results(tmp_path, checkpoint, monkeypatch):
    """--ranks-per-job 2: one submitit job of two tasks joins one gloo group (submitit's environment as torchrun's) and
    shards WoodFisher's Fisher across them; rank 0 alone writes, and the runs are the single process's."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback, whatever the host name resolves to
    serial, sharded = (_spec(tmp_path / name, checkpoint, methods=("woodfisher",)) for name in ("serial", "ranks"))
    for spec in (serial, sharded):
        spec.sweep.seeds, spec.sweep.sparsities = [0], [0.9]
        spec.method_options["woodfisher"] = {"num_grads": 64, "minibatch": 4}
    run_sweep(plan_sweep(serial), log=lambda m: None, report=False)
    result = submit_sweep(plan_sweep(sharded), _local(ranks_per_job=2), log=lambda m: None)
    assert len(result["jobs"]) == 1 and not result["failed"], result["failed"]
    one, two = ({json.loads(p.read_text())["sparsity"]: json.loads(p.read_text()) for p in (tmp_path / n / "runs").glob("*.json")} for n in ("serial", "ranks"))
    assert sorted(two) == [0.9] and not list((tmp_path / "ranks" / "runs").glob("*.claim"))
    for sparsity, record in two.items():
        assert record["notes"].get("sharded_ranks") == 2, record["notes"]  # the Fisher was sharded, not computed twice
        assert record["key"] == one[sparsity]["key"]
        for stage in ("pruned", "reflow"):
            assert abs(record[stage]["top1"] - one[sparsity][stage]["top1"]) <= 0.1, (sparsity, stage)


def test_on_slurm_the_jobs_are_one_array_with_the_asked_resources(tmp_path, checkpoint, fake_slurm):
    """Through a stand-in sbatch (it keeps the script submitit writes): one job array, one task per rank, the GPUs,
    partition and time asked for; nothing runs here."""
    executor = ExecutorSpec(executor="submitit", submitit_cluster="slurm", slurm_partition="gpu", slurm_gpus=2, ranks_per_job=2, slurm_time_min=90, wait=False)
    lines = []
    result = submit_sweep(plan_sweep(_spec(tmp_path / "out", checkpoint)), executor, log=lines.append)
    assert len(result["jobs"]) == 2 and "job 4242_0: mp seed 0 s=0.5,0.9" in lines and "job 4242_1: mp seed 1 s=0.5,0.9" in lines
    script = (fake_slurm / "script.sh").read_text()
    for line in ("--array=0-1%2", "--gpus-per-node=2", "--ntasks-per-node=2", "--partition=gpu", "--time=90", "--cpus-per-task=4"):
        assert f"#SBATCH {line}" in script, line
    assert not list((tmp_path / "out").glob("runs/*.json"))
