import csv
import json
from pathlib import Path

import pytest

from reflowbench.config import merge_into, preset
from reflowbench.errors import ConfigError
from reflowbench.harness import plan_sweep, run_sweep
from reflowbench.schema.results import CSV_COLUMNS


def _quick(out, **sweep):
    spec = preset("embedded")
    merge_into(
        spec,
        {
            "reflow": {"calib_batches": 4, "calib_batch_size": 64, "diag_images": 128},
            "sweep": {"sparsities": [0.5, 0.9], "seeds": [0], "out": str(out), "progress": False, **sweep},
        },
        "test",
    )
    return spec


def test_sweep_writes_runs_csv_report_and_resumes(tmp_path):
    spec = _quick(tmp_path)
    counts = run_sweep(plan_sweep(spec), log=lambda m: None)
    assert counts == {"done": 2, "failed": 0, "skipped": 0, "elsewhere": 0, "total": 2}
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 2
    record = json.loads(runs[0].read_text())
    for key in ("targets", "dense", "pruned", "reflow", "variance", "cost", "environment", "key"):
        assert key in record
    assert record["targets"]["num_weights"] == 65_120 and record["targets"]["description"] == "all conv+linear weights"
    assert {"prune", "recalibrate", "eval_pruned", "eval_reflow"} <= set(record["cost"])
    assert record["environment"]["torch"]
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and set(CSV_COLUMNS) <= set(rows[0])
    assert {r["reflow"] for r in rows} == {"0", "1"}
    for name in ("report.md", "report.html", "figures/accuracy_vs_sparsity.png", "figures/signal_collapse.png", "figures/cost_vs_sparsity.png"):
        assert (tmp_path / name).stat().st_size > 0
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html  # self-contained

    # a second call skips everything; a changed setting or a lost/corrupt file is (re)run
    assert run_sweep(plan_sweep(spec), log=lambda m: None)["done"] == 0
    runs[0].write_text("{ truncated")
    spec.sweep.sparsities = [0.5, 0.9, 0.7]
    assert run_sweep(plan_sweep(spec), log=lambda m: None) == {"done": 2, "failed": 0, "skipped": 1, "elsewhere": 0, "total": 3}


def test_a_diverged_run_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """A pruner that diverges at one sparsity leaves a failed record (error, cost, notes), the other runs finish, the
    report lists it, a rerun skips it and --retry-failed runs it again."""
    from reflowbench.errors import DivergedError
    from reflowbench.pruners.magnitude import MagnitudePruner

    real_prune, calls = MagnitudePruner.prune, []

    def diverging(self, model, targets, sparsity, ctx):
        calls.append(sparsity)
        if sparsity == 0.9:
            ctx.notes["mp_failed_step"], ctx.notes["mp_steps"] = 1, [0.5, 0.9]
            raise DivergedError("mp: step 2 of 2 (sparsity 0.9) failed after the earlier steps' updates: overflow", ctx.notes)
        return real_prune(self, model, targets, sparsity, ctx)

    monkeypatch.setattr(MagnitudePruner, "prune", diverging)
    messages = []
    spec = _quick(tmp_path)
    assert run_sweep(plan_sweep(spec), log=messages.append) == {"done": 2, "failed": 1, "skipped": 0, "elsewhere": 0, "total": 2}
    failed = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("mp_s0.9_*.json")]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and "overflow" in failed[0]["error"]
    assert failed[0]["cost"]["prune"]["seconds"] >= 0 and failed[0]["notes"]["mp_failed_step"] == 1
    assert any("1 runs failed" in m and "mp s=0.9 seed=0" in m for m in messages)
    with open(tmp_path / "results.csv") as handle:
        assert {row["sparsity"] for row in csv.DictReader(handle)} == {"0.5"}
    report = (tmp_path / "report.md").read_text()
    assert "## Failed runs" in report
    failed_section = report.split("## Failed runs")[1]
    assert "| 0.9 | 0 | 2 of 2 |" in failed_section and "overflow" in failed_section
    assert run_sweep(plan_sweep(spec), log=lambda m: None)["done"] == 0 and calls == [0.5, 0.9]
    spec.sweep.retry_failed = True
    assert run_sweep(plan_sweep(spec), log=lambda m: None) == {"done": 1, "failed": 1, "skipped": 1, "elsewhere": 0, "total": 2}
    assert calls == [0.5, 0.9, 0.9]


def test_a_sweep_killed_mid_run_resumes_that_run_at_its_next_step(tmp_path, monkeypatch):
    """A multi-step run killed in its third step keeps steps 1-2 in <out>/partial/; the rerun starts at step 3, ends
    with the uninterrupted run's result, and removes the file once the record is written."""
    from reflowbench.harness.run import SweepState
    from reflowbench.harness.sweep import count_complete, estimate_seconds, pending_runs
    from reflowbench.pruners.hessian_base import HessianPruner
    from reflowbench.schema.results import load_runs, run_wall_seconds

    def staged(out):
        spec = _quick(out, methods=["chita++"], sparsities=[0.7])
        merge_into(spec, {"method_options": {"chita++": {"recompute_steps": 3, "iht_iters": 3}}}, "test")
        return spec

    assert run_sweep(plan_sweep(staged(tmp_path / "whole")), log=lambda m: None)["done"] == 1
    real_step = HessianPruner._step

    def killed_at_third(self, model, targets, masks, step, schedule, ctx):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, model, targets, masks, step, schedule, ctx)

    monkeypatch.setattr(HessianPruner, "_step", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan_sweep(staged(tmp_path / "killed")), log=lambda m: None)
    assert len(list((tmp_path / "killed" / "partial").glob("*.stages.pt"))) == 1 and not list((tmp_path / "killed" / "runs").glob("*.json"))
    monkeypatch.setattr(HessianPruner, "_step", real_step)
    progress = count_complete(plan_sweep(staged(tmp_path / "killed")))  # what --dry-run reports
    assert (progress.complete, progress.total, progress.saved) == (0, 1, 1)
    assert (progress.estimate_s, progress.unestimated) == (0.0, 1)  # no finished chita++ run in that folder to estimate from
    todo, _ = pending_runs(SweepState(plan_sweep(staged(tmp_path / "killed")), log=lambda m: None), plan_sweep(staged(tmp_path / "killed")))
    (whole_record,) = load_runs(tmp_path / "whole")
    assert estimate_seconds(tmp_path / "whole", todo) == (pytest.approx(run_wall_seconds(whole_record)), 0)  # the like run's wall time
    messages = []
    assert run_sweep(plan_sweep(staged(tmp_path / "killed")), log=messages.append)["done"] == 1
    assert any("1 to run (1 resume from saved steps)" in m for m in messages)
    assert any("resuming at step 3 of 3" in m for m in messages)
    assert not list((tmp_path / "killed" / "partial").glob("*"))
    (resumed,), (whole,) = ([json.loads(p.read_text()) for p in (tmp_path / name / "runs").glob("*.json")] for name in ("killed", "whole"))
    assert resumed["key"] == whole["key"] and resumed["notes"]["chita++_resumed_at_step"] == 3
    assert (resumed["pruned"], resumed["reflow"]) == (whole["pruned"], whole["reflow"])


def test_embedded_default_shows_signal_collapse_and_reflow_recovery(tmp_path):
    """The phenomenon, not just a run: at 90% sparsity MP collapses and REFLOW recovers most of it."""
    from reflowbench.harness.run import SweepState, run_one

    spec = preset("embedded")
    spec.sweep.progress = False
    plan = plan_sweep(spec, check_out=False)
    state = SweepState(plan, log=lambda m: None)
    pruner = plan.pruners[0]
    record = run_one(state, pruner, 0.9, 0, state.run_key(pruner, 0.9, 0))
    assert record["dense"]["top1"] > 95
    assert record["pruned"]["top1"] < 30  # near chance right after pruning
    assert record["reflow"]["top1"] > 75  # REFLOW gets most of it back
    assert record["variance"]["pruned"]["last"] < 0.1  # the last BN layer's output variance collapsed ...
    assert 0.7 < record["variance"]["reflow"]["last"] < 1.3  # ... and returns near 1
    _check_golden(record)


# Golden results: the committed embedded-default report (reports/embedded-default, made by `reflowbench run`). A code
# change that moves the dense, pruned or REFLOW top-1 of its run by more than this many points fails (450 test images:
# one image is 0.22 points).
GOLDEN_TOLERANCE = 1.0
GOLDEN = Path(__file__).resolve().parents[1] / "reports" / "embedded-default"


def _check_golden(record):
    from reflowbench.reports.compare import compare_results
    from reflowbench.schema.results import load_runs

    golden = [r for r in load_runs(GOLDEN) if (r["method"], r["sparsity"], r["seed"]) == (record["method"], record["sparsity"], record["seed"])]
    assert golden, f"no committed run of {record['method']} at {record['sparsity']} seed {record['seed']} in {GOLDEN}"
    assert abs(record["dense"]["top1"] - golden[0]["dense"]["top1"]) <= GOLDEN_TOLERANCE, (record["dense"], golden[0]["dense"])
    for cell in compare_results([record], golden, record["method"], tolerance=GOLDEN_TOLERANCE):
        assert abs(cell.difference) <= GOLDEN_TOLERANCE, f"{cell.metric} moved from the golden {cell.baseline[0]:.2f}% to {cell.candidate[0]:.2f}%"


# Golden results of every built-in pruner on the embedded default's model and data (reports/embedded-golden, made by
# `reflowbench run --methods mp,mp-layer,mp-hessian,woodfisher,cbs,chita,chita++ --chita++-recompute-steps 4
#  --sparsities 0.5,0.7 --seeds 0 --out reports/embedded-golden`): sparsities where every pruner's top-1 is the same
# with 1 and 2 torch threads (at 0.9 CHITA's IHT takes another path with the thread count), CHITA++ in 4 steps.
GOLDEN_PRUNERS = GOLDEN.parent / "embedded-golden"
GOLDEN_PRUNER_OPTIONS = {"chita++": {"recompute_steps": 4}}


def test_every_builtin_pruner_reproduces_its_golden_results(tmp_path):
    """A change that moves any built-in pruner's pruned or REFLOW top-1 at any golden point by more than
    GOLDEN_TOLERANCE fails, printing every moved cell; a new built-in pruner must add its golden runs."""
    from reflowbench.pruners import PRUNERS
    from reflowbench.reports.aggregate import markdown_table
    from reflowbench.reports.compare import compare_results, comparison_table
    from reflowbench.schema.results import load_runs

    golden = load_runs(GOLDEN_PRUNERS)
    methods = sorted({r["method"] for r in golden})
    builtin = sorted(name for name, cls in PRUNERS.items() if cls.__module__.startswith("reflowbench.pruners.") and "unstructured" in cls.PATTERNS)
    assert methods == builtin, f"golden runs in {GOLDEN_PRUNERS} for {methods}, built-in pruners {builtin}: regenerate it (command above)"
    spec = preset("embedded")
    merge_into(spec, {"methods": methods, "sparsities": sorted({r["sparsity"] for r in golden}), "seeds": [0], "out": str(tmp_path), "progress": False}, "test")
    for method, options in GOLDEN_PRUNER_OPTIONS.items():
        spec.method_options.setdefault(method, {}).update(options)  # on top of the preset's sizing to digits, as the CLI flag
    run_sweep(plan_sweep(spec), log=lambda m: None)
    ours = load_runs(tmp_path)
    assert sorted(r["key"] for r in ours) == sorted(r["key"] for r in golden), "the golden runs were made with other settings: regenerate them"
    moved = []
    for method in methods:
        cells = compare_results(ours, golden, method, tolerance=GOLDEN_TOLERANCE)
        assert len(cells) == 4, f"{method}: {len(cells)} golden cells, expected 2 sparsities x (pruned, REFLOW)"
        header, rows = comparison_table(cells, "this code", "golden")
        moved += [[method, *row] for row, cell in zip(rows, cells) if abs(cell.difference) > GOLDEN_TOLERANCE]
    table = markdown_table(["method", *header], moved)
    assert not moved, f"top-1 moved from the golden results by more than {GOLDEN_TOLERANCE:.1f} points:\n{table}"


def test_config_rejects_unknown_settings():
    with pytest.raises(ConfigError, match="unknown setting 'calib_batchez'"):
        merge_into(preset("embedded"), {"calib_batchez": 3}, "test")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("imagenet-huge")


def test_deterministic_switch_is_recorded_and_changes_no_cpu_result(tmp_path):
    import torch

    few_grads = {"woodfisher": {"num_grads": 256}}
    plain = _quick(tmp_path / "plain", methods=["woodfisher"], sparsities=[0.9])
    plain.method_options = few_grads
    run_sweep(plan_sweep(plain), log=lambda m: None)
    strict = _quick(tmp_path / "strict", methods=["woodfisher"], sparsities=[0.9], deterministic=True)
    strict.method_options = few_grads
    try:
        run_sweep(plan_sweep(strict), log=lambda m: None)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    (first,), (second,) = (list((tmp_path / name / "runs").glob("*.json")) for name in ("plain", "strict"))
    first, second = json.loads(first.read_text()), json.loads(second.read_text())
    assert first["key"] == second["key"]  # the switch is not a setting of the result: same run, same key
    assert (first["environment"]["deterministic"], second["environment"]["deterministic"]) == (False, True)
    assert first["pruned"] == second["pruned"] and first["reflow"] == second["reflow"]  # CPU kernels are deterministic already


def test_the_embedded_preset_sizes_every_registered_pruner_to_digits(tmp_path):
    """`reflowbench run --methods <any pruner>` on the embedded demo needs no extra flag: every pruner's Fisher images
    fit digits' share (the published N = 1000, or 500 x 16, do not)."""
    from reflowbench.harness.run import SweepState
    from reflowbench.pruners import PRUNERS

    spec = preset("embedded")
    spec.sweep.methods, spec.sweep.out = sorted(name for name, cls in PRUNERS.items() if "unstructured" in cls.PATTERNS), str(tmp_path / "out")
    state = SweepState(plan_sweep(spec), log=lambda m: None)  # raises DatasetError naming the pruner's flags otherwise
    assert 0 < state.sizes.fisher <= 539
