"""Where a Hessian pruner's memory goes: one pruning by the pruner itself (``pruner.prune``, the code a run executes),
its cost ledger's seconds and peak resident memory per phase, and resident memory before and after.

    python bench/memory_profile.py --model resnet20 --checkpoint ../shared/models/resnet20_cifar10_distiller.pth.tar \
        --method woodfisher --options '{"num_grads": 1000, "block_size": 2000}'

Synthetic 32 x 32 images stand in for the data (the sizes of G and of the factors do not depend on the images;
the dataset a real run holds comes on top: see the run's ``cost`` record). Prints one line per step and per phase
(MiB) and a JSON summary with the estimates the pruner checked against its budget. The curvature is not kept for a
later run (``keep_curvature=False``), as in a sweep's last run of a seed: "after" is what the pruning left behind.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import numpy as np
import torch

from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.models import build_model
from reflowbench.pruners import PruneContext, make_pruner, select_targets
from reflowbench.utils.cost import CostLedger, current_rss_mb, peak_rss_mb, reset_peak_rss


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


def _parse_options(parser: argparse.ArgumentParser, text: str) -> Dict[str, object]:
    """The pruner options from ``--options``: a JSON object, or a usage error saying what is wrong with it."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"--options must be a JSON object such as '{{\"num_grads\": 1000}}': {error.msg} at character {error.pos} of {text!r}")
    if not isinstance(options, dict):
        parser.error(f"--options must be a JSON object (name: value), got {text!r}")
    return options


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
    options = _parse_options(parser, args.options)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = Steps()
    steps.mark("start (python + torch)")
    model = build_model(args.model, checkpoint=args.checkpoint).eval()
    targets = select_targets(model)
    pruner = make_pruner(args.method, options)
    data = synthetic(pruner.fisher_images(), args.image_size)
    steps.mark("model + synthetic images")
    estimates: List[str] = []
    ctx = PruneContext(
        device=torch.device("cpu"), seed=0, ledger=CostLedger(), train=data, fisher_indices=np.arange(pruner.fisher_images()),
        memory_budget_gb=args.budget_gb, log=estimates.append, keep_curvature=False,
    )  # fmt: skip
    with ctx.phase("prune"):  # the whole pruning's peak, as a run records it
        pruner.prune(model, targets, args.sparsity, ctx)
    steps.mark("pruning, all phases")
    phases = {name: {"seconds": round(cost.seconds, 2), "peak_rss_mb": round(cost.peak_rss_mb, 1)} for name, cost in ctx.ledger.phases.items()}
    for name, cost in phases.items():
        print(f"  phase {name:<26} peak {cost['peak_rss_mb']:>8.1f} MiB   {cost['seconds']:>7.2f} s", flush=True)
    print(
        json.dumps(
            {
                "model": args.model,
                "method": args.method,
                "options": pruner.options.__dict__,
                "steps": steps.rows,
                "phases": phases,
                "estimates": estimates,
            }
        )
    )


if __name__ == "__main__":
    main()
