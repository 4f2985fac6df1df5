"""Checks against ../shared (skipped when absent): the checkpoints load as they are and score what the README says."""

import pytest
import torch

from conftest import SHARED_DATA, SHARED_MODELS

pytestmark = pytest.mark.shared

# file, model, weights pruned (conv + linear), top-1 on the JPEG test split (../shared/models/README.md). ResNet-20's
# 88.08 is checked by the issue command's run below (its dense evaluation) and its 268,336 weights by test_models.py.
EXPECTED = [
    ("resnet56_cifar10_jpeg.pt", "resnet56", 848_944, 88.60),
    ("mobilenetv1_cifar10_jpeg.pt", "mobilenetv1", 3_195_328, 86.57),
]


@pytest.fixture(scope="module")
def cifar():
    from reflowbench.datasets import load_dataset

    return load_dataset("cifar10", SHARED_DATA)


@pytest.mark.parametrize("filename, model_name, weights, top1", EXPECTED)
def test_shared_checkpoint_scores_as_documented(cifar, filename, model_name, weights, top1):
    from reflowbench.harness.evaluate import evaluate
    from reflowbench.models import build_model
    from reflowbench.pruners import select_targets

    model = build_model(model_name, checkpoint=SHARED_MODELS / filename)
    assert select_targets(model).num_weights == weights
    metrics = evaluate(model, cifar.test.batches(None, 1000), torch.device("cpu"))
    assert metrics["images"] == 10_000
    assert abs(metrics["top1"] - top1) < 0.02


def test_distiller_checkpoint_needs_bn_recompute():
    from reflowbench.datasets import load_dataset
    from reflowbench.harness.evaluate import evaluate
    from reflowbench.models import build_model
    from reflowbench.pruners import select_targets
    from reflowbench.reflow import recalibrate_bn

    data = load_dataset("cifar10", SHARED_DATA, normalization="cifar10-distiller")
    model = build_model("resnet20", checkpoint=SHARED_MODELS / "resnet20_cifar10_distiller.pth.tar")
    assert hasattr(model.layer2[0], "downsample")  # option B detected from the keys
    assert select_targets(model).num_weights == 270_896
    shipped = evaluate(model, data.test.batches(None, 1000), torch.device("cpu"))["top1"]
    assert abs(shipped - 43.7) < 0.1
    recalibrate_bn(model, data.train.batches(torch.randperm(50_000, generator=torch.Generator().manual_seed(0))[:10_000].numpy(), 125), num_batches=80)
    fixed = evaluate(model, data.test.batches(None, 1000), torch.device("cpu"))["top1"]
    assert abs(fixed - 78.5) < 1.0


def test_issue_command_as_written_runs_resnet20_on_the_archive(tmp_path, capsys):
    """`reflowbench run --model resnet20 --checkpoint ... --data ...tar.gz --methods mp --sparsities 0.7 --seeds 0 --out DIR`,
    exactly as a user types it: the dataset is inferred, MP collapses, REFLOW recovers; --preset cifar10 is the same run."""
    import json

    from reflowbench.cli import main

    command = [
        "run",
        "--model",
        "resnet20",
        "--checkpoint",
        str(SHARED_MODELS / "resnet20_cifar10_jpeg.pt"),
        "--data",
        str(SHARED_DATA),
        "--methods",
        "mp",
        "--sparsities",
        "0.7",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
    ]
    assert main(command) == 0
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["dataset"] == "cifar10" and record["dense"]["top1"] == pytest.approx(88.08, abs=0.02)
    assert record["pruned"]["top1"] < 60 and record["reflow"]["top1"] > record["pruned"]["top1"] + 25
    assert record["variance"]["pruned"]["last"] < 0.5 < 0.6 < record["variance"]["reflow"]["last"]
    capsys.readouterr()
    assert main([*command, "--preset", "cifar10"]) == 0
    assert "1 already complete" in capsys.readouterr().out
