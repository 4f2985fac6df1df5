"""The layer-wise reconstruction pruners (SparseGPT, ExactOBS/OBC, Wanda) at their defaults, ResNet-20 at 0.9: seconds
and peak memory per phase (``inputs``: the forward passes that collect each layer's H, ``solve``: the per-layer solves).
Target (issue 37): SparseGPT's prune within 15 s on 2 idle cores, input collection included; three rounds, read from
the median.

The ImageNet-size memory target (torchvision ResNet-50, random weights, 128 synthetic 64 x 64 images: H per layer does
not depend on the image size, the forward passes do) within the default 8 GiB, opt in:

    REFLOWBENCH_BENCH_RESNET50=1 python -m pytest bench/test_bench_layerwise.py --benchmark-only -s
"""

import os

import pytest
import torch

from conftest import benchmark_large_model, benchmark_prune
from reflowbench.models import build_model
from reflowbench.pruners import make_pruner

BUDGET_GIB = 8.0


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "obc"])
def test_layerwise_resnet20_full_prune(benchmark, resnet20, cifar_train, method):
    benchmark_prune(benchmark, make_pruner(method), resnet20, cifar_train, 0.9, "layerwise", rounds=3 if method != "obc" else 1)


@pytest.mark.skipif(not os.environ.get("REFLOWBENCH_BENCH_RESNET50"), reason="opt in with REFLOWBENCH_BENCH_RESNET50=1 (several CPU minutes)")
def test_sparsegpt_resnet50_within_the_default_budget(benchmark):
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000).eval()
    benchmark_large_model(benchmark, model, make_pruner("sparsegpt", {"batch_size": 16}), 0.9, BUDGET_GIB)
    peak = benchmark.extra_info["process_peak_rss_mb"]
    print(f"sparsegpt on resnet50: process peak RSS {peak:.0f} MiB, extra_info {benchmark.extra_info}")
    assert peak <= BUDGET_GIB * 1024, f"peak RSS {peak:.0f} MiB over the {BUDGET_GIB} GiB budget"
