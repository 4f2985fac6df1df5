"""Shared fixtures: tiny models and data for CPU tests; ../shared when present (tests marked `shared`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFLOWBENCH_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
SHARED_MODELS = SHARED / "models"


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:  # each pytest-xdist worker gets its share of the cores, for torch here and the CLI subprocesses it starts
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4 (each worker holds its own torch, models and
    session fixtures: more would cost memory for little time on a suite whose longest tests run alone)."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.exists() and SHARED_MODELS.is_dir():
        return
    skip = pytest.mark.skip(reason=f"../shared not found at {SHARED} (set REFLOWBENCH_SHARED)")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write into the user's cache unless REFLOWBENCH_CACHE is set by the caller."""
    if "REFLOWBENCH_CACHE" not in os.environ:
        os.environ["REFLOWBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


class TinyBNNet(nn.Module):
    """conv-BN-ReLU x2 + linear on (N, 1, 8, 8): small enough for brute-force checks."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def randomize_batchnorm(model: nn.Module, mean: float = 0.2) -> nn.Module:
    """Give every BatchNorm2d of ``model`` random running statistics (means in +-``mean``) and affine; returns it in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-mean, mean)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture
def tiny_model() -> TinyBNNet:
    return randomize_batchnorm(TinyBNNet())


@pytest.fixture(scope="session")
def digits():
    from reflowbench.datasets import load_dataset

    return load_dataset("digits")


def write_jpeg_tree(root: Path, classes, per_class: int, size: int = 32, splits=("train", "test")) -> Path:
    """A tiny ImageFolder tree of random JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
    return root


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Flags that fit the small fixtures below: the training split has 120 images (40% each for REFLOW and Fisher images, 20% held-out).
SMALL_SUBSETS = ["--calib-batches", "2", "--calib-batch-size", "16", "--diag-images", "16", "--eval-batch-size", "50", "--no-progress"]


def write_tar_gz(tree: Path, archive: Path) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(tree.rglob("*.jpg")):
            tar.add(path, arcname=str(path.relative_to(tree)))
    return archive


@pytest.fixture(scope="session")
def cifar_like(tmp_path_factory):
    """A CIFAR-10-shaped .tar.gz (12 train / 2 test JPEGs per class) and a random-init ResNet-20 checkpoint for it."""
    from reflowbench.models import build_model

    root = tmp_path_factory.mktemp("cifar_like")
    tree = root / "tree"
    for split, count in (("train", 12), ("test", 2)):
        write_jpeg_tree(tree, CIFAR_CLASSES, per_class=count, splits=(split,))
    archive = write_tar_gz(tree, root / "cifar10-small.tar.gz")
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    checkpoint = root / "resnet20.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"archive": archive, "tree": tree, "checkpoint": checkpoint}


@pytest.fixture(scope="session")
def imagefolder_like(tmp_path_factory):
    """An ImageNet-style ImageFolder tree (train/ and val/, 3 classes, 32x32 JPEGs)."""
    root = tmp_path_factory.mktemp("imagefolder_like") / "tree"
    write_jpeg_tree(root, ("cls_a", "cls_b", "cls_c"), per_class=40, splits=("train",))
    write_jpeg_tree(root, ("cls_a", "cls_b", "cls_c"), per_class=4, splits=("val",))
    return root


@pytest.fixture(scope="session")
def trained_smallcnn(digits):
    """The embedded default's dense small CNN on digits (trained once per session, 8 epochs), as a state dict."""
    from reflowbench.config import TrainSpec
    from reflowbench.harness.train import train_dense
    from reflowbench.models import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=digits.num_classes)
    train_dense(model, digits.train, TrainSpec(epochs=8, batch_size=64, lr=0.1, seed=0, augment=False), torch.device("cpu"))
    return model.state_dict()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-in ``sbatch`` and ``srun`` on PATH: each keeps the script it is given as ``<returned folder>/script.sh`` and
    answers "Submitted batch job 4242", so submitit's Slurm executor submits without a cluster and nothing runs."""
    import os

    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text('#!/bin/sh\ncp "$(eval echo \\${$#})" "$FAKE_SLURM_DIR/script.sh"\necho "Submitted batch job 4242"\n')
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    return tmp_path
