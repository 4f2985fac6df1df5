"""`reflowbench suite`: jobs from a suite file, shared folders, resume, dry run, the combined report, bad input."""

import json

import pytest

from reflowbench.cli import main
from reflowbench.suites import SUITES, fill_placeholders, load_suite

QUICK = {"reflow": {"calib_batches": 2, "calib_batch_size": 32, "diag_images": 64}, "sweep": {"seeds": [0]}}
WF = {"num_grads": 16, "chunk_images": 16}


def _suite_file(tmp_path, jobs):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"description": "a tiny suite", "jobs": jobs}))
    return str(path)


def _job(folder, methods, sparsities, options=None, role="sweep"):
    settings = {**QUICK, "sweep": {**QUICK["sweep"], "methods": methods, "sparsities": sparsities}, "method_options": options or {}}
    return {"folder": folder, "preset": "embedded", "settings": settings, "role": role}


def test_suite_runs_its_jobs_resumes_and_writes_the_combined_report(tmp_path, capsys):
    jobs = [
        _job("small", ["mp", "woodfisher"], [0.5, 0.7, 0.9], {"woodfisher": WF}),
        _job("small", ["woodfisher"], [0.7], {"woodfisher": {**WF, "update": "none"}}, role="ablation"),
    ]
    suite, out = _suite_file(tmp_path, jobs), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "small" / "runs").glob("*.json"))) == 7  # 2 methods x 3 sparsities + 1 ablation cell
    report = (out / "tiny-suite" / "report.md").read_text()
    assert "## Best method at each sparsity" in report and "| smallcnn | 0.9 |" in report and "woodfisher" in report
    assert "## Completeness\n\nEvery run of the suite is in: 7 runs." in report
    assert (out / "tiny-suite" / "figures" / "accuracy_vs_sparsity.png").exists() and (out / "small" / "report.md").exists()
    assert "## Accuracy for the compute" in report and (out / "tiny-suite" / "figures" / "accuracy_vs_cost.png").exists()
    main_tables = report.split("## Configurations")[0] + report.split("## Accuracy for the compute")[1].split("## Cost")[0]
    assert "update=none" not in main_tables  # the one-sparsity ablation cell stays out of the main tables
    assert "## Ablation cells" in report and "| smallcnn | woodfisher update=none | 0.7 | 1 |" in report
    timing = json.loads((out / "tiny-suite" / "timing.json").read_text())
    assert timing["runs"] == 7 and 0 < timing["floor_seconds"] <= timing["wall_seconds"] and "## Time of the last invocation" in report
    capsys.readouterr()
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0  # resumed: nothing left to run
    assert "7 runs, 7 already finished, ran 0" in capsys.readouterr().out
    (next((out / "small" / "runs").glob("mp_s0.9_*.json"))).unlink()
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "5 of 6 runs finished, 1 to run (about " in text and "at the mean wall time of like finished runs here)" in text
    assert "would run 1 (about " in text and "of runs and open settings searches with their tuned rows)" in text
    assert main(["suite", suite, "--out", str(out), "--report-only"]) == 0  # the report says itself what it lacks
    report = (out / "tiny-suite" / "report.md").read_text()
    assert "**Partial**: 6 of the 7 runs planned so far are in; the missing runs would take about " in report
    assert "- small: smallcnn, mp,woodfisher (woodfisher {" in report and "5 of 6 runs finished, 1 to run" in report
    assert "- small: smallcnn, woodfisher (woodfisher {" not in report.split("## Accuracy")[0].split("5 of 6")[1]  # the finished ablation job is not listed


def test_named_suite_is_well_formed_and_fills_the_models_dir():
    suite = load_suite("cifar10")
    assert {job["folder"] for job in suite["jobs"]} == {"cifar10-resnet20", "cifar10-resnet56", "cifar10-mobilenetv1", "cifar10-resnet20-objective"}
    reference_methods = {}
    for job in suite["jobs"]:
        if job.get("role", "sweep") == "sweep":
            reference_methods.setdefault(job["folder"], set()).update(job["settings"]["sweep"]["methods"])
    assert set(reference_methods) == {"cifar10-resnet20", "cifar10-resnet56", "cifar10-mobilenetv1"}
    assert all(methods >= {"mp", "woodfisher", "cbs", "chita", "chita++", "sparsegpt", "obc", "wanda"} for methods in reference_methods.values())
    filled = fill_placeholders(suite["jobs"][0]["settings"], "/models")
    assert filled["model"]["checkpoint"] == "/models/resnet20_cifar10_jpeg.pt"
    assert "{models}" in SUITES["cifar10"]["jobs"][0]["settings"]["model"]["checkpoint"]  # the definition itself is untouched


def test_suite_bad_input_is_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["suite", "nosuch", "--out", out]) == 2
    assert "unknown suite 'nosuch'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    assert main(["suite", str(broken), "--out", out]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    no_jobs = tmp_path / "nojobs.json"
    no_jobs.write_text(json.dumps({"jobs": []}))
    assert main(["suite", str(no_jobs), "--out", out]) == 2
    assert "folder name per job" in capsys.readouterr().err
    suite = _suite_file(tmp_path, [_job("a", ["mp"], [0.5]), _job("b", ["mp"], [1.5])])
    assert main(["suite", suite, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "job 2 (b)" in err and "sparsity must be in [0, 1)" in err
    assert not list((tmp_path / "out" / "a").glob("runs/*.json"))  # every job is checked before the first runs
    assert main(["suite", suite, "--out", out, "--only", "c"]) == 2
    assert "--only names ['c']" in capsys.readouterr().err
    assert main(["suite", "cifar10", "--out", out, "--models-dir", str(tmp_path / "none"), "--data", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.shared
def test_cifar10_suite_plans_against_the_shared_files(tmp_path):
    """Every job of the cifar10 suite plans with ../shared (checkpoints, data, options) without running anything."""
    from conftest import SHARED_DATA, SHARED_MODELS
    from reflowbench.config import SuiteCommandSpec
    from reflowbench.harness.suite import plan_jobs

    command = SuiteCommandSpec(out=str(tmp_path), models_dir=str(SHARED_MODELS), data=str(SHARED_DATA), dry_run=True)
    planned = plan_jobs("cifar10", command)
    # main sweeps, the labelled variants (CHITA IHT on each model, CHITA++ IHT and the active set on ResNet-20), selection x
    # update, objective, tuned per model; the layer-wise family's reference rows and tuned rows per model
    assert sum(len(job.plan.pruners) for job in planned) == 3 * 5 + 5 + 7 + 8 + 3 * 3 + 3 * (3 + 3)
    assert [job.tune.method for job in planned if job.tune] == ["woodfisher", "cbs", "chita", "sparsegpt", "obc", "wanda"] * 3
    assert [job.folder for job in planned if job.tune][-6:] == ["cifar10-mobilenetv1"] * 6


def test_spent_seconds_counts_shared_gradients_once():
    from reflowbench.reports.suite_report import suite_timing
    from reflowbench.schema.results import run_wall_seconds, spent_seconds

    cost = {"gradients": {"seconds": 5.0}, "curvature": {"seconds": 3.0}, "prune": {"seconds": 10.0}, "eval_pruned": {"seconds": 2.0}}
    first = {"cost": cost, "notes": {}}
    reused = {"cost": cost, "notes": {"gradients_reused": True}}
    assert spent_seconds(first, "prune") == 10.0 and spent_seconds(reused, "prune") == 2.0
    assert spent_seconds(reused, "gradients") == 0.0 and spent_seconds(reused, "eval_pruned") == 2.0
    assert run_wall_seconds(first) == 12.0 and run_wall_seconds(reused) == 4.0  # prune + evaluation; sub-phases are inside prune
    timing = suite_timing([first, reused], wall_seconds=20.0)
    assert timing["floor_seconds"] == 4.0 and timing["wall_over_floor"] == 5.0 and timing["outside_runs_seconds"] == 4.0


def test_tuned_job_searches_its_settings_then_runs_them(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"damping": [{"damp": 1e-5}, {"damp": 1e-2, "damp_mode": "relative"}]}))
    job = _job("small", ["woodfisher"], [0.7, 0.9], {"woodfisher": WF}, role="tuned")
    job["tune"] = {"method": "woodfisher", "at_sparsities": [0.8], "grid": str(grid), "seeds": [0]}
    suite, out = _suite_file(tmp_path, [job]), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0
    assert "settings search 0 of 2 scores in" in capsys.readouterr().out and not (out / "small" / "tuning").exists()
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0
    chosen = json.loads((out / "small" / "tuning" / "smallcnn_woodfisher.config.json").read_text())["method_options"]["woodfisher"]
    runs = [json.loads(p.read_text()) for p in (out / "small" / "runs").glob("*.json")]
    assert len(runs) == 2 and all(r["options"]["damp"] == chosen["damp"] and r["options"]["num_grads"] == 16 for r in runs)
    capsys.readouterr()
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0  # once chosen, the dry run counts the tuned runs
    listed = capsys.readouterr().out
    assert f"'damp': {chosen['damp']}" in listed.split("tuned woodfisher")[1] and "2 of 2 runs finished, 0 to run" in listed and "would run 0" in listed
    (out / "small" / "tuning" / "smallcnn_woodfisher.json").unlink()  # the search open again, with woodfisher runs here to estimate from
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "settings search 0 of 2 scores in (about " in listed and "more, at the mean pruning and REFLOW time of the woodfisher runs here)" in listed
    assert "its tuned row (2 runs, about " in listed and "would run 0 (about " in listed
    bad = _job("small", ["woodfisher"], [0.7], role="tuned")
    bad["tune"] = {"method": "mp", "seeds": [0]}
    assert main(["suite", _suite_file(tmp_path, [bad]), "--out", str(out)]) == 2
    assert "job 1 (small)" in capsys.readouterr().err


def test_a_run_found_in_two_folders_counts_once():
    from reflowbench.reports.suite_report import _unique_runs

    run = {"key": "abc", "seed": 0}
    assert _unique_runs([run, dict(run), {"key": "def", "seed": 1}]) == [run, {"key": "def", "seed": 1}]


def test_run_suite_is_the_suite_command_and_refuses_other_flags(tmp_path, capsys):
    assert main(["run", "--suite", "nosuch", "--out", str(tmp_path / "o")]) == 2
    assert "unknown suite 'nosuch'" in capsys.readouterr().err
    assert main(["run", "--suite", "cifar10", "--model", "resnet20", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "it takes --data, --device, --download, --memory-budget-gb, --out" in err and "not --model" in err and not (tmp_path / "o").exists()
    for flag in (
        ["--calib-batches", "4"],
        ["--woodfisher-damp", "0.1"],
    ):  # every other flag too, a pruner's options included (ignored before)
        assert main(["run", "--suite", "cifar10", *flag, "--out", str(tmp_path / "o")]) == 2
        assert f"not {flag[0]}" in capsys.readouterr().err
    for command in ("run", "--suite"), ("suite",):  # the executor flags are the suite's too, checked before anything is planned
        assert main([command[0], *command[1:], "cifar10", "--executor", "slurmish", "--out", str(tmp_path / "o")]) == 2
        assert "--executor must be one of local, submitit" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_durations_read_as_a_person_would_say_them():
    from reflowbench.utils.cost import format_duration

    assert [format_duration(s) for s in (42, 89.4, 1020, 5399, 12240)] == ["42 s", "89 s", "17 min", "90 min", "3.4 h"]


def test_report_only_without_the_data_still_writes_the_report_and_says_why_completeness_is_unchecked(tmp_path, capsys, monkeypatch):
    import reflowbench.harness.suite as comparison
    from reflowbench.errors import DatasetError

    jobs = [_job("small", ["mp"], [0.5])]
    suite, out = _suite_file(tmp_path, jobs), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0

    def no_data(job):
        raise DatasetError("CIFAR-10 could not be loaded from /nowhere (add --download to fetch it)")

    monkeypatch.setattr(comparison, "job_status", no_data)  # keying the runs needs the data, as for a user without it
    assert main(["suite", suite, "--out", str(out), "--report-only"]) == 0
    report = (out / "tiny-suite" / "report.md").read_text()
    assert "## Completeness\n\nNot checked which of the suite's runs are missing: CIFAR-10 could not be loaded from /nowhere" in report
    assert "## Best method at each sparsity" in report and "## Per-model reports" in report  # the rest of the report is whole


def test_the_dry_run_counts_search_scores_over_the_memory_budget(tmp_path, capsys, monkeypatch):
    """A tuned job whose search skipped a cell for memory says so in the dry run, open or chosen."""
    from reflowbench.errors import MemoryBudgetError
    from reflowbench.harness import tuning

    real_prune = tuning.prune_fresh

    def prune_fresh(state, pruner, sparsity, seed, ledger, keep_curvature=False):
        if pruner.options.num_grads == 32:
            raise MemoryBudgetError("the gradient matrix needs 9.00 GiB, over the memory budget of 8.00 GiB")
        return real_prune(state, pruner, sparsity, seed, ledger, keep_curvature)

    monkeypatch.setattr(tuning, "prune_fresh", prune_fresh)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"num_grads": [{"num_grads": 16}, {"num_grads": 32}]}))
    job = _job("small", ["woodfisher"], [0.7], {"woodfisher": WF}, role="tuned")
    job["tune"] = {"method": "woodfisher", "at_sparsities": [0.8], "grid": str(grid), "seeds": [0]}
    suite, out = _suite_file(tmp_path, [job]), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0
    assert (
        "tuned woodfisher {'num_grads': 16, 'chunk_images': 16} (1 scores of its search over the memory budget): 1 of 1 runs finished"
        in capsys.readouterr().out
    )


def test_suite_report_sets_each_tuned_row_beside_its_defaults_row(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"damping": [{"damp": 1e-2, "damp_mode": "relative"}, {"damp": 1e-1, "damp_mode": "relative"}]}))
    tuned = _job("small", ["woodfisher"], [0.5, 0.7], {"woodfisher": WF}, role="tuned")
    tuned["tune"] = {"method": "woodfisher", "at_sparsities": [0.7], "grid": str(grid), "seeds": [0]}
    suite, out = _suite_file(tmp_path, [_job("small", ["mp", "woodfisher"], [0.5, 0.7], {"woodfisher": WF}), tuned]), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0
    report = (out / "tiny-suite" / "report.md").read_text()
    section = report.split("## Fair settings: published defaults and tuned")[1].split("\n## ")[0]
    chosen = json.loads((out / "small" / "tuning" / "smallcnn_woodfisher.config.json").read_text())["method_options"]["woodfisher"]
    assert f"defaults `damp=1e-05, damp_mode=absolute`; tuned `damp={chosen['damp']}, damp_mode=relative`" in section
    assert "(relative loss 1.000; [search](../small/tuning/smallcnn_woodfisher.md))" in section  # one point: the chosen cell is the best there
    runs = [json.loads(p.read_text()) for p in (out / "small" / "runs").glob("woodfisher_s0.7_*.json")]
    (default_run,) = [r for r in runs if r["options"]["damp_mode"] == "absolute"]
    (tuned_run,) = [r for r in runs if r["options"]["damp_mode"] == "relative"]
    row = next(line for line in section.splitlines() if line.startswith("| 0.7 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{default_run['pruned']['top1']:.2f} → {default_run['reflow']['top1']:.2f}"
    assert cells[2] == f"{tuned_run['pruned']['top1']:.2f} → {tuned_run['reflow']['top1']:.2f}"


def test_a_part_of_a_suite_runs_alone_and_leaves_the_combined_report_to_the_whole(tmp_path, capsys):
    suite = _suite_file(tmp_path, [_job("a", ["mp"], [0.5]), _job("b", ["mp"], [0.5, 0.7])])
    out = tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "[1/2] job 1: a:" in listed and "[2/2] job 2: b:" in listed
    assert main(["suite", suite, "--out", str(out), "--dry-run", "--jobs", "2,1"]) == 0
    listed = capsys.readouterr().out
    assert listed.index("[1/2] job 2: b:") < listed.index("[2/2] job 1: a:")  # in the order given
    assert main(["suite", suite, "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert not (out / "a").exists() and len(list((out / "b" / "runs").glob("*.json"))) == 2  # job 2 alone
    assert "the combined report is left as it was" in text and not (out / "tiny-suite" / "report.md").exists()
    for flags, message in (
        (["--jobs", "3"], "--jobs names [3], but suite"),
        (["--jobs", "2,1,2"], "--jobs names [2] more than once"),
        (["--only", "b", "--report-only"], "--report-only writes the combined report from every job"),
    ):
        assert main(["suite", suite, "--out", str(out), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["suite", suite, "--out", str(out), "--no-progress"]) == 0  # the whole suite: job 1 runs, the report is written
    assert "Every run of the suite is in: 3 runs." in (out / "tiny-suite" / "report.md").read_text()


def test_a_corrections_suite_reports_every_correction_with_and_without_batchnorm(tmp_path, capsys):
    import torch

    from reflowbench.models import build_model

    checkpoint = tmp_path / "ln.pt"  # untrained weights: what runs and is reported, not how well
    torch.save(build_model("smallcnn-ln").state_dict(), checkpoint)
    bn = _job("bn", ["mp"], [0.5, 0.7, 0.9])
    bn["settings"]["corrections"] = {"corrections": ["none", "reflow", "statcorr"]}
    ln = _job("ln", ["mp"], [0.5, 0.9])
    ln["settings"].update(model={"model": "smallcnn-ln", "checkpoint": str(checkpoint)}, corrections={"corrections": ["none", "statcorr", "repair"]})
    out = tmp_path / "out"
    assert main(["suite", _suite_file(tmp_path, [bn, ln]), "--out", str(out), "--no-progress"]) == 0
    report = (out / "tiny-suite" / "report.md").read_text()
    assert "## Corrections" in report and "| smallcnn | mp | 0.9 | statcorr | 1 |" in report and "| smallcnn-ln | mp | 0.9 | repair | 1 |" in report
    assert "## Best method at each sparsity" in report and (out / "tiny-suite" / "figures" / "corrections.png").exists()
    assert main(["suite", _suite_file(tmp_path, [ln]), "--out", str(tmp_path / "only-ln"), "--no-progress"]) == 0  # no BN at all
    report = (tmp_path / "only-ln" / "tiny-suite" / "report.md").read_text()
    assert "## Corrections" in report and "## Best method" not in report and "## Per-model reports" in report


def test_the_corrections_suite_is_well_formed():
    suite = load_suite("corrections")
    by_folder = {}
    for job in suite["jobs"]:
        by_folder.setdefault(job["folder"], []).append(job["settings"])
    assert set(by_folder) == {
        "corrections-resnet20",
        "corrections-resnet56",
        "corrections-mobilenetv1",
        "corrections-folded",
        "corrections-embedded",
        "corrections-resnet20-gn",
    }
    for folder in ("corrections-resnet20", "corrections-resnet56", "corrections-mobilenetv1"):
        (settings,) = by_folder[folder]
        assert settings["corrections"]["corrections"] == ["none", "reflow", "statcorr", "variance-match"]
        assert settings["sweep"]["methods"] == ["mp", "woodfisher", "chita"] and settings["sweep"]["sparsities"] == [0.7, 0.8, 0.9]
    assert all(s["model"]["fold_bn"] and "reflow" not in s["corrections"]["corrections"] for s in by_folder["corrections-folded"])
    assert {s["model"]["model"] for s in by_folder["corrections-embedded"]} == {"smallcnn-gn", "smallcnn-ln"}
    (trained,) = by_folder["corrections-resnet20-gn"]  # the GroupNorm ResNet-20 the repository holds: no REFLOW, 0.5-0.9
    assert trained["model"]["checkpoint"] == "checkpoints/resnet20_gn_cifar10_jpeg.pt" and "reflow" not in trained["corrections"]["corrections"]
    assert trained["sweep"]["sparsities"] == [0.5, 0.6, 0.7, 0.8, 0.9]


def test_a_suite_submitted_as_local_submitit_jobs_gives_the_in_process_suite(tmp_path, capsys):
    """--executor submitit: the main job's runs and the settings search go in one batch; the tuned row follows once
    the search has chosen; the folder and combined reports are written; the runs are the in-process suite's."""
    pytest.importorskip("submitit")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"damping": [{"damp": 1e-5}, {"damp": 1e-2, "damp_mode": "relative"}]}))
    tuned = _job("small", ["woodfisher"], [0.7], {"woodfisher": WF}, role="tuned")
    tuned["tune"] = {"method": "woodfisher", "at_sparsities": [0.8], "grid": str(grid), "seeds": [0]}
    suite = _suite_file(tmp_path, [_job("small", ["mp", "woodfisher"], [0.5, 0.7], {"woodfisher": WF}), tuned])
    assert main(["suite", suite, "--out", str(tmp_path / "here"), "--no-progress", "--threads", "1"]) == 0
    jobs = ["--executor", "submitit", "--submitit-cluster", "local", "--slurm-cpus", "1"]
    capsys.readouterr()
    assert main(["suite", suite, "--out", str(tmp_path / "jobs"), "--no-progress", *jobs]) == 0
    text = capsys.readouterr().out
    assert "4 to run, and 1 settings searches (their tuned rows follow once they have chosen): 3 submitit jobs" in text
    assert "settings search for woodfisher" in text and "tiny.json: 5 runs in 4 submitit jobs, 0 already finished" in text
    runs = {
        name: {r["key"]: r for r in map(lambda p: json.loads(p.read_text()), (tmp_path / name / "small" / "runs").glob("*.json"))} for name in ("here", "jobs")
    }
    assert len(runs["jobs"]) == 5 and sorted(runs["jobs"]) == sorted(runs["here"])  # the same runs, tuned row included
    for key, record in runs["jobs"].items():
        assert record["pruned"]["top1"] == pytest.approx(runs["here"][key]["pruned"]["top1"], abs=0.1), key
    assert (tmp_path / "jobs" / "small" / "report.md").exists()
    report = (tmp_path / "jobs" / "tiny-suite" / "report.md").read_text()
    assert "Every run of the suite is in: 5 runs." in report and "## Fair settings" in report
    assert main(["suite", suite, "--out", str(tmp_path / "jobs"), "--no-progress", *jobs]) == 0  # again: nothing left
    assert "5 runs known, 0 to run: 0 submitit jobs" in capsys.readouterr().out


def test_a_suite_on_slurm_is_one_array_and_no_wait_returns_at_once(tmp_path, capsys, fake_slurm):
    """Through a stand-in sbatch and srun (they keep the script submitit writes): every job's runs of a two-job suite in
    one array, the job ids printed, nothing run or reported here with --no-wait."""
    pytest.importorskip("submitit")
    suite = _suite_file(tmp_path, [_job("a", ["mp"], [0.5, 0.7]), _job("b", ["mp", "woodfisher"], [0.5], {"woodfisher": WF})])
    out = tmp_path / "out"
    args = ["suite", suite, "--out", str(out), "--executor", "submitit", "--submitit-cluster", "slurm", "--slurm-gpus", "1", "--no-wait"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 runs known, 4 to run: 3 submitit jobs" in text and "job 4242_0: suite job 1 (a): mp seed 0 s=0.5,0.7" in text
    assert "job 4242_2: suite job 2 (b): woodfisher seed 0 s=0.5" in text and "once they are done, the same command again" in text
    script = (fake_slurm / "script.sh").read_text()
    assert "#SBATCH --array=0-2%3" in script and "#SBATCH --gpus-per-node=1" in script
    assert not list(out.glob("*/runs/*.json")) and not (out / "tiny-suite" / "report.md").exists()


def test_the_dry_run_says_what_submitit_would_submit_and_submits_nothing(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"damping": [{"damp": 1e-5}, {"damp": 1e-2, "damp_mode": "relative"}]}))
    tuned = _job("small", ["woodfisher"], [0.7], {"woodfisher": WF}, role="tuned")
    tuned["tune"] = {"method": "woodfisher", "at_sparsities": [0.8], "grid": str(grid), "seeds": [0]}
    suite, out = _suite_file(tmp_path, [_job("small", ["mp"], [0.5, 0.7]), tuned]), tmp_path / "out"
    assert main(["suite", suite, "--out", str(out), "--dry-run", "--no-cost-plan", "--executor", "submitit", "--job-unit", "run"]) == 0
    text = capsys.readouterr().out
    assert "submitit: would submit 3 jobs in one array (--job-unit run, 1 rank(s) each), 1 of them settings searches" in text
    assert "for 2 runs" in text and not out.exists()
