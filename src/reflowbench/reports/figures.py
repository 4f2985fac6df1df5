"""Matplotlib figures of a results folder (Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reflowbench.reports.aggregate import group, mean_std  # noqa: E402


def method_colors(methods: List[str]) -> Dict[str, Any]:
    """A colour per method: tab10, or tab20 where more than 10 would repeat."""
    size = 10 if len(methods) <= 10 else 20
    cmap = plt.get_cmap(f"tab{size}")
    return {m: cmap(i % size) for i, m in enumerate(methods)}


MIN_SWEEP_POINTS = 3  # a configuration with fewer sparsities (an ablation cell) is left to the tables


def sweep_records(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The records of configurations run at MIN_SWEEP_POINTS or more sparsities (all records when none is)."""
    sparsities: Dict[Any, set] = {}
    for r in records:
        sparsities.setdefault((r["model"], r["label"]), set()).add(r["sparsity"])
    chosen = [r for r in records if len(sparsities[(r["model"], r["label"])]) >= MIN_SWEEP_POINTS]
    return chosen or records


def _panels(records: List[Dict[str, Any]], height: float):
    """One subplot per model: (figure, axes, models, methods, colours per method); room below for the legend."""
    models = sorted({r["model"] for r in records})
    methods = sorted({r["label"] for r in records})
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), height + 0.25 * len(methods)), squeeze=False)
    return fig, axes[0], models, methods, method_colors(methods)


def _legend(ax) -> None:
    """The panel's legend below it: two columns, or one where the figure is a single panel (too narrow for two)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2 if len(ax.figure.axes) > 1 else 1, frameon=False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_vs_sparsity(records: List[Dict[str, Any]], path: Path) -> Path:
    """One panel per model: top-1 vs sparsity, dashed = after pruning, solid = after REFLOW, bands = ±1 std over seeds."""
    records = sweep_records(records)
    fig, axes, models, methods, colors = _panels(records, 4)
    grouped = group(records)
    for ax, model in zip(axes, models):
        dense = [r["dense"]["top1"] for r in records if r["model"] == model]
        ax.axhline(dense[0], color="grey", lw=1, ls=":", label=f"dense {dense[0]:.2f}%")
        for method in methods:
            keys = sorted(k for k in grouped if k[0] == model and k[1] == method)
            if not keys:
                continue
            xs = np.array([k[2] for k in keys])
            for stage, style, suffix in (("pruned", "--", ""), ("reflow", "-", " + REFLOW")):
                stats = np.array([mean_std([r[stage]["top1"] for r in grouped[k]]) for k in keys])
                ax.plot(xs, stats[:, 0], style, marker="o", ms=3, color=colors[method], label=method + suffix)
                ax.fill_between(xs, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], color=colors[method], alpha=0.15, lw=0)
        ax.set_title(model)
        ax.set_xlabel("sparsity (fraction of target weights removed)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _save(fig, path)


def pick_sparsity(records: List[Dict[str, Any]], wanted: Optional[float]) -> float:
    available = sorted({r["sparsity"] for r in records})
    if wanted is None:
        return available[-1]
    return min(available, key=lambda s: abs(s - wanted))


def signal_collapse(records: List[Dict[str, Any]], sparsity: float, path: Path) -> Path:
    """Var(pruned BN output)/Var(dense) by BN-layer depth at ``sparsity``, before (dashed) and after (solid) REFLOW."""
    chosen = [r for r in sweep_records(records) if r["sparsity"] == sparsity]
    fig, axes, models, methods, colors = _panels(chosen, 4)
    for ax, model in zip(axes, models):
        for method in methods:
            runs = [r for r in chosen if r["model"] == model and r["label"] == method]
            if not runs:
                continue
            depth = np.arange(1, len(runs[0]["variance"]["layers"]) + 1)
            for stage, style, suffix in (("pruned_ratio", "--", ""), ("reflow_ratio", "-", " + REFLOW")):
                ratios = np.array([r["variance"][stage] for r in runs], dtype=float)
                ax.plot(depth, np.nanmean(ratios, axis=0), style, marker=".", color=colors[method], label=method + suffix)
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{model}, sparsity {sparsity:g}")
        ax.set_xlabel("BN layer (input → output)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Var(pruned) / Var(dense)")
        ax.grid(alpha=0.3, which="both")
        _legend(ax)
    return _save(fig, path)


def cost_vs_sparsity(records: List[Dict[str, Any]], path: Path) -> Path:
    """Prune wall time (s, log scale) vs sparsity per method, plus the REFLOW time for reference."""
    records = sweep_records(records)
    fig, axes, models, methods, colors = _panels(records, 3.6)
    grouped = group(records)
    for ax, model in zip(axes, models):
        recal = []
        for method in methods:
            keys = sorted(k for k in grouped if k[0] == model and k[1] == method)
            if not keys:
                continue
            xs = [k[2] for k in keys]
            ys = [np.mean([r["cost"]["prune"]["seconds"] for r in grouped[k]]) for k in keys]
            ax.plot(xs, ys, marker="o", ms=3, color=colors[method], label=f"{method}: prune")
            recal += [r["cost"]["recalibrate"]["seconds"] for k in keys for r in grouped[k]]
        if recal:
            ax.axhline(float(np.mean(recal)), color="black", ls=":", lw=1, label="REFLOW (mean)")
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("wall seconds")
        ax.grid(alpha=0.3, which="both")
        _legend(ax)
    return _save(fig, path)
