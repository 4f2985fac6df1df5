"""Compute-cost benchmarks (pytest-benchmark), run apart from the tests:

    python -m pytest bench/ --benchmark-only --benchmark-json bench-results.json

They use ../shared (the ResNet-20 checkpoint and CIFAR-10) when present, and otherwise a randomly
initialised ResNet-20 on random 32x32 images: the cost does not depend on the weights' values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFLOWBENCH_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def cifar_train():
    from reflowbench.datasets import load_dataset
    from reflowbench.datasets.imagesets import TensorImageSet

    tarball = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
    if tarball.exists():
        return load_dataset("cifar10", tarball).train
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8000, 32, 32, 3), dtype=np.uint8)
    return TensorImageSet(images, rng.integers(0, 10, 8000), 10, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture
def resnet20():
    from reflowbench.models import build_model

    checkpoint = SHARED / "models" / "resnet20_cifar10_jpeg.pt"
    return build_model("resnet20", checkpoint=checkpoint if checkpoint.exists() else None)


def fresh_model_setup(dense, ledgers: list):
    """pytest-benchmark ``setup``: a fresh copy of ``dense`` (weights loaded) and a new CostLedger (appended to ``ledgers``) per round."""
    from reflowbench.utils.cost import CostLedger

    def setup():
        model = dense.__class__(20)
        model.load_state_dict(dense.state_dict())
        ledgers.append(CostLedger())
        return (model.eval(), ledgers[-1]), {}

    return setup


def benchmark_prune(benchmark, pruner, dense, train, sparsity: float, notes_key: str, rounds: int = 1) -> None:
    """``rounds`` timed rounds of ``pruner``, each on a fresh copy of ``dense`` at ``sparsity`` (seed 0, the
    harness's subsets of ``train``); the last round's phases and the pruner's ``ctx.notes[notes_key]`` in the
    benchmark's extra_info (the rounds' min, median and max wall times are in its stats)."""
    from reflowbench.datasets import SubsetSizes, disjoint_subsets
    from reflowbench.pruners import PruneContext, apply_masks, select_targets, verify_masks

    ledgers, notes = [], []

    def prune(model, ledger):
        targets = select_targets(model)
        subsets = disjoint_subsets(len(train), SubsetSizes(6400, pruner.fisher_images(), 1000), seed=0)
        ctx = PruneContext(device=torch.device("cpu"), seed=0, ledger=ledger, train=train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"])
        with ledger.phase("prune"):
            masks = pruner.prune(model, targets, sparsity, ctx)
            apply_masks(targets, masks)
        verify_masks(targets, masks, sparsity, pruner.mask_scope(), model=model)
        notes.append(ctx.notes[notes_key])

    benchmark.pedantic(prune, setup=fresh_model_setup(dense, ledgers), rounds=rounds, iterations=1)
    benchmark.extra_info.update(phase_info(ledgers[-1]))
    last = notes[-1][-1] if isinstance(notes[-1], list) else notes[-1]
    benchmark.extra_info.update({f"{notes_key}_{k}": v for k, v in last.items()})


def synthetic_imagenet(n: int, size: int = 64):
    """``n`` random size x size RGB images with ImageNet labels and normalisation (G's size does not depend on them)."""
    from reflowbench.datasets.imagesets import TensorImageSet

    rng = np.random.default_rng(0)
    return TensorImageSet(
        rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 1000, n), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )


def benchmark_large_model(benchmark, model, pruner, sparsity: float, budget_gib: float) -> dict:
    """One timed round of ``pruner`` on ``model`` (in place, CPU, seed 0) with synthetic ImageNet images as its Fisher
    images; returns the PruneContext notes; extra_info gets seconds and peak RSS per phase and the whole-process peak."""
    from reflowbench.pruners import PruneContext, apply_masks, select_targets, verify_masks
    from reflowbench.utils.cost import CostLedger, peak_rss_mb, reset_peak_rss

    targets = select_targets(model)
    ledger, notes = CostLedger(), {}
    ctx = PruneContext(device=torch.device("cpu"), seed=0, ledger=ledger, train=synthetic_imagenet(pruner.fisher_images()),
                       fisher_indices=np.arange(pruner.fisher_images()), memory_budget_gb=budget_gib, notes=notes, log=print)  # fmt: skip

    def prune():
        reset_peak_rss()
        with ledger.phase("prune"):
            masks = pruner.prune(model, targets, sparsity, ctx)
            apply_masks(targets, masks)
        verify_masks(targets, masks, sparsity, pruner.mask_scope())

    benchmark.pedantic(prune, rounds=1, iterations=1)
    peak = max(peak_rss_mb(), *(cost.peak_rss_mb for cost in ledger.phases.values()))  # phases reset the kernel's high-water mark
    benchmark.extra_info.update(phase_info(ledger))
    benchmark.extra_info.update({"process_peak_rss_mb": round(peak, 1), "weights": targets.num_weights})
    return notes


def phase_info(ledger) -> dict:
    """pytest-benchmark extra_info: seconds and peak RSS (MiB) per phase."""
    return {
        f"{name}_{field}": round(value, 3)
        for name, cost in ledger.phases.items()
        for field, value in (("s", cost.seconds), ("peak_rss_mb", cost.peak_rss_mb), ("peak_cuda_mb", cost.peak_cuda_mb))
    }


def pytest_report_header(config):
    return f"reflowbench benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, shared={'yes' if SHARED.exists() else 'no'}"
