"""Many blocks: WoodFisher on a torchvision ResNet-18 (random weights, 11.2 M weights in 21 target tensors), N = 32
per-sample gradients, blocks of 2,000 (about 5,600 blocks), sparsity 0.9.

The curvature work is small in flops (a 32 x 32 Gram and its Cholesky factor per block); what this measures is the
per-block overhead: a layer's equal-size blocks are factorised and solved as one batched operation, so the curvature
phase should follow the flops (seconds, not minutes) and the peak stay near G (1.33 GiB float32) plus the model.
G's size does not depend on the images, so the gradients are taken on synthetic 64 x 64 images:

    python -m pytest bench/test_bench_many_blocks.py --benchmark-only -s

extra_info: seconds and peak RSS per phase, the number of blocks, G's size, the whole-process peak.
"""

import torch

from conftest import benchmark_large_model
from reflowbench.hessian.block_fisher import block_of
from reflowbench.models import build_model
from reflowbench.pruners import make_pruner

NUM_GRADS = 32
BLOCK_SIZE = 2000


def test_woodfisher_resnet18_many_blocks(benchmark):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1000).eval()
    pruner = make_pruner("woodfisher", {"num_grads": NUM_GRADS, "block_size": BLOCK_SIZE, "chunk_images": 32})
    benchmark_large_model(benchmark, model, pruner, 0.9, 8.0)
    weights = benchmark.extra_info["weights"]
    sizes = [module.weight.numel() for module in model.modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    blocks = sum(-(-size // block_of(size, BLOCK_SIZE)) for size in sizes)  # the backend's rule; a layer's last block is padded
    gradient_gib = NUM_GRADS * weights * 4 / 2**30
    benchmark.extra_info.update({"blocks": blocks, "gradient_gib": round(gradient_gib, 3)})
    print(f"ResNet-18 WoodFisher: {blocks} blocks, G {gradient_gib:.2f} GiB, extra_info {benchmark.extra_info}")
