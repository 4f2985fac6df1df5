"""The suite's cost plan: the pruners' working-set formulas against what they allocate, a job that cannot fit flagged
with the settings that lower it, and the dry-run's estimated peak against the peak a run of the job measures."""

from __future__ import annotations

import json

import pytest
import torch

from reflowbench.cli import main
from reflowbench.config import merge_into, preset
from reflowbench.harness import plan_sweep
from reflowbench.harness.cost_plan import STAGED_CACHE_BYTES, Calibration, job_cost, staged_cache_bytes
from reflowbench.hessian.gradients import gradient_bytes
from reflowbench.models import build_model
from reflowbench.pruners import make_pruner, select_targets


def test_the_hessian_working_set_counts_g_as_collected_and_shrinks_with_its_knobs():
    targets = select_targets(build_model("resnet20"))
    woodfisher = make_pruner("woodfisher", {"num_grads": 200})
    base = woodfisher.working_set(targets, 0)
    assert base.bytes >= gradient_bytes(targets, woodfisher.gradient_spec())  # G itself, as collect_gradients allocates it
    half = make_pruner("woodfisher", {"num_grads": 200, "dtype": "bfloat16"}).working_set(targets, 0)
    streamed = make_pruner("woodfisher", {"num_grads": 200, "layer_groups": 4}).working_set(targets, 0)
    assert half.bytes < base.bytes and streamed.bytes < base.bytes and "--woodfisher-dtype bfloat16" in base.knobs
    parallel = make_pruner("sparsegpt", {"mode": "parallel"}).working_set(targets, 0)
    sequential = make_pruner("sparsegpt", {"mode": "sequential"}).working_set(targets, 0)
    assert parallel.bytes > sequential.bytes > 0


def test_a_joint_update_pruner_counts_a_restricted_solve_group_not_the_factors(monkeypatch):
    from reflowbench.hessian import block_fisher

    targets = select_targets(build_model("resnet20"))
    cbs = make_pruner("cbs", {"num_grads": 200, "block_size": 128})
    assert not cbs.factorises() and "restricted solve" in cbs.working_set(targets, 0).what
    wide = cbs.working_set(targets, 0).bytes
    monkeypatch.setattr(block_fisher, "GATHER_GROUP_ELEMENTS", 1)  # one block per group: the plan follows the solve's grouping
    assert cbs.working_set(targets, 0).bytes < wide


def test_a_job_over_the_memory_budget_is_flagged_with_the_knobs_that_lower_it():
    spec = preset("cifar10")
    merge_into(spec, {"model": {"model": "resnet56"}, "sweep": {"methods": ["mp", "woodfisher"], "memory_budget_gb": 0.5}}, "test")
    pruners = [make_pruner("mp"), make_pruner("woodfisher")]
    calibration = Calibration(forward_s=1e-4, backward_s=3e-4, activation_bytes=2**20, model_bytes=4 * 10**6)
    cost = job_cost(spec, pruners, {"mp": 2, "woodfisher": 2}, calibration, torch.device("cpu"))
    assert not cost.fits and "--woodfisher-num-grads" in cost.knobs and cost.peak_method.startswith("woodfisher")
    assert "woodfisher's working set" in cost.verdict() and "over --memory-budget-gb 0.5" in cost.verdict()  # the machine holds it
    device = job_cost(spec, pruners, {"mp": 1}, calibration, torch.device("cpu"), plan_memory_gb=0.01)
    assert device.verdict().startswith("DOES NOT FIT: lower it with") and "--woodfisher-num-grads" in device.verdict()
    assert cost.run_seconds["woodfisher"] > cost.run_seconds["mp"] and cost.todo_seconds == pytest.approx(2 * sum(cost.run_seconds.values()))
    roomy = merge_into(spec, {"sweep": {"memory_budget_gb": 64.0}}, "test") or spec
    assert job_cost(roomy, pruners, {"mp": 1}, calibration, torch.device("cpu")).fits


MEMORY_FACTOR = 2.0  # the dry-run's peak against the largest peak RSS a run of the job records, either way


def test_the_dry_run_plans_each_job_and_its_peak_is_within_a_factor_of_the_measured_one(tmp_path, capsys):
    suite = tmp_path / "tiny.json"
    settings = {"sweep": {"methods": ["mp", "woodfisher"], "sparsities": [0.7], "seeds": [0]}, "method_options": {"woodfisher": {"num_grads": 128}}}
    settings["reflow"] = {"calib_batches": 2, "calib_batch_size": 32, "diag_images": 64}
    suite.write_text(json.dumps({"jobs": [{"folder": "tiny", "preset": "embedded", "settings": settings}]}))
    out = tmp_path / "out"
    assert main(["suite", str(suite), "--out", str(out), "--dry-run"]) == 0
    (plan_line,) = [line for line in capsys.readouterr().out.splitlines() if "cost plan:" in line]
    assert "fits" in plan_line and "per run mp" in plan_line and "woodfisher" in plan_line
    estimate_gib = float(plan_line.split("peak about ")[1].split(" GiB")[0])
    assert main(["suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(p.read_text()) for p in (out / "tiny" / "runs").glob("*.json")]
    measured_gib = max(phase["peak_rss_mb"] for r in records for phase in r["cost"].values()) / 1024
    assert measured_gib / MEMORY_FACTOR <= estimate_gib <= measured_gib * MEMORY_FACTOR, (estimate_gib, measured_gib)


def test_no_cost_plan_leaves_the_dry_run_as_it_was(tmp_path, capsys):
    spec = preset("embedded")
    plan_sweep(spec, check_out=False)  # the embedded preset plans (the suite below uses it)
    suite = tmp_path / "tiny.json"
    suite.write_text(
        json.dumps({"jobs": [{"folder": "tiny", "preset": "embedded", "settings": {"sweep": {"methods": ["mp"], "sparsities": [0.5], "seeds": [0]}}}]})
    )
    assert main(["suite", str(suite), "--out", str(tmp_path / "o"), "--dry-run", "--no-cost-plan"]) == 0
    assert "cost plan" not in capsys.readouterr().out


def test_a_bad_plan_memory_is_one_line(tmp_path, capsys):
    assert main(["suite", "patterns", "--out", str(tmp_path / "o"), "--dry-run", "--plan-memory-gb", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plan-memory-gb must be a number of GiB >= 0" in err[0] and not (tmp_path / "o").exists()


def test_a_layer_by_layer_correction_is_planned_in_stages_or_as_a_pass_per_layer():
    """statcorr and repair measure one layer at a time: in stages, one pass after the dense one; where the stages'
    cache would not hold every calibration image's activations, a pass per layer cut short after it (ResNet-20's 19 BN
    layers: about ten)."""
    for eval_bytes, layer_passes in ((2**10, lambda k: 1), (2**30, lambda k: (k + 1) / 2)):
        calibration = Calibration(forward_s=1e-4, backward_s=3e-4, activation_bytes=2**20, model_bytes=4 * 10**6, eval_bytes=eval_bytes)
        seconds = {}
        for corrections in (["reflow"], ["reflow", "statcorr"], ["reflow", "repair"]):
            spec = preset("cifar10")
            merge_into(spec, {"model": {"model": "resnet20"}, "sweep": {"methods": ["mp"]}, "corrections": {"corrections": corrections}}, "test")
            seconds[corrections[-1]] = job_cost(spec, [make_pruner("mp")], {"mp": 1}, calibration, torch.device("cpu")).run_seconds["mp"]
        images = spec.reflow.calib_batches * spec.reflow.calib_batch_size
        evaluation = (10000 + spec.reflow.diag_images) * calibration.forward_s  # the corrected network's test and diagnostic passes
        assert seconds["statcorr"] - seconds["reflow"] == pytest.approx(evaluation + images * (1 + layer_passes(19)) * calibration.forward_s)  # 19 BN layers
        assert seconds["repair"] - seconds["reflow"] == pytest.approx(evaluation + images * (1 + layer_passes(20)) * calibration.forward_s)  # 20 pruned layers
        assert staged_cache_bytes(spec, calibration) == min(images * eval_bytes, STAGED_CACHE_BYTES)  # the stages' kept values, capped
    merge_into(spec, {"corrections": {"corrections": ["reflow"]}}, "test")
    assert staged_cache_bytes(spec, calibration) == 0  # REFLOW alone keeps nothing between stages
