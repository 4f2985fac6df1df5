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


LAYERS = ["--calib-batches", "4", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress", "--sparsity", "0.9"]


def test_layer_subset_ablation_recalibrates_only_the_named_layers_and_resumes(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate-reflow", "--out", str(out), "--seeds", "0", "--layers", "first,last,each", "--depths", "1,3,8", *LAYERS]
    assert main(args) == 0
    path = out / "reflow-ablation" / "smallcnn_mp_s0.9_seed0.json"
    record = json.loads(path.read_text())
    cells = {(c["subset"], c["k"]): c for c in record["cells"]}
    assert sorted(cells) == sorted([("first", k) for k in (1, 3, 8)] + [("last", k) for k in (1, 3, 8)] + [("each", k) for k in range(1, 9)])
    bn = [c["layers"][0] for c in sorted((c for c in record["cells"] if c["subset"] == "each"), key=lambda c: c["k"])]
    assert bn == [f"features.{i}" for i in (1, 4, 7, 10, 14, 17, 20, 23)]
    assert cells[("first", 3)]["layers"] == bn[:3] and cells[("last", 3)]["layers"] == bn[-3:] and cells[("each", 1)]["layers"] == bn[:1]
    assert cells[("first", 8)]["top1"] == cells[("last", 8)]["top1"]  # all layers either way: full REFLOW
    assert cells[("last", 8)]["top1"] > record["pruned"]["top1"] + 30  # and it recovers the collapsed network
    text = (out / "reflow-ablation.md").read_text()
    assert "## Which BN layers need REFLOW" in text and "| 8 | " in text and (out / "figures" / "reflow_layers.png").stat().st_size > 0
    assert "figures/reflow_ablation.png" not in text  # no grid cells, no grid figure
    record["cells"] = record["cells"][:4]
    path.write_text(json.dumps(record))  # interrupted after four cells
    capsys.readouterr()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "REFLOW of the first 1 BN layer:" not in log and "REFLOW of BN layer 8 alone (features.23)" in log
    assert len(json.loads(path.read_text())["cells"]) == 14


def test_reflow_of_some_layers_leaves_the_others_statistics_alone(tiny_model):
    import torch

    from reflowbench.reflow import recalibrate_bn

    before = tiny_model.bn1.running_var.clone(), tiny_model.bn2.running_var.clone()
    batches = [(torch.randn(16, 1, 8, 8) * 3, torch.zeros(16)) for _ in range(2)]
    handle = recalibrate_bn(tiny_model, batches, 2, only=["bn2"])
    assert torch.equal(tiny_model.bn1.running_var, before[0]) and not torch.equal(tiny_model.bn2.running_var, before[1])
    handle.undo()
    assert torch.equal(tiny_model.bn2.running_var, before[1])


def test_bad_layer_subset_flags_are_one_line(tmp_path, capsys):
    for extra, expected in (
        (["--layers", "middle"], "--layers takes first, last, each"),
        (["--layers", "each", "--depths", "2"], "--depths sets the k of --layers first/last"),
    ):
        assert main(["ablate-reflow", "--out", str(tmp_path / "x"), *extra, *LAYERS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
