"""Results never mix settings: grouping by the full settings, run keys that cover device and data
content, subsets that do not depend on one another's sizes, readable files, and shared --out folders."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from reflowbench.cli import main
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.harness.claims import claim_path, try_claim
from reflowbench.pruners import make_pruner

EMBEDDED_QUICK = ["--sparsities", "0.5,0.9", "--seeds", "0", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress"]


def _rows(out):
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_settings_in_one_folder_give_two_rows(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", *EMBEDDED_QUICK, "--calib-batches", "2", "--out", str(out)]) == 0
    assert main(["run", *EMBEDDED_QUICK, "--calib-batches", "4", "--out", str(out)]) == 0
    rows = [r for r in _rows(out) if r["reflow"] == "1" and r["sparsity"] == "0.9"]
    assert len(rows) == 2 and len({r["config"] for r in rows}) == 2
    assert sorted(r["variant"] for r in rows) == ["reflow.calib_batches=2", "reflow.calib_batches=4"]
    report = (out / "report.md").read_text()
    configurations = report.split("## Configurations")[1].split("\n## ")[0]
    assert "| smallcnn | mp reference | reference | reflow.calib_batches=2 | 2 |" in configurations  # the first of the two, named once
    assert "| smallcnn | mp reflow.calib_batches=4 | – | reflow.calib_batches=4 | 2 |" in configurations
    table_rows = [line for line in report.splitlines() if line.startswith("| smallcnn | mp") and "| 0.9 |" in line]
    assert len(table_rows) == 2 and all("| 1 |" in line for line in table_rows)  # one seed each, never pooled


def test_run_key_covers_data_content_and_device(tmp_path, cifar_like):
    """Same file name, other bytes: another key. The device is part of the settings."""
    from reflowbench.config import preset
    from reflowbench.harness import SweepState, plan_sweep

    def state_for(archive):
        spec = preset(None)
        spec.model.model, spec.model.checkpoint = "resnet20", str(cifar_like["checkpoint"])
        spec.data.data, spec.data.partial_data = str(archive), True
        spec.reflow.calib_batches, spec.reflow.calib_batch_size, spec.reflow.diag_images = 2, 16, 16
        return SweepState(plan_sweep(spec, check_out=False), log=lambda m: None)

    first = state_for(cifar_like["archive"])
    other_dir = tmp_path / "copy"
    other_dir.mkdir()
    copy = other_dir / cifar_like["archive"].name
    shutil.copy(cifar_like["archive"], copy)
    same = state_for(copy)
    pruner = make_pruner("mp")
    assert first.run_key(pruner, 0.5, 0) == same.run_key(pruner, 0.5, 0)  # moving a file changes nothing
    with open(copy, "ab") as handle:
        handle.write(b"\0" * 1024)  # gzip ignores trailing padding: the images are the same, the content is not
    changed = state_for(copy)
    assert changed.settings["data"]["content_sha256"] != first.settings["data"]["content_sha256"]
    assert changed.run_key(pruner, 0.5, 0) != first.run_key(pruner, 0.5, 0)
    assert first.settings["device"] == {"type": "cpu", "name": "cpu"}


def test_subsets_do_not_depend_on_each_others_sizes():
    base = disjoint_subsets(50_000, SubsetSizes(6400, 1000, 1000), seed=3)
    more_calib = disjoint_subsets(50_000, SubsetSizes(640, 1000, 1000), seed=3)
    more_fisher = disjoint_subsets(50_000, SubsetSizes(6400, 8000, 1000), seed=3)
    more_heldout = disjoint_subsets(50_000, SubsetSizes(6400, 1000, 5000), seed=3)
    assert np.array_equal(base["fisher"], more_calib["fisher"]) and np.array_equal(base["heldout"], more_calib["heldout"])
    assert np.array_equal(base["calibration"], more_fisher["calibration"]) and np.array_equal(base["heldout"], more_fisher["heldout"])
    assert np.array_equal(base["fisher"], more_heldout["fisher"]) and np.array_equal(base["heldout"], more_heldout["heldout"][:1000])
    assert np.array_equal(more_calib["calibration"], base["calibration"][:640])
    every = np.concatenate([more_fisher[k] for k in ("calibration", "fisher", "heldout")])
    assert len(np.unique(every)) == len(every)  # disjoint
    assert not np.array_equal(base["fisher"], disjoint_subsets(50_000, SubsetSizes(6400, 1000, 1000), seed=4)["fisher"])


def test_results_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert (
            main(["run", "--sparsities", "0.5", "--seeds", "0", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress", "--out", str(tmp_path)])
            == 0
        )
    finally:
        os.umask(old)
    for path in [*tmp_path.glob("runs/*.json"), tmp_path / "results.csv", tmp_path / "suite.json", tmp_path / "report.md", tmp_path / "report.html"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_claims_live_dead_and_foreign(tmp_path):
    run_file = tmp_path / "runs" / "mp_s0.5_seed0_abc.json"
    held = try_claim(run_file)
    assert held is not None and try_claim(run_file) is None  # a live claim (this process) is respected
    held.release()
    claim_path(run_file).write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 12345, "started": 0}))
    taken = try_claim(run_file)  # a dead process's claim is taken over
    assert taken is not None
    taken.release()
    claim_path(run_file).write_text(json.dumps({"host": "another-host", "pid": 1, "started": 0}))
    assert try_claim(run_file) is None  # another host, heartbeat fresh
    os.utime(claim_path(run_file), (0, 0))
    stale = try_claim(run_file)  # another host, heartbeat stopped long ago
    assert stale is not None
    stale.release()
    claim_path(run_file).write_text("")  # unreadable and fresh (as a worker of an older version left it mid-write)
    assert try_claim(run_file) is None
    os.utime(claim_path(run_file), (0, 0))  # ... and untouched for longer than a heartbeat
    assert try_claim(run_file) is not None
    assert not [p for p in run_file.parent.iterdir() if p.name.endswith(".tmp")]  # the claim's temporary file is gone


def test_a_claim_is_never_seen_half_written(tmp_path, monkeypatch):
    """Claims appear whole (linked into place), so a worker racing another's create never takes it for stale."""
    from reflowbench.harness import claims

    run_file = tmp_path / "runs" / "mp_s0.5_seed0_abc.json"
    seen = []
    link = os.link

    def watched_link(source, target):
        link(source, target)
        with open(target) as handle:  # readable the moment it exists
            seen.append(json.loads(handle.read())["pid"])

    monkeypatch.setattr(claims.os, "link", watched_link)
    held = try_claim(run_file)
    assert held is not None and seen == [os.getpid()] and try_claim(run_file) is None
    held.release()


def test_a_live_claim_makes_the_sweep_skip_that_run(tmp_path, capsys):
    args = [
        "run",
        "--sparsities",
        "0.5,0.9",
        "--seeds",
        "0",
        "--calib-batch-size",
        "32",
        "--diag-images",
        "64",
        "--no-progress",
        "--no-report",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    victim = sorted((tmp_path / "runs").glob("*s0.9*.json"))[0]
    victim.unlink()
    claim = try_claim(victim)
    assert main(args) == 0
    assert "1 runs were being run by another worker" in capsys.readouterr().out and not victim.exists()
    claim.release()
    assert main(args) == 0 and victim.exists()


def test_two_parallel_sweeps_share_one_folder(tmp_path):
    """Two processes on one --out: every run happens exactly once."""
    args = [
        sys.executable,
        "-m",
        "reflowbench",
        "run",
        "--sparsities",
        "0.3,0.5,0.6,0.7,0.8,0.9",
        "--seeds",
        "0",
        "--calib-batch-size",
        "32",
        "--diag-images",
        "64",
        "--no-progress",
        "--no-report",
        "--out",
        str(tmp_path / "shared-out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main(["run", "--sparsities", "0.5", "--seeds", "0", "--no-progress", "--no-report", "--out", str(tmp_path / "warm")])  # dense model trained once, cached
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    done = [int(line.split()[1]) for out, _ in outputs for line in out.splitlines() if line.startswith("done: ")]
    assert sum(done) == 6, outputs
    assert len(list((tmp_path / "shared-out" / "runs").glob("*.json"))) == 6 and not list((tmp_path / "shared-out" / "runs").glob("*.claim"))


def test_verify_masks_catches_a_replaced_parameter(tiny_model):
    from reflowbench.errors import MaskError
    from reflowbench.pruners import apply_masks, masks_from_scores, select_targets, verify_masks

    targets = select_targets(tiny_model)
    masks = masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, 0.5)
    tiny_model.conv2.weight = torch.nn.Parameter(tiny_model.conv2.weight.detach().clone())  # the target now holds a stale reference
    apply_masks(targets, masks)
    verify_masks(targets, masks, 0.5)  # the stale references are zero ...
    with pytest.raises(MaskError, match="conv2.weight are not zero in the model"):
        verify_masks(targets, masks, 0.5, model=tiny_model)  # ... the model's own weights are not
