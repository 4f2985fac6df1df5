"""The corrections section of a report: every correction's top-1, gain over the pruned network, variance ratios and
calibration cost, per model, method and sparsity (from runs made with ``--corrections``), and its figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reflowbench.reports.aggregate import fmt, group, mean_std, shown  # noqa: E402
from reflowbench.schema.results import correction_stages  # noqa: E402

CAPTION = (
    "Each correction is applied to the same pruned weights (a copy each) and evaluated on the test split; 'none' is the "
    "pruned network. Gain: top-1 points over 'none' (mean over seeds). Variance ratio: the last signal point's output "
    "variance over the dense model's (BN layers; other normalisation layers, or the layers, in networks without BN), on "
    "held-out training images. Cost: the correction's wall seconds and the calibration images it ran through the network "
    "times its forward passes (a pass cut short after the layer it measures counts as one)."
)


def has_corrections(records: List[Dict[str, Any]]) -> bool:
    """Whether any run was made with corrections other than REFLOW alone (or without REFLOW)."""
    return any("corrections" in r or "reflow" not in r for r in records)


def _by_correction(runs: List[Dict[str, Any]]) -> Dict[str, List[Tuple[Dict[str, Any], Dict[str, Any], Any]]]:
    """correction -> [(metrics, ratio summary, seconds) per seed]."""
    stages: Dict[str, List[Tuple[Dict[str, Any], Dict[str, Any], Any]]] = {}
    for record in runs:
        for name, metrics, ratios, seconds in correction_stages(record):
            stages.setdefault(name, []).append((metrics, ratios, seconds))
    return stages


def _cost(name: str, record: Dict[str, Any]) -> str:
    if name == "none":
        return "–"
    if name == "reflow":
        return f"{record['reflow']['images']:,} × 1"
    entry = record["corrections"][name]
    return f"{entry['images']:,} × {entry['passes']}"


def corrections_table(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows: model, method, sparsity, correction, seeds, top-1, gain over none, last and min variance ratio,
    seconds, calibration images × passes."""
    header = ["model", "method", "sparsity", "correction", "seeds", "top-1 (%)", "gain", "last var ratio", "min var ratio", "seconds", "images × passes"]
    rows = []
    for (model, _label, sparsity), runs in group(records).items():
        stages = _by_correction(runs)
        base = mean_std([m["top1"] for m, _, _ in stages["none"]])[0]
        for name, seeds in stages.items():
            top1 = mean_std([m["top1"] for m, _, _ in seeds])
            seconds = [s for _, _, s in seeds if s is not None]
            rows.append(
                [
                    model,
                    shown(runs[0]),
                    f"{sparsity:g}",
                    name,
                    str(len(seeds)),
                    fmt(*top1),
                    "–" if name == "none" else f"{top1[0] - base:+.2f}",
                    f"{mean_std([r.get('last', float('nan')) for _, r, _ in seeds])[0]:.3g}",
                    f"{mean_std([r.get('min', float('nan')) for _, r, _ in seeds])[0]:.3g}",
                    "–" if name == "none" or not seconds else f"{np.mean(seconds):.2f}",
                    _cost(name, runs[0]),
                ]
            )
    return header, rows


def corrections_figure(records: List[Dict[str, Any]], path: Path) -> Path:
    """Top-1 against sparsity, one panel per (model, method), one line per correction (mean over seeds, ±1 std band)."""
    panels: Dict[Tuple[str, str], Dict[str, Dict[float, List[float]]]] = {}
    for record in records:
        lines = panels.setdefault((record["model"], shown(record)), {})
        for name, metrics, _, _ in correction_stages(record):
            lines.setdefault(name, {}).setdefault(record["sparsity"], []).append(metrics["top1"])
    names = sorted({name for lines in panels.values() for name in lines}, key=lambda n: (n != "none", n != "reflow", n))
    colors = {name: plt.cm.tab10(index % 10) for index, name in enumerate(names)}
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns + 1.6, 3.1 * rows), squeeze=False)
    for ax, ((model, method), lines) in zip(axes.flat, sorted(panels.items())):
        for name in names:
            if name not in lines:
                continue
            xs = sorted(lines[name])
            means = np.array([np.mean(lines[name][x]) for x in xs])
            stds = np.array([np.std(lines[name][x]) for x in xs])
            style = "--" if name == "none" else "-"
            ax.plot(xs, means, style, marker="o", color=colors[name], label=name, gid=name)
            ax.fill_between(xs, means - stds, means + stds, color=colors[name], alpha=0.15, linewidth=0)
        ax.set_title(f"{model}: {method}", fontsize=10)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    legend: Dict[str, Any] = {}  # every correction of every panel, once, in the panels' order
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    ordered = [name for name in names if name in legend]
    fig.legend([legend[name] for name in ordered], ordered, loc="center right", title="correction", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (4.4 * columns + 1.6), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
