"""The channel-pruning section of a report (runs made with ``--pattern channels``): per model, method and fraction of
channels removed, top-1 right after pruning and after REFLOW, parameters and FLOPs against dense (counted), and the
measured latency against dense (``torch.utils.benchmark`` on the run's own device and threads); its figure plots top-1
against the measured speed-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reflowbench.reports.aggregate import fmt, group, mean_std, shown  # noqa: E402

CAPTION = (
    "Whole output channels removed (the same fraction of every prunable channel group; the groups left whole are listed in each "
    "run's notes), giving a dense, smaller network. Top-1: mean ± std over seeds, right after pruning and after REFLOW. Params and "
    "GFLOPs per image: counted (PyTorch's FLOP counter), with their share of the dense model's. Latency: the median of timed blocks of "
    "forward passes (torch.utils.benchmark) on the run's device and threads, against the dense model timed right before it in the same run; the "
    "speed-up is dense over pruned (mean over seeds). The machine's load average at each run is in its record: timings on a busy "
    "machine are not idle-machine figures. Every method removes the same number of channels from the same groups at one fraction (the "
    "same network size and FLOPs), so differences of measured speed-up between methods at one fraction are timing noise."
)
SPEEDUP_BATCH = "256"


def has_structure(records: List[Dict[str, Any]]) -> bool:
    return any("structure" in r for r in records)


def _speedup(record: Dict[str, Any], batch: str) -> float:
    structure = record["structure"]
    return structure["dense_latency"][batch]["median_ms"] / structure["latency"][batch]["median_ms"]


def structure_table(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows: model, method, channels removed, seeds, top-1 pruned and after REFLOW, params, GFLOPs, latency at
    batch 1 and 256 (ms) with the speed-up, the last variance ratio before and after REFLOW."""
    header = [
        "model",
        "method",
        "channels removed",
        "seeds",
        "top-1 pruned",
        "top-1 REFLOW",
        "params (M, × dense)",
        "GFLOPs (× dense)",
        "ms @1 (speed-up)",
        "ms @256 (speed-up)",
        "last var ratio → REFLOW",
    ]
    rows = []
    for (model, _label, _sparsity), runs in group([r for r in records if "structure" in r]).items():
        first = runs[0]["structure"]
        reflow = [r["reflow"]["top1"] for r in runs if "reflow" in r]
        timing = []
        for batch in ("1", "256"):
            ms = np.mean([r["structure"]["latency"][batch]["median_ms"] for r in runs])
            timing.append(f"{ms:.2f} ({np.mean([_speedup(r, batch) for r in runs]):.2f}×)")
        last = [r["variance"]["pruned"]["last"] for r in runs]
        last_reflow = [r["variance"]["reflow"]["last"] for r in runs if "reflow" in r.get("variance", {})]
        rows.append(
            [
                model,
                shown(runs[0]),
                f"{np.mean([r['sparsity_actual'] for r in runs]):.3f}",
                str(len(runs)),
                fmt(*mean_std([r["pruned"]["top1"] for r in runs])),
                fmt(*mean_std(reflow)) if reflow else "–",
                f"{first['params'] / 1e6:.3f} ({first['params'] / first['dense_params']:.2f})",
                f"{first['flops'] / 1e9:.4f} ({first['flops'] / first['dense_flops']:.2f})",
                *timing,
                f"{np.mean(last):.3g} → {np.mean(last_reflow):.3g}" if last_reflow else f"{np.mean(last):.3g}",
            ]
        )
    return header, rows


def structure_figure(records: List[Dict[str, Any]], path: Path) -> Path:
    """Top-1 against the measured speed-up at batch 256, one panel per model, one colour per method; hollow: right after
    pruning, filled: after REFLOW; each point a fraction of channels (mean over seeds), the dense model at 1×."""
    panels: Dict[str, Dict[str, List[Tuple[float, float, float]]]] = {}
    dense: Dict[str, float] = {}
    for (model, _label, _sparsity), runs in group([r for r in records if "structure" in r]).items():
        reflow = [r["reflow"]["top1"] for r in runs if "reflow" in r]
        point = (
            float(np.mean([_speedup(r, SPEEDUP_BATCH) for r in runs])),
            float(np.mean([r["pruned"]["top1"] for r in runs])),
            float(np.mean(reflow)) if reflow else float("nan"),
        )
        panels.setdefault(model, {}).setdefault(shown(runs[0]), []).append(point)
        dense[model] = runs[0]["dense"]["top1"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.4, 3.6), squeeze=False)
    methods = sorted({m for lines in panels.values() for m in lines})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, (model, lines) in zip(axes.flat, sorted(panels.items())):
        for method, points in sorted(lines.items()):
            points.sort()
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], "--o", color=colors[method], markerfacecolor="none")
            ax.plot(xs, [p[2] for p in points], "-o", color=colors[method], label=method)
        ax.plot([1.0], [dense[model]], "k*", markersize=10, label="dense")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel(f"measured speed-up at batch {SPEEDUP_BATCH} (dense / pruned latency)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, title="dashed hollow: pruned\nsolid: REFLOW")
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (5.2 * len(panels) + 1.4), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
