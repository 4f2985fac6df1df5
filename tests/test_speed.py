"""`reflowbench speed`: measured latency of pruned models beside the dense one, counts, and bad input in one line."""

import torch

from reflowbench.cli import main


def test_speed_measures_the_dense_and_each_pruned_model(tmp_path, capsys):
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--pattern", "2:4", "--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--save", str(pruned)]) == 0
    capsys.readouterr()
    table = tmp_path / "speed.md"
    assert main(["speed", "--pruned", str(pruned), "--batch-sizes", "1,4", "--min-run-time", "0.05", "--threads", "1", "--save", str(table)]) == 0
    lines = [line for line in table.read_text().splitlines() if line.startswith("| dense") or line.startswith("| p.pt")]
    assert [line.split(" | ")[:2] for line in lines] == [["| dense", "1"], ["| dense", "4"], ["| p.pt", "1"], ["| p.pt", "4"]]
    dense, sparse = lines[0].split(" | "), lines[2].split(" | ")
    assert dense[3] == sparse[3]  # the same FLOPs: dense kernels run the zeros too
    assert float(sparse[2].split("(")[1].split(" M")[0]) < float(dense[2].split("(")[1].split(" M")[0]) * 0.6  # half the weights are zero
    assert "load average" in table.read_text() and lines[0].endswith("| 1.00× |")
    weights = torch.load(pruned, weights_only=True)
    assert any((w == 0).float().mean() > 0.4 for w in weights.values() if w.dim() == 4)


def test_speed_bad_input_is_one_line(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    for args, expected in (
        (["--pruned", str(tmp_path / "none.pt")], "does not exist"),
        (["--pruned", str(other)], "--pruned takes the weights `reflowbench prune --save` wrote for this --model"),
        (["--model", "resnet20", "--pruned", str(other)], "resnet20 needs its dense weights: pass --checkpoint"),
        (["--batch-sizes", "0"], "--batch-sizes"),
    ):
        assert main(["speed", "--min-run-time", "0.05", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
