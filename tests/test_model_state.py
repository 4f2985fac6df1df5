"""Every parameter and buffer is checked, not only the targets: the dense model before pruning, the pruned model, and
the model after REFLOW. Broken inputs stop with one line; a broken pruner's run is recorded as failed and fails the gate."""

import json

import pytest
import torch
from torch import nn

from reflowbench.cli import main
from reflowbench.models.state_checks import first_non_finite_module, state_problems
from reflowbench.pruners import PRUNERS

SHIPPED = next((__import__("pathlib").Path(__import__("reflowbench").__file__).parent / "models" / "weights").glob("dense-smallcnn-digits-*.pt"))
QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress", "--seeds", "0", "--sparsities", "0.5"]


def _checkpoint(tmp_path, change):
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    change(state)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    return path


def _run_with(checkpoint, out, capsys):
    capsys.readouterr()
    code = main(["run", "--model", "smallcnn", "--dataset", "digits", "--checkpoint", str(checkpoint), "--out", str(out), *QUICK])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_dense_model_with_a_negative_bn_variance_is_refused_naming_the_buffer(tmp_path, capsys):
    def negative(state):
        key = next(k for k in state if k.endswith("running_var"))
        state[key][0] = -1.0

    code, err = _run_with(_checkpoint(tmp_path, negative), tmp_path / "o", capsys)
    assert code == 2 and len(err) == 1 and "running_var (1 of" in err[0] and "negative" in err[0] and "Traceback" not in err[0]
    assert not list((tmp_path / "o").glob("runs/*.json"))


def test_first_non_finite_module_names_where_the_forward_pass_breaks():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU()).eval()
    assert first_non_finite_module(model, torch.ones(2, 3)) == ""
    with torch.no_grad():
        model[1].running_var.fill_(0.0)  # valid (a dead channel after REFLOW), but with eps 0 its output is not finite
        model[1].eps = 0.0
    assert first_non_finite_module(model, torch.ones(2, 3)) == "1"
    assert state_problems(model) == []
    with torch.no_grad():
        model[1].running_var.fill_(-1.0)
    assert state_problems(model) == ["1.running_var (3 of 3 entries negative)"]
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    assert state_problems(model)[0] == "0.bias (1 of 3 entries)"


PLUGIN = """
import torch
from reflowbench.pruners import Pruner, register_pruner, masks_from_scores


@register_pruner("nan-bn", "magnitude, then NaN written into the first BatchNorm's weight (not a target)")
class NanBN(Pruner):
    def prune(self, model, targets, sparsity, ctx):
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        with torch.no_grad():
            bn.weight[0] = float("nan")
        return masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, sparsity)
"""


def test_a_pruner_that_writes_nan_into_a_bn_parameter_fails_its_run_and_the_gate(tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", "nan_plugin")
    try:
        assert main(["run", "--methods", "nan-bn", "--out", str(tmp_path / "cand"), "--no-report", *QUICK]) == 0
        out = capsys.readouterr().out
        assert "1 runs failed" in out
        (record_path,) = (tmp_path / "cand" / "runs").glob("nan-bn_*.json")
        record = json.loads(record_path.read_text())
        assert record["status"] == "failed"
        assert "nan-bn at sparsity 0.5, seed 0: after pruning" in record["error"] and "weight (1 of" in record["error"]
        assert main(["run", "--methods", "mp", "--out", str(tmp_path / "base"), *QUICK]) == 0
        capsys.readouterr()
        assert main(["compare", str(tmp_path / "cand"), str(tmp_path / "base"), "--method", "nan-bn", "--against", "mp"]) == 1
        assert "REGRESSION: nan-bn failed" in capsys.readouterr().out
    finally:
        PRUNERS.pop("nan-bn", None)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_dense_checkpoint_is_refused(tmp_path, capsys, value):
    def poison(state):
        key = next(k for k in state if k.endswith("weight"))
        state[key].view(-1)[0] = value

    code, err = _run_with(_checkpoint(tmp_path, poison), tmp_path / "o", capsys)
    assert code == 2 and len(err) == 1 and "NaN or Inf" in err[0]
