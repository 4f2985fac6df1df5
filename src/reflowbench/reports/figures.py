"""Matplotlib figures of a results folder or a comparison (Agg backend; PNG files).

Every figure is small multiples: one row per model, and where a figure compares stages, one column right after
pruning (dashed lines) and one after REFLOW (solid lines). A method keeps one colour in every figure
(:func:`~reflowbench.reports.labels.method_colors`); curves are labelled by their short label (``chita tuned``,
``chita solver=iht``; :func:`~reflowbench.reports.labels.set_short_labels`, which must have run on the records). Each
row's legend sits to the right of the row, outside every plot. Each drawn line carries its method's name as its
``gid`` (what the figure tests read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reflowbench.reports.aggregate import BASELINE, mean_std  # noqa: E402
from reflowbench.reports.labels import MP_REFERENCE_COLOR, method_colors  # noqa: E402

MIN_SWEEP_POINTS = 3  # a configuration with fewer sparsities (an ablation cell) is left to the tables
PANEL = (4.4, 3.1)  # inches per panel (width, height)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")  # the configurations of one method, told apart within its colour
STAGES = (("pruned", "--", "right after pruning"), ("reflow", "-", "+ REFLOW"))


def sweep_records(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The records of configurations run at MIN_SWEEP_POINTS or more sparsities (all records when none is)."""
    sparsities: Dict[Any, set] = {}
    for r in records:
        sparsities.setdefault((r["model"], r["label"]), set()).add(r["sparsity"])
    chosen = [r for r in records if len(sparsities[(r["model"], r["label"])]) >= MIN_SWEEP_POINTS]
    return chosen or records


Curve = Dict[float, List[Dict[str, Any]]]  # sparsity -> the runs (one per seed) of one configuration


def _curves(records: List[Dict[str, Any]], model: str) -> Dict[str, Curve]:
    """label -> sparsity -> runs, for ``model``."""
    curves: Dict[str, Curve] = {}
    for r in records:
        if r["model"] == model:
            curves.setdefault(r["label"], {}).setdefault(r["sparsity"], []).append(r)
    return curves


def _first(curve: Curve) -> Dict[str, Any]:
    return next(iter(curve.values()))[0]


def _mean_top1(curve: Curve, stage: str, sparsities: Optional[set] = None) -> float:
    """Mean over ``sparsities`` (default: all the curve has) of the mean top-1 at ``stage`` over seeds."""
    chosen = [runs for sparsity, runs in curve.items() if sparsities is None or sparsity in sparsities]
    return float(np.mean([np.mean([r[stage]["top1"] for r in runs]) for runs in chosen]))


def best_per_method(curves: Dict[str, Curve], stage: str = "reflow") -> Dict[str, str]:
    """method -> the label of its configuration with the highest mean top-1 at ``stage`` over the sparsities every one of
    the method's configurations has (so a configuration run at fewer sparsities neither wins nor loses on the points it
    lacks: a row still running at 0.95 is judged on 0.5-0.9 like the others)."""
    by_method: Dict[str, List[str]] = {}
    for label, curve in curves.items():
        by_method.setdefault(_first(curve)["method"], []).append(label)
    best = {}
    for method, labels in by_method.items():
        shared = set.intersection(*(set(curves[label]) for label in labels))
        if not shared:  # no sparsity in common: judge each on its own points
            shared = None
        best[method] = max(labels, key=lambda label: (_mean_top1(curves[label], stage, shared), label))
    return best


def _grid(rows: int, columns: int):
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL[0] * columns, PANEL[1] * rows), squeeze=False)
    return fig, axes


def _style(curves: Dict[str, Curve]) -> Dict[str, Tuple[Any, str]]:
    """label -> (colour of its method, a marker that tells it from the method's other configurations)."""
    colors = method_colors({_first(c)["method"] for c in curves.values()})
    per_method: Dict[str, int] = {}
    styles = {}
    for label in sorted(curves, key=lambda lab: (_first(curves[lab])["method"], _first(curves[lab]).get("role") != "reference", lab)):
        method = _first(curves[label])["method"]
        index = per_method.get(method, 0)
        per_method[method] = index + 1
        styles[label] = (colors[method], MARKERS[index % len(MARKERS)])
    return styles


def _plot_curve(ax, curve: Curve, stage: str, style: str, color: Any, marker: str, label: str, band: bool = True) -> None:
    xs = np.array(sorted(curve))
    stats = np.array([mean_std([r[stage]["top1"] for r in curve[s]]) for s in xs])
    (line,) = ax.plot(xs, stats[:, 0], style, marker=marker, ms=3.5, lw=1.4, color=color, label=label)
    line.set_gid(_first(curve)["method"])
    if band:
        ax.fill_between(xs, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], color=color, alpha=0.12, lw=0)


def _mp_reference(ax, curves: Dict[str, Curve], best: Dict[str, str]) -> None:
    """MP + REFLOW (its best configuration) as a thick grey line: the line every method is read against."""
    if BASELINE not in best:
        return
    curve = curves[best[BASELINE]]
    xs = sorted(curve)
    ys = [float(np.mean([r["reflow"]["top1"] for r in curve[s]])) for s in xs]
    (line,) = ax.plot(xs, ys, "-", color=MP_REFERENCE_COLOR, lw=3.5, alpha=0.45, zorder=1, label="MP + REFLOW")
    line.set_gid("mp-reference")


def _dense(ax, records: List[Dict[str, Any]], model: str) -> None:
    dense = next(r["dense"]["top1"] for r in records if r["model"] == model)
    ax.axhline(dense, color="grey", lw=1, ls=":", label=f"dense {dense:.1f}%")


def _row_legend(row) -> None:
    """One legend for the row's panels (each label once), to the right of its last panel, outside it (one column; two
    past 14 entries)."""
    handles: Dict[str, Any] = {}
    for ax in row:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    row[-1].legend(
        list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False, ncol=1 if len(handles) <= 14 else 2
    )


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legends outside the panels widen the image instead of being cut
    plt.close(fig)
    return path


def _accuracy_axes(ax, model: str, title: str) -> None:
    ax.set_title(f"{model}: {title}", fontsize=10)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def accuracy_vs_sparsity(records: List[Dict[str, Any]], path: Path) -> Path:
    """The comparison at a glance: per model, right after pruning (dashed) and after REFLOW (solid), one curve per method
    (its configuration with the best mean top-1 after REFLOW; bands ±1 std over seeds), MP + REFLOW the grey line in both."""
    records = sweep_records(records)
    models = list(dict.fromkeys(r["model"] for r in records))  # in the order the folders were read
    fig, axes = _grid(len(models), 2)
    for row, model in zip(axes, models):
        curves = _curves(records, model)
        styles, best = _style(curves), best_per_method(curves)
        for ax, (stage, style, title) in zip(row, STAGES):
            _mp_reference(ax, curves, best)
            for method in sorted(best, key=lambda m: (m == BASELINE, m)):
                label = best[method]
                if method == BASELINE and stage == "reflow":
                    continue  # the grey line is MP + REFLOW
                color, marker = styles[label]
                _plot_curve(ax, curves[label], stage, style, color, marker, _first(curves[label])["short"])
            _dense(ax, records, model)
            _accuracy_axes(ax, model, title)
        _row_legend(row)
    return _save(fig, path)


def accuracy_all_configurations(records: List[Dict[str, Any]], path: Path) -> Path:
    """Every configuration run at 3 or more sparsities: per model, right after pruning (dashed) and after REFLOW (solid);
    colour = method, marker = configuration; no bands (the tables give the spread)."""
    records = sweep_records(records)
    models = list(dict.fromkeys(r["model"] for r in records))  # in the order the folders were read
    fig, axes = _grid(len(models), 2)
    for row, model in zip(axes, models):
        curves = _curves(records, model)
        styles = _style(curves)
        for ax, (stage, style, title) in zip(row, STAGES):
            for label in styles:
                color, marker = styles[label]
                _plot_curve(ax, curves[label], stage, style, color, marker, _first(curves[label])["short"], band=False)
            _dense(ax, records, model)
            _accuracy_axes(ax, model, title)
        _row_legend(row)
    return _save(fig, path)


def pick_sparsity(records: List[Dict[str, Any]], wanted: Optional[float]) -> float:
    available = sorted({r["sparsity"] for r in records})
    if wanted is None:
        return available[-1]
    return min(available, key=lambda s: abs(s - wanted))


def signal_collapse(records: List[Dict[str, Any]], sparsity: float, path: Path) -> Path:
    """Var(pruned BN output)/Var(dense) by BN-layer depth at ``sparsity``, one row per model, one curve per method (its
    best configuration after REFLOW): dashed right after pruning, solid after REFLOW."""
    chosen = [r for r in sweep_records(records) if r["sparsity"] == sparsity]
    models = list(dict.fromkeys(r["model"] for r in chosen))
    fig, axes = _grid(len(models), 1)
    for (ax,), model in zip(axes, models):
        curves = _curves(chosen, model)
        styles, best = _style(curves), best_per_method(curves)
        for method in sorted(best):
            runs = curves[best[method]][sparsity]
            color, marker = styles[best[method]]
            depth = np.arange(1, len(runs[0]["variance"]["layers"]) + 1)
            for stage, style, suffix in (("pruned_ratio", "--", ""), ("reflow_ratio", "-", " + REFLOW")):
                ratios = np.array([r["variance"][stage] for r in runs], dtype=float)
                (line,) = ax.plot(depth, np.nanmean(ratios, axis=0), style, marker=marker, ms=3, color=color, label=runs[0]["short"] + suffix)
                line.set_gid(method)
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{model}, sparsity {sparsity:g}", fontsize=10)
        ax.set_xlabel("BN layer (input → output)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Var(pruned) / Var(dense)")
        ax.grid(alpha=0.3, which="both")
        _row_legend([ax])
    return _save(fig, path)


def cost_vs_sparsity(records: List[Dict[str, Any]], path: Path) -> Path:
    """Prune wall time (s, log scale) vs sparsity per configuration, one row per model, plus the mean REFLOW time."""
    records = sweep_records(records)
    models = list(dict.fromkeys(r["model"] for r in records))  # in the order the folders were read
    fig, axes = _grid(len(models), 1)
    for (ax,), model in zip(axes, models):
        curves = _curves(records, model)
        styles = _style(curves)
        recal = []
        for label, (color, marker) in styles.items():
            curve = curves[label]
            xs = sorted(curve)
            ys = [max(float(np.mean([r["cost"]["prune"]["seconds"] for r in curve[s]])), 1e-4) for s in xs]
            (line,) = ax.plot(xs, ys, marker=marker, ms=3.5, color=color, label=_first(curve)["short"])
            line.set_gid(_first(curve)["method"])
            recal += [r["cost"]["recalibrate"]["seconds"] for runs in curve.values() for r in runs if "recalibrate" in r["cost"]]
        if recal:
            ax.axhline(float(np.mean(recal)), color="black", ls=":", lw=1, label="REFLOW (mean)")
        ax.set_yscale("log")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("pruning wall seconds")
        ax.grid(alpha=0.3, which="both")
        _row_legend([ax])
    return _save(fig, path)


__all__ = [
    "accuracy_all_configurations",
    "accuracy_vs_sparsity",
    "best_per_method",
    "cost_vs_sparsity",
    "pick_sparsity",
    "signal_collapse",
    "sweep_records",
]
