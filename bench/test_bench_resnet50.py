"""ImageNet-size memory target: torchvision ResNet-50 (random weights, 25.6 M weights in 54 target tensors) within the
default 8 GiB budget on this CPU.

- WoodFisher, N = 400 per-sample gradients, blocks of 2,000: G alone would be 41 GB in float32 (20 GB in bfloat16),
  so it runs with layer-group streaming chosen from the budget (``layer_groups=0``) and G stored in bfloat16;
- CHITA block backsolve (magnitude support, exact restricted solve per block of 500), N = 400, the same streaming.

G's size does not depend on the images, so per-sample gradients are taken on synthetic 64 x 64 images (400 x 32
images at 224 x 224 belong on a GPU). Opt in (about 15-25 minutes on 2 cores):

    REFLOWBENCH_BENCH_RESNET50=1 python -m pytest bench/test_bench_resnet50.py --benchmark-only -s

Each benchmark records seconds per phase, the peak RSS of the whole process (``peak_rss_mb``, which must stay under
8 GiB), the number of layer groups and the gradient passes.
"""

import os

import pytest
import torch

from conftest import benchmark_large_model
from reflowbench.models import build_model
from reflowbench.pruners import make_pruner

pytestmark = pytest.mark.skipif(not os.environ.get("REFLOWBENCH_BENCH_RESNET50"), reason="opt in with REFLOWBENCH_BENCH_RESNET50=1 (15-25 CPU minutes)")

BUDGET_GIB = 8.0


@pytest.mark.parametrize(
    "method, options",
    [
        ("woodfisher", {"num_grads": 400, "block_size": 2000, "dtype": "bfloat16", "layer_groups": 0, "chunk_images": 32, "grad_engine": "hooks"}),
        (
            "chita",
            {
                "num_grads": 400,
                "minibatch": 1,
                "solver": "block-backsolve",
                "block_size": 500,
                "dtype": "bfloat16",
                "layer_groups": 0,
                "chunk_images": 32,
                "grad_engine": "hooks",
            },
        ),
    ],
)
def test_resnet50_within_the_default_budget(benchmark, method, options):
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=1000).eval()
    notes = benchmark_large_model(benchmark, model, make_pruner(method, options), 0.9, BUDGET_GIB)
    peak = benchmark.extra_info["process_peak_rss_mb"]
    benchmark.extra_info["layer_groups"] = notes.get("layer_groups", 1)
    print(f"{method}: {notes.get('layer_groups', 1)} layer groups, process peak RSS {peak:.0f} MiB, extra_info {benchmark.extra_info}")
    assert peak <= BUDGET_GIB * 1024, f"peak RSS {peak:.0f} MiB over the {BUDGET_GIB} GiB budget"
