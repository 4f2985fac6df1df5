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


@pytest.fixture
def tiny_model() -> TinyBNNet:
    model = TinyBNNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


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
