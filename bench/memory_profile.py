"""Where a Hessian pruner's memory goes: resident memory after each step of one pruning, and the peak within it.

    python bench/memory_profile.py --model resnet20 --checkpoint ../shared/models/resnet20_cifar10_distiller.pth.tar \
        --method woodfisher --options '{"num_grads": 1000, "block_size": 2000}'

Synthetic 32 x 32 images stand in for the data (the sizes of G and of the factors do not depend on the images;
the dataset a real run holds comes on top: see the run's ``cost`` record). Prints one line per step (RSS now and
the peak since the previous step, MiB) and a JSON summary with the estimates the pruner checked against its budget.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import numpy as np
import torch

from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.hessian import collect_gradients
from reflowbench.models import build_model
from reflowbench.pruners import PruneContext, make_pruner, select_targets
from reflowbench.utils.cost import CostLedger, current_rss_mb, peak_rss_mb, release_freed_memory, reset_peak_rss


def synthetic(n: int, size: int, classes: int = 10) -> TensorImageSet:
    rng = np.random.default_rng(0)
    return TensorImageSet(rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n), classes, (0.5,) * 3, (0.25,) * 3)


class Steps:
    """RSS after each named step and the peak within it (MiB), from the kernel's resettable high-water mark."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, float]] = []
        reset_peak_rss()
        self.start = time.perf_counter()

    def mark(self, name: str) -> None:
        row = {"step": name, "rss_mb": round(current_rss_mb(), 1), "peak_mb": round(peak_rss_mb(), 1), "t_s": round(time.perf_counter() - self.start, 2)}
        self.rows.append(row)
        print(f"{name:<34} rss {row['rss_mb']:>8.1f} MiB   peak within {row['peak_mb']:>8.1f} MiB   {row['t_s']:>7.2f} s", flush=True)
        reset_peak_rss()
        self.start = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--method", default="woodfisher")
    parser.add_argument("--options", default="{}", help="pruner options as JSON")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--budget-gb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = Steps()
    steps.mark("start (python + torch)")
    model = build_model(args.model, checkpoint=args.checkpoint).eval()
    targets = select_targets(model)
    pruner = make_pruner(args.method, json.loads(args.options))
    data = synthetic(pruner.fisher_images(), args.image_size)
    steps.mark("model + synthetic images")
    estimates: List[str] = []
    ctx = PruneContext(
        device=torch.device("cpu"), seed=0, ledger=CostLedger(), train=data, fisher_indices=np.arange(pruner.fisher_images()),
        memory_budget_gb=args.budget_gb, log=estimates.append,
    )  # fmt: skip
    masks = {t.param_name: torch.ones_like(t.weight, dtype=torch.bool) for t in targets}
    spec = pruner.gradient_spec()
    gradients = collect_gradients(
        model, targets, ctx.fisher_batches(min(256, spec.images), spec.images), spec, masks=masks, budget_gb=args.budget_gb, log=estimates.append
    )
    steps.mark(f"gradients ({gradients.nbytes() / 2**20:.0f} MiB of G)")
    release_freed_memory()
    fisher = pruner.build_curvature(gradients, ctx)
    del gradients
    steps.mark("curvature built")
    pruner.prepare(fisher)
    steps.mark("curvature prepared (factors)")
    new_masks = pruner.select(model, targets, fisher, masks, args.sparsity, ctx)
    steps.mark("selection")
    from reflowbench.pruners.updates import apply_update

    apply_update(pruner.options.update, targets, fisher, masks, new_masks)
    steps.mark("update")
    del fisher
    steps.mark("curvature freed")
    phases = {k: round(v.peak_rss_mb, 1) for k, v in ctx.ledger.phases.items()}
    print(
        json.dumps(
            {
                "model": args.model,
                "method": args.method,
                "options": pruner.options.__dict__,
                "steps": steps.rows,
                "phases_peak_mb": phases,
                "estimates": estimates,
            }
        )
    )


if __name__ == "__main__":
    main()
