"""Accuracy for the compute: which configuration to use at a sparsity when pruning time matters.

Per (model, sparsity) of the main sweeps, each configuration is a point (mean pruning wall seconds per run,
mean top-1 after REFLOW over seeds). The table names the best point, the cheapest point within a tolerance of
it, and the Pareto front: every configuration that no cheaper one matches or beats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np
from matplotlib.lines import Line2D

from reflowbench.reports.aggregate import group
from reflowbench.reports.figures import MARKERS, plt, sweep_records
from reflowbench.reports.labels import method_colors

NEAR_BEST_POINTS = 0.5  # "within this many top-1 points of the best" for the cheapest-near-best column
MIN_SECONDS = 1e-4  # records keep seconds to 0.1 ms: a faster pruning counts as this (no zero on the log axis, no division by it)


class CostPoint(NamedTuple):
    """One configuration at one sparsity: its label, mean pruning seconds per run, mean top-1 % (pruned, after REFLOW),
    seeds, and its pruner's registry name."""

    label: str
    prune_s: float
    top1_pruned: float
    top1_reflow: float
    seeds: int
    method: str = ""


Points = Dict[Tuple[str, float], List[CostPoint]]  # (model, sparsity) -> one point per configuration


def cost_points(records: List[Dict[str, Any]]) -> Points:
    """(model, sparsity) -> one :class:`CostPoint` per configuration of the main sweeps: the means over seeds that
    the best-method table, the compute table and the accuracy-vs-cost figure all read. Pruning seconds are as
    recorded: a run's gradients and curvature included even where its seed reused them (the cost of pruning that
    model at that sparsity from scratch)."""
    points: Points = {}
    for (model, label, sparsity), runs in group(sweep_records(records)).items():
        points.setdefault((model, sparsity), []).append(
            CostPoint(
                runs[0].get("short", label),
                max(float(np.mean([r["cost"]["prune"]["seconds"] for r in runs])), MIN_SECONDS),
                float(np.mean([r["pruned"]["top1"] for r in runs])),
                float(np.mean([r["reflow"]["top1"] for r in runs])),
                len(runs),
                runs[0]["method"],
            )
        )
    return points


def most_seeds(points: Points) -> int:
    """The most seeds any configuration has (tables show a point's seed count only when it has fewer)."""
    return max((p.seeds for mine in points.values() for p in mine), default=1)


def pareto_front(points: List[CostPoint]) -> List[CostPoint]:
    """The points no cheaper (or equally cheap) point matches or beats after REFLOW, cheapest first."""
    front: List[CostPoint] = []
    for point in sorted(points, key=lambda p: (p.prune_s, -p.top1_reflow)):
        if not front or point.top1_reflow > front[-1].top1_reflow:
            front.append(point)
    return front


def _show(point: CostPoint, seeds: int) -> str:
    """``label top-1 in N s``, with the seed count when it is below ``seeds`` (the most any configuration has)."""
    seconds = f"{point.prune_s:.2g} s" if point.prune_s < 10 else f"{point.prune_s:,.0f} s"
    fewer = f" ({point.seeds} seed{'s' if point.seeds > 1 else ''})" if point.seeds < seeds else ""
    return f"{point.label} {point.top1_reflow:.2f} in {seconds}{fewer}"


def _times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:,.0f}×"


def compute_front_rows(by_point: Points, near: float = NEAR_BEST_POINTS) -> Tuple[List[str], List[List[str]]]:
    """Header and rows from :func:`cost_points`: model, sparsity, the best top-1 after REFLOW (with its pruning seconds), the cheapest
    configuration within ``near`` points of it and how many times cheaper it is, and the Pareto front."""
    header = [
        "model",
        "sparsity",
        "best + REFLOW (top-1 % in prune s)",
        f"cheapest within {near:g} points",
        "cheaper by",
        "Pareto front, cheapest first (no cheaper configuration matches it)",
    ]
    rows = []
    seeds = most_seeds(by_point)
    for (model, sparsity), points in sorted(by_point.items()):
        best = max(points, key=lambda p: p.top1_reflow)
        cheapest = min((p for p in points if p.top1_reflow >= best.top1_reflow - near), key=lambda p: p.prune_s)
        ratio = best.prune_s / cheapest.prune_s if cheapest.prune_s > 0 else float("inf")
        front = "; ".join(_show(p, seeds) for p in pareto_front(points))
        rows.append([model, f"{sparsity:g}", _show(best, seeds), _show(cheapest, seeds), _times(ratio), front])
    return header, rows


def accuracy_vs_cost(points: Points, sparsity: float, path: Path) -> Path:
    """From :func:`cost_points`, one panel per model at ``sparsity``: top-1 (%) against mean pruning wall seconds per run (log scale), one point
    per configuration, hollow = right after pruning, filled = after REFLOW, joined by a thin line; the Pareto front
    after REFLOW dashed. One legend for all panels (a configuration keeps its colour across them)."""
    models = sorted({model for model, s in points if s == sparsity})
    chosen = [p for (model, s), mine in points.items() if s == sparsity for p in mine]
    colors = method_colors({p.method for p in chosen})
    labels = sorted({(p.method, p.label) for p in chosen})
    markers: Dict[str, str] = {}
    for method, label in labels:
        markers[label] = MARKERS[sum(1 for m, _ in labels if m == method and _ in markers) % len(MARKERS)]
    color_of = {label: colors[method] for method, label in labels}
    columns = 2 if len(models) > 1 else 1  # one panel is too narrow for two columns of long labels
    rows = -(-(len(labels) + 1) // columns)
    height = 4.0 + 0.16 * rows
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), height), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = points[(model, sparsity)]
        for point in mine:
            color, marker = color_of[point.label], markers[point.label]
            ax.plot([point.prune_s] * 2, [point.top1_pruned, point.top1_reflow], color=color, lw=0.8, alpha=0.6)
            ax.scatter([point.prune_s], [point.top1_pruned], facecolors="none", edgecolors=[color], marker=marker, s=30)
            ax.scatter([point.prune_s], [point.top1_reflow], color=color, marker=marker, s=30).set_gid(point.method)
        front = pareto_front(mine)
        ax.plot([p.prune_s for p in front], [p.top1_reflow for p in front], color="black", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{model}, sparsity {sparsity:g}")
        ax.set_xlabel("pruning wall seconds per run")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], marker=markers[label], ls="", color=color_of[label], label=label) for _, label in labels]
    handles.append(Line2D([], [], color="black", ls="--", lw=0.8, label="Pareto front after REFLOW (hollow: right after pruning)"))
    legend_share = 0.16 * rows / height + 0.02
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_share, 1, 1))
    fig.savefig(path, dpi=130, bbox_inches="tight")  # a label wider than the figure widens the image instead of being cut
    plt.close(fig)
    return path


__all__ = ["CostPoint", "NEAR_BEST_POINTS", "Points", "accuracy_vs_cost", "compute_front_rows", "cost_points", "most_seeds", "pareto_front"]
