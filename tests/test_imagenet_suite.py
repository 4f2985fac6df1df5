"""`reflowbench suite imagenet-smoke` end to end on a synthetic ImageFolder tree at 224 x 224 (random weights, the two
smallest models, the cheapest settings), through submitit's local executor as a cluster would run it (one job per
suite job): every job runs, the per-folder and combined reports are written, a second submission has nothing left to
run, and each job's dry-run peak estimate is within a factor of the peak its runs measure. `suite imagenet` itself is
planned (settings, models, data)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import write_jpeg_tree
from reflowbench.cli import main

CLASSES = [f"n{i:08d}" for i in range(4)]
MEMORY_FACTOR = 2.0


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_imagenet") / "tree"
    write_jpeg_tree(root, CLASSES, per_class=25, size=224, splits=("train",))
    write_jpeg_tree(root, CLASSES, per_class=2, size=224, splits=("val",))
    return root


def test_the_smoke_suite_runs_end_to_end_and_its_cost_plan_holds(tree, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["suite", "imagenet-smoke", "--data", str(tree), "--out", str(out), "--threads", "1"]
    assert main([*common, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    estimates = [float(m) for m in re.findall(r"cost plan: peak about ([0-9.]+) GiB", dry)]
    assert len(estimates) == 4 and "DOES NOT FIT" not in dry
    submitit = ["--no-progress", "--executor", "submitit", "--submitit-cluster", "local", "--job-unit", "sweep", "--slurm-cpus", "1"]
    assert main([*common, *submitit]) == 0
    submitted = capsys.readouterr().out
    assert "4 submitit jobs" in submitted and "suite imagenet-smoke: " in submitted and "suite report:" in submitted
    folders = ["imagenet-mobilenet_v3_small", "imagenet-mobilenet_v2", "imagenet-mobilenet_v3_small-2of4", "imagenet-mobilenet_v3_small"]
    for folder, estimate in zip(folders, estimates):
        records = [json.loads(p.read_text()) for p in (out / folder / "runs").glob("*.json")]
        assert records and all(r["status"] == "complete" for r in records), folder
        measured = max(phase["peak_rss_mb"] for r in records for phase in r["cost"].values()) / 1024
        assert measured / MEMORY_FACTOR <= estimate <= measured * MEMORY_FACTOR, (folder, estimate, measured)
    small = [json.loads(p.read_text()) for p in (out / "imagenet-mobilenet_v3_small" / "runs").glob("*.json")]
    assert {r["method"] for r in small} == {"mp", "woodfisher", "cbs", "chita", "sparsegpt", "wanda"}
    assert any(set(r.get("corrections", {})) == {"statcorr", "variance-match"} for r in small)  # the MP job with every correction
    nm = [json.loads(p.read_text()) for p in (out / "imagenet-mobilenet_v3_small-2of4" / "runs").glob("*.json")]
    assert len(nm) == 5 and all(r["settings"]["targets"]["pattern"] == "2:4" for r in nm)
    assert (out / "imagenet-smoke-suite" / "report.md").exists() and (out / "imagenet-mobilenet_v2" / "report.md").exists()
    assert main([*common, *submitit]) == 0  # submitted again: everything is finished, nothing is submitted
    assert "0 to run: 0 submitit jobs" in capsys.readouterr().out


def test_the_imagenet_suite_plans_on_a_small_tree_without_its_weights(tree, tmp_path, capsys):
    """Its runs cannot be counted on a 100-image tree (the subsets need ImageNet's size), but its jobs are planned and costed."""
    args = ["suite", "imagenet", "--data", str(tree), "--out", str(tmp_path / "plan"), "--dry-run", "--random-weights", "--jobs", "4,9"]
    assert main([*args, "--plan-memory-gb", "80"]) == 0
    text = capsys.readouterr().out
    assert text.count("cost plan:") == 2 and text.count("runs not counted") == 2 and "a 80 GiB device" in text and "imagenet-mobilenet_v2-2of4" in text


def test_every_imagenet_job_fits_one_80_gb_gpu_by_the_pruners_own_formulas(tree):
    """The suite is sized for one 80 GB GPU: every pruner's working set within the preset's 70 GiB budget, every job's
    peak (three model copies, an evaluation batch) within 80 GiB, for all five models."""
    from reflowbench.config import SuiteCommandSpec
    from reflowbench.harness.cost_plan import Calibration, job_cost
    from reflowbench.harness.suite import plan_jobs

    command = SuiteCommandSpec(data=str(tree), random_weights=True, progress=False)
    per_image = {"resnet50": 100, "resnext101_32x8d": 250, "regnet_x_32gf": 250, "mobilenet_v2": 110, "mobilenet_v3_large": 80}  # MiB kept for a backward
    for job in plan_jobs("imagenet", command):
        spec = job.plan.spec
        calibration = Calibration(1e-3, 3e-3, per_image[spec.model.model] * 2**20, 0, eval_bytes=20 * 2**20)
        cost = job_cost(spec, job.plan.pruners, {p.name: 1 for p in job.plan.pruners}, calibration, torch.device("cpu"), plan_memory_gb=80)
        assert cost.fits, (job.folder, cost.peak_method, cost.peak_bytes / 2**30)


def test_a_suite_wide_memory_budget_reaches_every_job_and_a_bad_one_is_one_line(tree, tmp_path, capsys):
    from reflowbench.config import SuiteCommandSpec
    from reflowbench.harness.suite import plan_jobs

    planned = plan_jobs("imagenet", SuiteCommandSpec(data=str(tree), random_weights=True, memory_budget_gb=16, dry_run=True))
    assert {job.plan.spec.sweep.memory_budget_gb for job in planned} == {16}  # the preset's 70 GiB replaced
    assert {job.plan.spec.sweep.memory_budget_gb for job in plan_jobs("imagenet", SuiteCommandSpec(data=str(tree), dry_run=True))} == {70}
    assert main(["suite", "imagenet", "--data", str(tree), "--out", str(tmp_path / "o"), "--memory-budget-gb", "-1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory-budget-gb must be a number of GiB > 0" in err[0]


def test_the_suite_as_the_issue_writes_it_without_data_is_one_line_before_anything_runs(tmp_path, capsys):
    """`reflowbench suite imagenet` with no --data: refused while planning (no job header printed, nothing written)."""
    out = tmp_path / "o"
    assert main(["suite", "imagenet", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "dataset imagenet needs --data PATH to an ImageFolder tree" in err[0]
    assert "job 1" not in captured.out and not out.exists()
