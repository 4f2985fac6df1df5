"""The REFLOW ablation's page and figure (``reflow-ablation.md``, ``figures/reflow_ablation.png``) from the
cell files that ``reflowbench ablate-reflow`` writes under ``<out>/reflow-ablation/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reflowbench.errors import ReflowbenchError  # noqa: E402
from reflowbench.reports.ablation_layers import layer_section, layer_subset_figure  # noqa: E402
from reflowbench.reports.aggregate import markdown_table  # noqa: E402
from reflowbench.utils.io import atomic_write_text  # noqa: E402

FOLDER = "reflow-ablation"
Series = Dict[Tuple[str, str, float], List[Dict[str, Any]]]  # (model, method, sparsity) -> one record per seed


def grid_cells(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The record's (batches, batch size) cells, without its layer-subset cells."""
    return [cell for cell in record["cells"] if "subset" not in cell]


def only_with(grouped: Series, layer_cells: bool) -> Series:
    """The series whose records have layer-subset cells (``layer_cells``) or grid cells (not)."""
    keep = {key: [r for r in records if any(("subset" in c) == layer_cells for c in r["cells"])] for key, records in grouped.items()}
    return {key: records for key, records in keep.items() if records}


def load_ablation(out: Path) -> Series:
    """Every readable ablation record under ``out/reflow-ablation``, grouped by (model, method, sparsity)."""
    grouped: Series = {}
    for path in sorted((Path(out) / FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("kind") == "reflow-ablation" and record.get("cells"):
            grouped.setdefault((record["model"], record["method"], record["sparsity"]), []).append(record)
    return grouped


def _axis(records: List[Dict[str, Any]], knob: str) -> Tuple[List[int], np.ndarray]:
    """Values of ``knob`` ('batches' at the fixed batch size, or 'batch_size' at the fixed batch count) and
    the top-1 of each seed, (seeds, values) with nan where a seed has not run that cell yet."""
    grid = records[0]["grid"]
    fixed_name, fixed = ("batch_size", grid["at_batch_size"]) if knob == "batches" else ("batches", grid["at_batches"])
    values = grid["batches"] if knob == "batches" else grid["batch_sizes"]
    top1 = np.full((len(records), len(values)), np.nan)
    for i, record in enumerate(records):
        cells = {c[knob]: c["top1"] for c in record["cells"] if c[fixed_name] == fixed and "subset" not in c}
        top1[i] = [cells.get(v, np.nan) for v in values]
    return values, top1


def _mean_std(top1: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    counts = np.sum(~np.isnan(top1), axis=0)
    filled = np.where(np.isnan(top1), 0.0, top1)
    mean = np.where(counts > 0, filled.sum(0) / np.maximum(counts, 1), np.nan)
    spread = np.where(counts > 1, np.sqrt(np.nansum((top1 - mean) ** 2, axis=0) / np.maximum(counts - 1, 1)), 0.0)
    return mean, spread


def ablation_figure(grouped: Series, path: Path) -> Path:
    """Two panels: top-1 after REFLOW vs calibration batches, and vs batch size; one line per (model, method,
    sparsity), bands = ±1 std over seeds, dotted = the dense model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for index, ((model, method, sparsity), records) in enumerate(sorted(grouped.items())):
        color = cmap(index % 10)
        grid = records[0]["grid"]
        label = f"{model}, {method} at {sparsity:g} ({len(records)} seed{'s' if len(records) > 1 else ''})"
        for ax, knob in zip(axes, ("batches", "batch_size")):
            values, top1 = _axis(records, knob)
            mean, spread = _mean_std(top1)
            ax.plot(values, mean, marker="o", color=color, label=label)
            ax.fill_between(values, mean - spread, mean + spread, color=color, alpha=0.2)
            ax.axhline(records[0]["dense"]["top1"], color=color, linestyle=":", linewidth=1)
        axes[0].set_title(f"calibration batches (batch size {grid['at_batch_size']})", fontsize=10)
        axes[1].set_title(f"calibration batch size ({grid['at_batches']} batches)", fontsize=10)
    ticks = [sorted({v for records in grouped.values() for v in records[0]["grid"][k]}) for k in ("batches", "batch_sizes")]
    for ax, name, values in zip(axes, ("calibration batches", "images per batch"), ticks):
        ax.set_xscale("log")
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(name)
        ax.set_ylabel("test top-1 after REFLOW (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def ablation_tables(grouped: Series) -> List[str]:
    """Markdown: per (model, method, sparsity), one row per cell with top-1 mean ± std over seeds and REFLOW seconds."""
    lines: List[str] = []
    for (model, method, sparsity), records in sorted(grouped.items()):
        pruned = [r["pruned"]["top1"] for r in records if "pruned" in r]
        lines += [
            f"### {model}, {method} at sparsity {sparsity:g}",
            "",
            f"Dense top-1 {records[0]['dense']['top1']:.2f}%; after pruning, before REFLOW {np.mean(pruned):.2f}% "
            f"(seeds {sorted(r['seed'] for r in records)}).",
            "",
        ]
        cells: Dict[Tuple[int, int], List[Dict[str, Any]]] = {}
        for record in records:
            for cell in grid_cells(record):
                cells.setdefault((cell["batches"], cell["batch_size"]), []).append(cell)
        if not cells:
            continue
        rows = []
        for (batches, size), found in sorted(cells.items()):
            top1 = np.array([c["top1"] for c in found])
            spread = f" ± {top1.std(ddof=1):.2f}" if len(top1) > 1 else ""
            seconds = np.mean([c["reflow_seconds"] for c in found])
            rows.append([str(batches), str(size), str(batches * size), f"{top1.mean():.2f}{spread}", str(len(top1)), f"{seconds:.1f}"])
        lines += [markdown_table(["batches", "batch size", "images", "top-1 after REFLOW (%)", "seeds", "REFLOW s"], rows), ""]
    return lines


def write_ablation_report(out: Path) -> Dict[str, Path]:
    """Write ``out/reflow-ablation.md`` and ``out/figures/reflow_ablation.png``; returns their paths."""
    out = Path(out)
    grouped = load_ablation(out)
    if not grouped:
        raise ReflowbenchError(f"no REFLOW ablation results under {out}/{FOLDER}: run `reflowbench ablate-reflow --out {out}` first")
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    grid, layered = only_with(grouped, False), only_with(grouped, True)
    figure = ablation_figure(grid, figures / "reflow_ablation.png") if grid else None
    layer_figure = layer_subset_figure(layered, figures / "reflow_layers.png") if layered else None
    first = next(iter(grouped.values()))[0]
    env = first["environment"]
    revisions = sorted({str(r["environment"].get("git_revision") or "n/a")[:12] for records in grouped.values() for r in records})
    md = [
        "# REFLOW ablation",
        "",
        "Test top-1 after REFLOW with each number of calibration batches (at the fixed batch size) and each batch size "
        "(at the fixed number of batches); each REFLOW starts from the statistics right after pruning, on the first "
        "batches × batch size images of the seed's calibration range. Bands and ± : one std over seeds.",
        "",
        f"- environment: reflowbench {env['reflowbench']} (git {', '.join(revisions)}), torch {env['torch']}, device {env['device']}, "
        f"{env['torch_threads']} threads; REFLOW mode {first['settings']['reflow']['reflow_mode']}",
        "",
        *([f"![REFLOW ablation](figures/{figure.name})", ""] if figure else []),
        *ablation_tables(grid),
        *(layer_section(layered, layer_figure) if layer_figure else []),
    ]
    markdown = out / "reflow-ablation.md"
    atomic_write_text(markdown, "\n".join(md))
    return {"markdown": markdown, "figure": figure or layer_figure, **({"layers_figure": layer_figure} if layer_figure else {})}
