"""How far each layer-wise mask rule is from ExactOBS on a model's own layers: the reconstruction error of every layer
under SparseGPT's column sweep, the sweep's mask re-fitted exactly, the magnitude mask re-fitted exactly and ExactOBS's
greedy mask (re-fitted), each relative to the layer's dense output energy.

    python bench/layer_errors.py --model mobilenetv1 --checkpoint ../shared/models/mobilenetv1_cifar10_jpeg.pt \
        --data ../shared/datasets/cifar10-jpeg.tar.gz --sparsity 0.5 --out reports/layerwise-errors/mobilenetv1-s0.5.md

Every layer's H = X X^T / n from the dense network's inputs (the parallel mode's H) on the first ``--images`` images
of seed 0's Fisher range of the training split (the pruners' own images), ``--damp`` relative damping, every layer at
``--sparsity``. Per layer: sum over rows of (w_hat - w)^T H (w_hat - w) over sum over rows of w^T H w, and the same with
each output channel weighted by the following BatchNorm's (gamma / sigma)^2 (the error the next layer sees after the
BN). ExactOBS is skipped on layers with more than ``--max-columns`` inputs per row (O(rows d^3)). Writes a markdown
table and a summary (geometric mean of each rule's error over ExactOBS's, depthwise and other layers apart).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from reflowbench.datasets import load_dataset
from reflowbench.datasets.splits import SubsetSizes, disjoint_subsets
from reflowbench.errors import ReflowbenchError
from reflowbench.models import build_model
from reflowbench.pruners import PruneContext, make_pruner, select_targets
from reflowbench.reconstruction import InputHessian, collect_hessians, damped


def following_bn_weights(model: nn.Module, name: str, channels: int) -> torch.Tensor:
    """(gamma / sigma)^2 per output channel of the first BatchNorm after module ``name`` in registration order with
    ``channels`` features (ones when there is none: e.g. the classifier), float64 (channels,)."""
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    for later in names[names.index(name) + 1 :]:
        bn = modules[later]
        if isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels:
            scale = bn.weight.detach() if bn.weight is not None else torch.ones(channels)
            return (scale.double() ** 2) / (bn.running_var.double() + bn.eps)
    return torch.ones(channels, dtype=torch.float64)


RULE_OPTIONS = {  # each rule as the pruner that ships it runs one layer (its own prune_layer)
    "sweep": ("sparsegpt", {"mask": "adaptive", "block_size": 128, "refit": False}),
    "sweep mask + re-fit": ("sparsegpt", {"mask": "adaptive", "block_size": 128, "refit": True}),
    "magnitude + re-fit": ("sparsegpt", {"mask": "magnitude"}),
    "ExactOBS": ("obc", {}),
}
RULES = tuple(RULE_OPTIONS)


def errors_of(rows: torch.Tensor, hessian: InputHessian, count: int, channel_weight: torch.Tensor, damp: float, max_columns: int) -> Dict[str, Optional[tuple]]:
    """{rule: (relative error, BN-weighted relative error)} for the rows (G, R, d) float64 of one layer with input
    Hessian ``hessian``, ``count`` weights pruned by each rule's own pruner (``damp`` relative damping); ExactOBS None
    above ``max_columns`` inputs per row (where OBC itself would fall back to the sweep)."""
    g, r, d = rows.shape
    weight = channel_weight.view(g, r, 1).sqrt()
    matrix, _ = damped(hessian.matrix(), damp)

    def relative(new: torch.Tensor) -> tuple:
        delta = new - rows
        energy = torch.einsum("grd,gde,gre->", rows, matrix, rows)
        weighted_energy = torch.einsum("grd,gde,gre->", rows * weight, matrix, rows * weight)
        error = torch.einsum("grd,gde,gre->", delta, matrix, delta) / energy
        weighted = torch.einsum("grd,gde,gre->", delta * weight, matrix, delta * weight) / weighted_energy
        return float(error), float(weighted)

    out: Dict[str, Optional[tuple]] = {}
    for rule, (method, options) in RULE_OPTIONS.items():
        if method == "obc" and d > max_columns:
            out[rule] = None
            continue
        pruner = make_pruner(method, {**options, "damp": damp, **({"max_columns": max_columns} if method == "obc" else {})})
        new, _ = pruner.prune_layer("layer", rows, hessian, count, PruneContext(device=rows.device, seed=0))
        out[rule] = relative(new)
    return out


def geometric_ratio(rows: List[Dict[str, Optional[tuple]]], rule: str, part: int) -> Optional[float]:
    """The geometric mean over ``rows`` (layers with ExactOBS) of ``rule``'s error over ExactOBS's (part 0: plain, 1: BN-weighted)."""
    logs = [math.log(row[rule][part] / row["ExactOBS"][part]) for row in rows if row["ExactOBS"] is not None and row["ExactOBS"][part] > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def summary_rows(table: List[Dict]) -> List[str]:
    """One markdown row per rule but ExactOBS: its geometric-mean error over ExactOBS's on the depthwise layers, on the
    others, then the same BN-weighted, in the summary header's column order ('–' where there is no such layer)."""
    depthwise = [row for row in table if row["depthwise"]]
    others = [row for row in table if not row["depthwise"]]
    lines = []
    for rule in RULES[:3]:
        cells = [geometric_ratio(layers, rule, part) for part in (0, 1) for layers in (depthwise, others)]  # plain dw, plain other, BN dw, BN other
        lines.append(f"| {rule} | " + " | ".join("–" if c is None else f"{c:.2f}x" for c in cells) + " |")
    return lines


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any loading, values no run could use (one line naming the flag, exit status 2)."""
    if not 0.0 < args.sparsity < 1.0:
        parser.error(f"--sparsity must be in (0, 1), got {args.sparsity}")
    for flag, value in (("--images", args.images), ("--max-columns", args.max_columns), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} must be an integer >= 1, got {value}")
    if not args.damp > 0.0:
        parser.error(f"--damp must be > 0 (a fraction of the mean diagonal of H), got {args.damp}")
    if not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (a dense checkpoint of --model)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--max-columns", type=int, default=1152)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    check_arguments(parser, args)
    torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, Path(args.data), None, False, 1, False)
        model = build_model(args.model, data.num_classes, Path(args.checkpoint)).eval()
    except ReflowbenchError as error:  # unknown model or dataset, unreadable data or checkpoint: its one line
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    fisher = disjoint_subsets(len(data.train), SubsetSizes(1, args.images, 1), 0)["fisher"]
    images = [x for x, _ in data.train.batches(fisher, 64)]
    targets = select_targets(model)
    modules = {t.param_name: model.get_submodule(t.module_name) for t in targets}
    start = time.perf_counter()
    hessians = collect_hessians(model, modules, images, torch.device("cpu"))
    table = []
    for t in targets:
        hessian = hessians.pop(t.param_name)
        geometry = hessian.geometry
        rows = geometry.rows_of(t.weight.detach()).to(torch.float64)
        count = round(args.sparsity * rows.numel())
        channel_weight = following_bn_weights(model, t.module_name, geometry.groups * geometry.rows)
        row = errors_of(rows, hessian, count, channel_weight, args.damp, args.max_columns)
        row.update(layer=t.param_name, shape=f"{geometry.groups} x {geometry.rows} x {geometry.columns}", depthwise=geometry.groups > 1 and geometry.rows == 1)
        table.append(row)
        print(f"{t.param_name}: " + ", ".join(f"{rule} {row[rule][0]:.4g}" for rule in RULES if row[rule] is not None), flush=True)
    seconds = time.perf_counter() - start
    lines = [
        f"# Layer-wise mask rules against ExactOBS: {args.model}, sparsity {args.sparsity}",
        "",
        f"Generated by `python bench/layer_errors.py --model {args.model} --checkpoint {args.checkpoint} --data {args.data} "
        f"--sparsity {args.sparsity} --images {args.images} --damp {args.damp} --max-columns {args.max_columns} --out {args.out}` "
        f"({seconds:.0f} s, {args.threads} thread(s)). Each cell: the layer's reconstruction error relative to its dense "
        "output energy, then the same with each output channel weighted by the following BatchNorm's (gamma / sigma)^2. "
        "Every layer at the same sparsity, H from the dense network's inputs, "
        f"{args.images} images of seed 0's Fisher range, {args.damp:g} relative damping.",
        "",
        "| rule | depthwise layers: error / ExactOBS's (geometric mean) | other layers | depthwise, BN-weighted | other, BN-weighted |",
        "|---|---|---|---|---|",
    ]
    lines += summary_rows(table)
    lines += ["", "| layer | groups x rows x columns | " + " | ".join(RULES) + " |", "|---|---|" + "---|" * len(RULES)]
    for row in table:
        cells = ["–" if row[rule] is None else f"{row[rule][0]:.4f} / {row[rule][1]:.4f}" for rule in RULES]
        lines.append(f"| {row['layer']} | {row['shape']} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"table: {out}")


if __name__ == "__main__":
    main()
