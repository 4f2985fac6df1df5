"""Markdown report and a self-contained HTML page (figures embedded) from a results folder."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from reflowbench.errors import ReflowbenchError
from reflowbench.reports.aggregate import accuracy_table, cost_table, failed_table, html_table, markdown_table, objective_table, timing_doubt_lines
from reflowbench.reports.compute_front import NEAR_BEST_POINTS, accuracy_vs_cost, compute_front_rows, cost_points
from reflowbench.reports.corrections import CAPTION as CORRECTIONS_CAPTION
from reflowbench.reports.corrections import corrections_figure, corrections_table, has_corrections
from reflowbench.reports.figures import accuracy_all_configurations, accuracy_vs_sparsity, cost_vs_sparsity, pick_sparsity, signal_collapse, sweep_records
from reflowbench.reports.labels import configurations_table, set_short_labels
from reflowbench.reports.layerwise_notes import layerwise_note_lines
from reflowbench.reports.structure import CAPTION as STRUCTURE_CAPTION
from reflowbench.reports.structure import has_structure, structure_figure, structure_table
from reflowbench.schema.results import applied_corrections, load_finished_runs
from reflowbench.utils.io import atomic_write_text


def _context_lines(records: List[Dict[str, Any]]) -> List[str]:
    first = records[0]
    env = first["environment"]
    targets = sorted({(r["model"], r["targets"]["description"], r["targets"]["num_weights"], r["targets"]["num_layers"]) for r in records})
    lines = [
        f"- runs: {len(records)} ({len({r['method'] for r in records})} methods, sparsities {sorted({r['sparsity'] for r in records})}, seeds {sorted({r['seed'] for r in records})})"
    ]
    for model, description, weights, layers in targets:
        lines.append(f"- targets ({model}): {description}: {layers} tensors, {weights:,} weights; sparsity is counted over these")
    dense = sorted({(r["model"], r["dense"]["top1"]) for r in records})
    lines += [f"- dense top-1 ({model}): {top1:.2f}%" for model, top1 in dense]
    reflowed = next((r for r in records if "reflow" in r), None)
    if reflowed is not None:
        calib = reflowed["reflow"]
        lines.append(f"- REFLOW: {calib['batches']} batches, {calib['images']} training images, mode {reflowed['settings']['reflow']['reflow_mode']}")
    chosen = sorted({", ".join(applied_corrections(r)) or "none" for r in records})
    if chosen != ["reflow"]:
        lines.append(f"- corrections (each from the same pruned weights): {'; '.join(chosen)}")
    lines.append(
        f"- environment: reflowbench {env['reflowbench']} (git {env.get('git_revision') or 'n/a'}), torch {env['torch']}, device {env['device']}, {env['torch_threads']} threads, {env['platform']}"
    )
    return lines


FAILED_CAPTION = (
    "Runs whose pruner diverged (a later step could not form its curvature): recorded with the error and left out "
    "of every table and figure above; `reflowbench run ... --retry-failed` runs them again."
)
HTML_STYLE = "body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"

Section = Tuple[str, str, str]  # (title, caption, figure key)
Table = Tuple[List[str], List[List[str]]]  # (header, rows)


def _figures(records: List[Dict[str, Any]], figures: Path, signal_sparsity: Optional[float]) -> Tuple[Dict[str, Path], List[Section], Any]:
    """Draw every figure into ``figures``; (figure key -> path, the figure sections in order, the compute points)."""
    sparsity = pick_sparsity(records, signal_sparsity)
    cost_sparsity = pick_sparsity(sweep_records(records), 0.8)
    points = cost_points(records)
    images = {
        "accuracy": accuracy_vs_sparsity(records, figures / "accuracy_vs_sparsity.png"),
        "all": accuracy_all_configurations(records, figures / "accuracy_all_configurations.png"),
        "collapse": signal_collapse(records, sparsity, figures / "signal_collapse.png"),
        "cost": cost_vs_sparsity(records, figures / "cost_vs_sparsity.png"),
        "compute": accuracy_vs_cost(points, cost_sparsity, figures / "accuracy_vs_cost.png"),
    }
    sections = [
        (
            "Accuracy vs sparsity",
            "Left: right after pruning (dashed); right: after REFLOW (BN statistics re-estimated on training images; solid). One curve per "
            "method: its configuration with the best mean top-1 after REFLOW; the thick grey line is MP + REFLOW; bands: ±1 std over seeds.",
            "accuracy",
        ),
        (
            "Every configuration",
            "Every configuration run at 3 or more sparsities (colour: method; marker: configuration, named in the Configurations table).",
            "all",
        ),
        (
            f"Signal collapse at sparsity {sparsity:g}",
            "Variance of each BN layer's output relative to the dense model, on the same held-out training images, by depth. Dashed: after pruning; solid: after REFLOW.",
            "collapse",
        ),
        ("Compute cost", "Wall seconds of the pruning step per method (mean over seeds); the dotted line is the mean REFLOW time.", "cost"),
        (
            "Accuracy for the compute",
            f"Top-1 against mean pruning wall seconds per run at sparsity {cost_sparsity:g} (hollow: right after pruning; filled: after REFLOW; "
            f"dashed: the Pareto front after REFLOW). The table 'Accuracy for the compute, per sparsity' gives the best top-1 after REFLOW, the cheapest "
            f"configuration within {NEAR_BEST_POINTS:g} points of it and the whole front.",
            "compute",
        ),
    ]
    return images, sections, points


def _objective_lines(records: List[Dict[str, Any]]) -> List[str]:
    """The quadratic-model section, when runs measured it."""
    objective_header, objective_rows = objective_table(records)
    if not objective_rows:
        return []
    reference = next(r["objective"]["reference"] for r in records if r.get("objective"))
    return [
        "## Quadratic model",
        "",
        f"Q(w) = ½ (w − w̄)ᵀ F (w − w̄), the local model every Hessian pruner claims to minimise, measured after pruning "
        f"(before REFLOW) under one reference {reference} per seed; the best Q on the support is the exact ridge "
        "solve there; the overlap is the share of kept weights that global magnitude pruning also keeps.",
        "",
        markdown_table(objective_header, objective_rows),
        "",
    ]


def _markdown(
    context: List[str], sections: List[Section], images: Dict[str, Path], tables: Dict[str, Table], records: List[Dict[str, Any]], failed: Table
) -> str:
    """report.md: the context, each figure with its caption, then the tables."""
    md = ["# reflowbench report", "", *context, ""]
    for title, caption, key in sections:
        md += [f"## {title}", "", caption, "", f"![{title}](figures/{images[key].name})", ""]
    md += [
        "## Configurations",
        "",
        "The short label of each configuration in the figures and tables, and the settings that set it apart.",
        "",
        markdown_table(*tables["configurations"]),
        "",
    ]
    if "corrections" in tables:
        md += ["## Corrections table", "", CORRECTIONS_CAPTION, "", markdown_table(*tables["corrections"]), ""]
    if "structure" in tables:
        md += ["## Channel pruning: size, FLOPs and measured speed", "", STRUCTURE_CAPTION, "", markdown_table(*tables["structure"]), ""]
    if "accuracy" in tables:
        md += [
            "## Accuracy table",
            "",
            markdown_table(*tables["accuracy"]),
            "",
            "## Cost per phase",
            "",
            "Mean wall seconds per phase over all runs of a method; peak RSS is the largest resident set size of the process during pruning (it includes the data held in memory).",
            "",
            markdown_table(*tables["cost"]),
            "",
            *timing_doubt_lines(records),
            "## Accuracy for the compute, per sparsity",
            "",
            markdown_table(*tables["front"]),
            "",
            *_objective_lines(records),
        ]
    md += layerwise_note_lines(records)
    if failed[1]:
        md += ["## Failed runs", "", FAILED_CAPTION, "", markdown_table(*failed), ""]
    return "\n".join(md)


def _html(context: List[str], sections: List[Section], images: Dict[str, Path], tables: Dict[str, Table], failed: Table) -> str:
    """report.html: the same figures (embedded) and the main tables, one self-contained page."""

    def embedded(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    body = ["<h1>reflowbench report</h1>", "<ul>" + "".join(f"<li>{escape(line[2:])}</li>" for line in context) + "</ul>"]
    for title, caption, key in sections:
        body += [f"<h2>{escape(title)}</h2>", f"<p>{escape(caption)}</p>", f'<img alt="{escape(title)}" src="{embedded(images[key])}">']
    body += ["<h2>Configurations</h2>", html_table(*tables["configurations"])]
    if "corrections" in tables:
        body += ["<h2>Corrections table</h2>", f"<p>{escape(CORRECTIONS_CAPTION)}</p>", html_table(*tables["corrections"])]
    if "structure" in tables:
        body += ["<h2>Channel pruning: size, FLOPs and measured speed</h2>", f"<p>{escape(STRUCTURE_CAPTION)}</p>", html_table(*tables["structure"])]
    if "accuracy" in tables:
        body += ["<h2>Accuracy table</h2>", html_table(*tables["accuracy"]), "<h2>Cost per phase</h2>", html_table(*tables["cost"])]
        body += ["<h2>Accuracy for the compute, per sparsity</h2>", html_table(*tables["front"])]
    if failed[1]:
        body += ["<h2>Failed runs</h2>", f"<p>{escape(FAILED_CAPTION)}</p>", html_table(*failed)]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>reflowbench report</title><style>{HTML_STYLE}</style></head><body>{''.join(body)}</body></html>"


def write_report(
    out: Path, signal_sparsity: Optional[float] = None, reference_options: Optional[Dict[str, Dict[str, Any]]] = None, skip_unreadable: bool = False
) -> Dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out``; returns their paths. ``reference_options``:
    method -> the options of its reference settings (the pruner's defaults), which names that configuration "reference"."""
    out = Path(out)
    records, failed = load_finished_runs(out, skip_unreadable)
    set_short_labels(records + failed, reference_options=reference_options)
    if not records:
        because = f" ({len(failed)} failed: {failed[0]['error']}{' ...' if len(failed) > 1 else ''})" if failed else ""
        raise ReflowbenchError(f"no complete runs under {out}/runs{because}: run `reflowbench run --out {out}` first")
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    reflowed = [r for r in records if "reflow" in r]  # the REFLOW figures and tables read these; every run is in the corrections section
    images: Dict[str, Path] = {}
    sections: List[Section] = []
    tables: Dict[str, Table] = {"configurations": configurations_table(records)}
    if reflowed:
        images, sections, points = _figures(reflowed, figures, signal_sparsity)
        tables.update(accuracy=accuracy_table(reflowed), cost=cost_table(reflowed), front=compute_front_rows(points))
    if has_corrections(records):
        images["corrections"] = corrections_figure(records, figures / "corrections.png")
        sections.insert(0, ("Corrections", CORRECTIONS_CAPTION, "corrections"))
        tables["corrections"] = corrections_table(records)
    if has_structure(records):
        images["structure"] = structure_figure(records, figures / "accuracy_vs_speedup.png")
        sections.insert(0, ("Accuracy against measured speed-up", STRUCTURE_CAPTION, "structure"))
        tables["structure"] = structure_table(records)
    context = _context_lines(records)
    failed_rows = failed_table(failed)
    markdown_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(markdown_path, _markdown(context, sections, images, tables, records, failed_rows))
    atomic_write_text(html_path, _html(context, sections, images, tables, failed_rows))
    return {"markdown": markdown_path, "html": html_path, **{f"figure_{k}": v for k, v in images.items()}}
