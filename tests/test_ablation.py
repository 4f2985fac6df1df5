"""The REFLOW ablation command: cells, resume, report, bad input."""

import json

from reflowbench.cli import main
from reflowbench.reports.ablation import load_ablation

GRID = ["--batches", "1,2,4", "--batch-sizes", "16,32", "--calib-batches", "4", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress"]


def _cells(path):
    return [(c["batches"], c["batch_size"]) for c in json.loads(path.read_text())["cells"]]


def test_ablation_runs_every_cell_once_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate-reflow", "--out", str(out), "--seeds", "0,1", "--sparsity", "0.8", *GRID]) == 0
    files = sorted((out / "reflow-ablation").glob("*.json"))
    assert [f.name for f in files] == ["smallcnn_mp_s0.8_seed0.json", "smallcnn_mp_s0.8_seed1.json"]
    # batches grid at batch size 32, then batch sizes at 4 batches; (4, 32) only once
    assert _cells(files[0]) == [(1, 32), (2, 32), (4, 32), (4, 16)]
    record = json.loads(files[0].read_text())
    assert record["pruned"]["top1"] < record["dense"]["top1"]
    assert all(0 <= c["top1"] <= 100 and c["images"] == c["batches"] * c["batch_size"] for c in record["cells"])
    assert max(c["top1"] for c in record["cells"]) > record["pruned"]["top1"]  # REFLOW helps the pruned small CNN at 0.8
    text = (out / "reflow-ablation.md").read_text()
    assert "| 4 | 16 | 64 |" in text and (out / "figures" / "reflow_ablation.png").stat().st_size > 0
    grouped = load_ablation(out)
    assert list(grouped) == [("smallcnn", "mp", 0.8)] and len(grouped[("smallcnn", "mp", 0.8)]) == 2


def test_ablation_resumes_at_the_first_missing_cell(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate-reflow", "--out", str(out), "--seeds", "0", *GRID]
    assert main(args) == 0
    path = out / "reflow-ablation" / "smallcnn_mp_s0.8_seed0.json"
    record = json.loads(path.read_text())
    kept = record["cells"][:2]
    record["cells"] = kept
    path.write_text(json.dumps(record))  # as if interrupted after two cells
    capsys.readouterr()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "REFLOW   1 x 32" not in log and "REFLOW   4 x 32" in log and "before REFLOW" not in log
    again = json.loads(path.read_text())
    assert again["cells"][:2] == kept and _cells(path) == [(1, 32), (2, 32), (4, 32), (4, 16)]
    assert main(args) == 0 and "already in" in capsys.readouterr().out
    path.write_text("{not json")  # a corrupt file is started again, not trusted
    assert main(args) == 0 and _cells(path) == [(1, 32), (2, 32), (4, 32), (4, 16)]


def test_ablation_bad_input_is_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "abl")
    assert main(["ablate-reflow", "--out", out, "--sparsity", "1.0", *GRID]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert main(["ablate-reflow", "--out", out, "--sparsities", "0.5", *GRID]) == 2
    assert "use --sparsity instead of --sparsities" in capsys.readouterr().err
    assert main(["ablate-reflow", "--out", out, "--batches", "0,2", "--batch-sizes", "16"]) == 2
    assert "--batches must be an integer >= 1" in capsys.readouterr().err
    assert main(["ablate-reflow", "--out", out, "--batches", "1,1", "--batch-sizes", "16"]) == 2
    assert "--batches lists 1 twice" in capsys.readouterr().err
    assert main(["ablate-reflow", "--out", out, "--method", "obs-magic", *GRID]) == 2
    assert "unknown pruner 'obs-magic'" in capsys.readouterr().err
    assert main(["ablate-reflow", "--out", out, "--batches", "100", "--batch-sizes", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs 6400 calibration images" in err and "lower --batches or --batch-sizes" in err and "Traceback" not in err
