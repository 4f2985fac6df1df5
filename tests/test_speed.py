"""`reflowbench speed`: measured latency of pruned models beside the dense one, counts, and bad input in one line."""

import copy

import pytest
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
    assert "a 2:4 model's speed-up on them is not measured by this table" in table.read_text()  # no GPU: said, not implied
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


def _two_of_four(weight: torch.Tensor) -> torch.Tensor:
    from reflowbench.pruners.nm import keep_top_n

    matrix = weight.detach().reshape(weight.shape[0], -1)
    return (matrix * keep_top_n(matrix.abs(), 2, 4)).view_as(weight)


def test_the_2of4_kernel_copy_computes_the_same_function_and_says_what_stays_dense():
    """On the CPU the conversion itself is the identity (the kernels are CUDA's): what is checked is which layers are
    converted, the 1 x 1 convolution run as a matrix product over the pixels, and that the copy is the same function."""
    from torch import nn

    from reflowbench.models.sparse_kernels import holds_two_of_four, semi_structured_copy

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1),  # k x k: no semi-structured kernel
        nn.Conv2d(64, 64, 1),  # 1 x 1: a matrix product over the pixels
        nn.Conv2d(64, 16, 1),  # under the kernels' 32 x 64
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),
        nn.Linear(64, 64),  # not 2:4
    ).eval()
    with torch.no_grad():
        for index in (0, 1, 2, 4):
            model[index].weight.copy_(_two_of_four(model[index].weight))
    assert holds_two_of_four(model[1].weight.reshape(64, -1)) and not holds_two_of_four(model[5].weight)
    assert not holds_two_of_four(torch.ones(2, 6))  # not groups of 4
    sparse, converted, dense = semi_structured_copy(model, lambda w: w.clone())
    assert converted == ["1", "4"]
    assert set(dense) == {"0", "2", "5"} and "other than 1 x 1" in dense["0"] and "under the kernels' smallest" in dense["2"] and "not 2:4" in dense["5"]
    x = torch.randn(3, 64, 4, 4)
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    assert type(sparse[1]).__name__ == "SparsePointwise" and isinstance(model[1], nn.Conv2d)  # the original is untouched


def test_semi_structured_timing_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["speed", "--semi-structured", "--min-run-time", "0.05", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--semi-structured times PyTorch's 2:4 kernels, which need a CUDA GPU" in err[0], err


def test_a_2of4_kernel_copy_that_computes_something_else_is_refused_never_timed():
    """The output check before timing, on a CPU with stand-in conversions: the identity passes and adds the row; a
    conversion that corrupts the weights is refused in one line."""
    from torch import nn

    from reflowbench.errors import CheckpointError
    from reflowbench.harness.speed import _with_sparse_kernels

    torch.manual_seed(0)
    pruned = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, 64)).eval()
    with torch.no_grad():
        for index in (0, 3):
            pruned[index].weight.copy_(_two_of_four(pruned[index].weight))
    models = [("dense", copy.deepcopy(pruned)), ("p.pt", pruned)]
    lines = []
    timed = _with_sparse_kernels(models, (64, 4, 4), torch.device("cpu"), lines.append, convert=lambda w: w.clone())
    assert [label for label, _, _ in timed] == ["dense", "p.pt", "p.pt (2:4 kernels)"] and "2 layers on the 2:4 kernels" in lines[0]
    with pytest.raises(CheckpointError, match="differs from its dense kernels"):
        _with_sparse_kernels(models, (64, 4, 4), torch.device("cpu"), lines.append, convert=lambda w: w.flip(1).clone())
