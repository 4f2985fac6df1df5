"""Which BN layers need REFLOW (``ablate-reflow --layers``): top-1 against k for REFLOW of the first k and of the last
k BN layers, each layer's own gain, as a figure and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reflowbench.reports.aggregate import markdown_table  # noqa: E402

Series = Dict[Tuple[str, str, float], List[Dict[str, Any]]]
CAPTION = (
    "REFLOW of a subset of the BN layers only, from the same pruned weights (the other layers keep the dense model's "
    "statistics), at the sweep's calibration batches × batch size. Left: top-1 after REFLOW of the first k BN layers "
    "(from the input) and of the last k (from the output); k = 0 is the pruned network, k = all is full REFLOW. Right: "
    "each BN layer's own gain, top-1 with that layer alone recalibrated minus the pruned network's. Mean over seeds."
)


def _by_k(records: List[Dict[str, Any]], subset: str) -> Tuple[List[int], np.ndarray, List[str]]:
    """(the k present, mean top-1 over seeds per k, the layer names of 'each' by k) of ``subset`` cells."""
    values: Dict[int, List[float]] = {}
    names: Dict[int, str] = {}
    for record in records:
        for cell in record["cells"]:
            if cell.get("subset") == subset:
                values.setdefault(cell["k"], []).append(cell["top1"])
                names[cell["k"]] = cell["layers"][0]
    ks = sorted(values)
    return ks, np.array([np.mean(values[k]) for k in ks]), [names[k] for k in ks]


def _pruned(records: List[Dict[str, Any]]) -> float:
    return float(np.mean([r["pruned"]["top1"] for r in records if "pruned" in r]))


def layer_subset_figure(grouped: Series, path: Path) -> Path:
    """One row per (model, method, sparsity): left, top-1 vs k (first k, last k); right, each layer's own gain."""
    fig, axes = plt.subplots(len(grouped), 2, figsize=(12, 3.6 * len(grouped)), squeeze=False)
    for row, ((model, method, sparsity), records) in enumerate(sorted(grouped.items())):
        left, right = axes[row]
        pruned = _pruned(records)
        for subset, color in (("first", "tab:blue"), ("last", "tab:orange")):
            ks, top1, _ = _by_k(records, subset)
            if ks:
                left.plot([0, *ks], [pruned, *top1], marker="o", color=color, label=f"{subset} k BN layers", gid=subset)
        left.axhline(records[0]["dense"]["top1"], color="grey", linestyle=":", linewidth=1, label="dense")
        left.set_xlabel("k (BN layers recalibrated)")
        left.set_ylabel("test top-1 (%)")
        left.set_title(f"{model}, {method} at {sparsity:g} ({len(records)} seed{'s' if len(records) > 1 else ''})", fontsize=10)
        left.grid(alpha=0.3)
        left.legend(fontsize=8)
        ks, top1, names = _by_k(records, "each")
        if ks:
            right.bar(ks, top1 - pruned, color="tab:green", gid="each")
            right.set_xticks(ks, [str(k) for k in ks], fontsize=7)
        right.set_xlabel("BN layer (1 = nearest the input)")
        right.set_ylabel("top-1 gain of that layer alone (points)")
        right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _cell(column: Dict[int, float], k: int) -> str:
    return f"{column[k]:.2f}" if k in column else "–"


def layer_section(grouped: Series, figure: Path) -> List[str]:
    """Markdown: the caption, the figure, and per series a table of k against the first-k, last-k and own-layer top-1."""
    lines = ["## Which BN layers need REFLOW", "", CAPTION, "", f"![Which layers need REFLOW](figures/{figure.name})", ""]
    for (model, method, sparsity), records in sorted(grouped.items()):
        pruned = _pruned(records)
        columns = {subset: dict(zip(*_by_k(records, subset)[:2])) for subset in ("first", "last", "each")}
        _, _, names = _by_k(records, "each")
        layer_names = dict(zip(_by_k(records, "each")[0], names))
        rows = []
        for k in sorted(set().union(*[set(c) for c in columns.values()])):
            own = f"{columns['each'][k] - pruned:+.2f}" if k in columns["each"] else "–"
            rows.append([str(k), _cell(columns["first"], k), _cell(columns["last"], k), layer_names.get(k, "–"), _cell(columns["each"], k), own])
        lines += [
            f"### {model}, {method} at sparsity {sparsity:g}",
            "",
            f"Dense top-1 {records[0]['dense']['top1']:.2f}%; pruned, no REFLOW {pruned:.2f}% (seeds {sorted(r['seed'] for r in records)}).",
            "",
            markdown_table(["k", "first k (%)", "last k (%)", "k-th layer", "k-th alone (%)", "its own gain"], rows),
            "",
        ]
    return lines
