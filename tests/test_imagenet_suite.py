"""`reflowbench suite imagenet-smoke` end to end on a synthetic ImageFolder tree at 224 x 224 (random weights, the two
smallest models, the cheapest settings): every job runs, the combined report is written, and each job's dry-run peak
estimate is within a factor of the peak its runs measure. `suite imagenet` itself is planned (settings, models, data)."""

from __future__ import annotations

import json
import re

import pytest

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
    common = ["suite", "imagenet-smoke", "--data", str(tree), "--out", str(out), "--threads", "2"]
    assert main([*common, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    estimates = [float(m) for m in re.findall(r"cost plan: peak about ([0-9.]+) GiB", dry)]
    assert len(estimates) == 4 and "DOES NOT FIT" not in dry
    assert main([*common, "--no-progress"]) == 0
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
    assert (out / "imagenet-smoke-suite" / "report.md").exists()


def test_the_imagenet_suite_plans_every_job_without_its_weights(tree, tmp_path, capsys):
    args = ["suite", "imagenet", "--data", str(tree), "--out", str(tmp_path / "plan"), "--dry-run", "--random-weights", "--jobs", "4,9"]
    assert main([*args, "--plan-memory-gb", "80"]) == 0
    text = capsys.readouterr().out
    assert text.count("cost plan:") == 2 and "a 80 GiB device" in text and "imagenet-mobilenet_v2-2of4" in text
