"""One prepared GPU check (the same code as on CPU): run with `python bench/gpu_check.py --device cuda`.

1. WoodFisher on ResNet-20 (N=1000 per-sample gradients, whole-layer blocks, lam=1e-5, sparsity 0.9);
2. WoodFisher on torchvision ResNet-50 (random weights, synthetic 224x224 batches), N=400 x m=32, blocks of 2,000.
Prints one JSON line per check: seconds and peak memory per phase. ``--small`` shrinks both for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.models import build_model
from reflowbench.pruners import PruneContext, apply_masks, make_pruner, select_targets, verify_masks
from reflowbench.utils.cost import CostLedger


def synthetic(n: int, size: int) -> TensorImageSet:
    rng = np.random.default_rng(0)
    return TensorImageSet(rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n), 10, (0.5,) * 3, (0.25,) * 3)


def check(name: str, model: torch.nn.Module, data: TensorImageSet, options: dict, device: torch.device, budget_gb: float) -> dict:
    model = model.to(device).eval()
    targets = select_targets(model)
    pruner = make_pruner("woodfisher", options)
    ledger = CostLedger()
    ctx = PruneContext(
        device=device, seed=0, ledger=ledger, train=data, fisher_indices=np.arange(pruner.fisher_images()), memory_budget_gb=budget_gb, progress=False
    )
    start = time.perf_counter()
    with ledger.phase("prune", device):
        masks = pruner.prune(model, targets, 0.9, ctx)
        apply_masks(targets, masks)
    verify_masks(targets, masks, 0.9)
    return {
        "check": name,
        "device": str(device),
        "weights": targets.num_weights,
        "options": options,
        "total_s": round(time.perf_counter() - start, 2),
        "phases": ledger.as_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (smoke test on CPU)")
    parser.add_argument("--budget-gb", type=float, default=100.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    n20, n50, m50, size50, chunk = (16, 2, 2, 32, 4) if args.small else (1000, 400, 32, 224, 64)
    r20 = check("resnet20", build_model("resnet20"), synthetic(max(n20, 64), 32), {"num_grads": n20}, device, args.budget_gb)
    print(json.dumps(r20), flush=True)
    big = "resnet18" if args.small else "resnet50"
    r50 = check(
        big,
        build_model(big, num_classes=10),
        synthetic(n50 * m50, size50),
        {"num_grads": n50, "minibatch": m50, "block_size": 2000, "chunk_images": chunk},
        device,
        args.budget_gb,
    )
    print(json.dumps(r50), flush=True)


if __name__ == "__main__":
    main()
