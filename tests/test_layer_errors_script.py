"""bench/layer_errors.py: each mask rule's reconstruction error on one layer, checked against what must hold."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reflowbench.reconstruction import InputHessian

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "layer_errors.py"


def _script():
    spec = importlib.util.spec_from_file_location("layer_errors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rules_errors_keep_their_order_and_the_bn_weighting_reduces_to_plain_with_unit_weights():
    script = _script()
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, groups=2, bias=False).double()  # 2 groups of 3 rows x 27 columns
    hessian = InputHessian(conv, torch.device("cpu"))
    hessian.add(torch.randn(8, 6, 8, 8, dtype=torch.float64))
    rows = hessian.geometry.rows_of(conv.weight.detach())
    ones = torch.ones(6, dtype=torch.float64)
    plain = script.errors_of(rows, hessian, rows.numel() // 2, ones, damp=0.01, max_columns=100)
    for rule in script.RULES:
        assert plain[rule][0] == plain[rule][1] and 0 < plain[rule][0] < 1  # unit weights: the same; pruning half: above 0
    assert plain["sweep mask + re-fit"][0] <= plain["sweep"][0] + 1e-12  # the exact re-fit is optimal on the sweep's mask
    heavy = torch.tensor([1.0, 1, 1, 100, 100, 100], dtype=torch.float64)
    weighted = script.errors_of(rows, hessian, rows.numel() // 2, heavy, damp=0.01, max_columns=100)
    assert weighted["ExactOBS"][0] == plain["ExactOBS"][0] and weighted["ExactOBS"][1] != plain["ExactOBS"][1]
    assert script.errors_of(rows, hessian, rows.numel() // 2, ones, damp=0.01, max_columns=5)["ExactOBS"] is None


def test_the_summary_columns_follow_the_header():
    script = _script()
    row = {rule: (1.0, 1.0) for rule in script.RULES}
    depthwise = {**row, "sweep": (2.0, 3.0), "depthwise": True}
    other = {**row, "sweep": (5.0, 7.0), "depthwise": False}
    assert script.summary_rows([depthwise, other])[0] == "| sweep | 2.00x | 5.00x | 3.00x | 7.00x |"  # plain dw, plain other, BN dw, BN other
    assert script.summary_rows([other])[0] == "| sweep | – | 5.00x | – | 7.00x |"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--sparsity": "1.5"}, "--sparsity must be in (0, 1)"),
        ({"--images": "0"}, "--images must be an integer >= 1"),
        ({"--checkpoint": "/no/such.pt"}, "--checkpoint /no/such.pt: no such file"),
        ({"--data": "/no/such/data.tar.gz"}, "/no/such/data.tar.gz does not exist"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_and_nothing_is_written(tmp_path, change, message):
    checkpoint = tmp_path / "dense.pt"
    checkpoint.write_bytes(b"")  # exists; the bad values are refused before it is read
    arguments = {"--model": "resnet20", "--checkpoint": str(checkpoint), "--data": str(tmp_path), "--out": str(tmp_path / "out.md"), **change}
    command = [sys.executable, str(SCRIPT)] + [part for pair in arguments.items() for part in pair]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.md").exists()
