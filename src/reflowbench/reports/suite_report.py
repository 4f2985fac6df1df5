"""The combined report of a comparison suite: every model's runs side by side, the best method at each
sparsity with and without REFLOW, MP + REFLOW against the Hessian pruners, the cost per method and phase
with the hardware named, and a link to each folder's own report (tables, signal collapse, ablations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from reflowbench.errors import ReflowbenchError
from reflowbench.reports.aggregate import BASELINE, cost_table, failed_table, fmt, group, markdown_table, mean_std, objective_table, shown, timing_doubt_lines
from reflowbench.reports.compute_front import NEAR_BEST_POINTS, CostPoint, Points, accuracy_vs_cost, compute_front_rows, cost_points, most_seeds
from reflowbench.reports.corrections import CAPTION as CORRECTIONS_CAPTION
from reflowbench.reports.corrections import corrections_figure, corrections_table, has_corrections
from reflowbench.reports.fair_settings import fair_settings_lines
from reflowbench.reports.figures import accuracy_all_configurations, accuracy_vs_sparsity, pick_sparsity, signal_collapse, sweep_records
from reflowbench.reports.labels import configurations_table, set_short_labels
from reflowbench.reports.readme_block import summary_lines
from reflowbench.reports.reference_settings import reference_lines, reference_page
from reflowbench.schema.results import FLOOR_PHASES, load_finished_runs, spent_seconds
from reflowbench.schema.tuned import SuiteContext
from reflowbench.utils.io import atomic_write_text

MAGNITUDE = ("mp", "mp-layer")  # methods that use no curvature
LAYERWISE = ("sparsegpt", "obc", "wanda")  # the layer-wise reconstruction family (forward passes only); every other method is a Fisher pruner


def _best(points: List[CostPoint], top1: Callable[[CostPoint], float]) -> Optional[CostPoint]:
    return max(points, key=top1) if points else None


def _show(point: Optional[CostPoint], top1: Callable[[CostPoint], float], seeds: int) -> str:
    """``label top-1``, with the seed count when it is below the table's usual ``seeds``."""
    if point is None:
        return "–"
    return f"{point.label} {top1(point):.2f}" + (f" ({point.seeds} seed{'s' if point.seeds > 1 else ''})" if point.seeds < seeds else "")


def _pruned(point: CostPoint) -> float:
    return point.top1_pruned


def _reflow(point: CostPoint) -> float:
    return point.top1_reflow


def best_method_rows(by_point: Points) -> Tuple[List[str], List[List[str]]]:
    """From :func:`cost_points` (means over seeds of the main sweeps' configurations; the seed count shown where it is
    below the most any has), per (model, sparsity): the best configuration after pruning and after REFLOW,
    MP + REFLOW, the best Fisher pruner without and with REFLOW and the two differences the comparison is about, then
    the best layer-wise pruner without and with REFLOW and how far it is above the best Fisher pruner + REFLOW."""
    header = [
        "model",
        "sparsity",
        "best pruned (top-1 %)",
        "best + REFLOW (top-1 %)",
        "MP + REFLOW",
        "best Fisher, no REFLOW",
        "MP + REFLOW − best Fisher no REFLOW",
        "best Fisher + REFLOW",
        "best Fisher + REFLOW − MP + REFLOW",
        "best layer-wise, no REFLOW",
        "best layer-wise + REFLOW",
        "best layer-wise + REFLOW − best Fisher + REFLOW",
    ]
    seeds = most_seeds(by_point)
    rows = []
    for (model, sparsity), points in sorted(by_point.items()):
        fisher = [p for p in points if p.method not in MAGNITUDE + LAYERWISE]
        layerwise = [p for p in points if p.method in LAYERWISE]
        mp = _best([p for p in points if p.method == BASELINE], _reflow)
        hp, hr = _best(fisher, _pruned), _best(fisher, _reflow)
        lp, lr = _best(layerwise, _pruned), _best(layerwise, _reflow)
        rows.append(
            [
                model,
                f"{sparsity:g}",
                _show(_best(points, _pruned), _pruned, seeds),
                _show(_best(points, _reflow), _reflow, seeds),
                f"{mp.top1_reflow:.2f}" if mp else "–",
                _show(hp, _pruned, seeds),
                f"{mp.top1_reflow - hp.top1_pruned:+.2f}" if mp and hp else "–",
                _show(hr, _reflow, seeds),
                f"{hr.top1_reflow - mp.top1_reflow:+.2f}" if mp and hr else "–",
                _show(lp, _pruned, seeds),
                _show(lr, _reflow, seeds),
                f"{lr.top1_reflow - hr.top1_reflow:+.2f}" if lr and hr else "–",
            ]
        )
    return header, rows


def extra_cells(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """The configurations run at fewer than 3 sparsities without the quadratic-model diagnostic (the ablation
    cells): model, label, sparsity, seeds, top-1 after pruning → after REFLOW."""
    main = {id(r) for r in sweep_records(records)}
    cells = [r for r in records if id(r) not in main and not r.get("objective")]
    rows = [
        [
            model,
            label,
            f"{sparsity:g}",
            str(len(runs)),
            f"{fmt(*mean_std([r['pruned']['top1'] for r in runs]))} → {fmt(*mean_std([r['reflow']['top1'] for r in runs]))}",
        ]
        for (model, _, sparsity), runs in group(cells).items()
        for label in [shown(runs[0])]
    ]
    return ["model", "configuration", "sparsity", "seeds", "top-1 pruned → + REFLOW (%)"], rows


def suite_timing(records: List[Dict[str, Any]], wall_seconds: float) -> Dict[str, Any]:
    """Where the wall time of one suite invocation went, for the ``records`` it produced: the floor (test-set
    evaluations and REFLOW passes), pruning and diagnostics as really spent, the rest (loading, dense model,
    reports), and wall / floor."""
    phases = sorted({p for r in records for p in r["cost"]})
    spent = {p: sum(spent_seconds(r, p) for r in records) for p in phases}
    floor = sum(spent.get(p, 0.0) for p in FLOOR_PHASES)
    in_runs = sum(v for p, v in spent.items() if p not in ("gradients", "curvature", "selection", "update"))  # prune holds those four
    return {
        "runs": len(records),
        "wall_seconds": wall_seconds,
        "floor_seconds": floor,
        "wall_over_floor": wall_seconds / floor if floor > 0 else None,
        "spent_seconds": spent,
        "outside_runs_seconds": max(wall_seconds - in_runs, 0.0),
    }


def timing_lines(timing: Dict[str, Any]) -> List[str]:
    """Markdown for :func:`suite_timing`'s result."""
    spent = timing["spent_seconds"]
    ratio = timing["wall_over_floor"]
    rows = [[p, f"{spent[p]:.1f}"] for p in ("prune", *FLOOR_PHASES, "diagnostics", "objective") if p in spent]
    rows.append(["outside the runs (data, dense model, reports)", f"{timing['outside_runs_seconds']:.1f}"])
    return [
        "## Time of the last invocation",
        "",
        f"{timing['runs']} runs in {timing['wall_seconds']:.0f} s wall; the floor (every test-set evaluation and REFLOW pass of those runs) "
        f"is {timing['floor_seconds']:.0f} s" + (f": {ratio:.2f}x the floor." if ratio else "."),
        "",
        markdown_table(["phase", "seconds spent (shared gradients counted once)"], rows),
        "",
    ]


def _hardware(records: List[Dict[str, Any]]) -> List[str]:
    seen = sorted(
        {(r["environment"].get("device", "?"), r["environment"].get("torch_threads", "?"), r["environment"].get("platform", "?")) for r in records}, key=str
    )
    return [f"- hardware: device {device}, {threads} torch threads, {platform}" for device, threads, platform in seen]


def _optional_table(title: str, caption: str, table: Tuple[List[str], List[List[str]]]) -> List[str]:
    header, rows = table
    return [f"## {title}", "", caption, "", markdown_table(header, rows), ""] if rows else []


def _unique_runs(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One record per run key (the same run found in two folders counts once, never as two seeds)."""
    seen: Dict[str, Dict[str, Any]] = {}
    for record in records:
        seen.setdefault(record.get("key") or id(record), record)
    return list(seen.values())


def _load_suite_runs(
    out: Path, folders: List[str], context: SuiteContext, name: str
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Dict[str, Any]], List[str]]:
    """(the main runs, each once; the quadratic-model runs; the failed runs; the folders that had runs), labelled."""
    records: List[Dict[str, Any]] = []
    found = []
    failed: List[Dict[str, Any]] = []
    for folder in folders:
        runs, folder_failed = load_finished_runs(out / folder, context.skip_unreadable)
        failed += folder_failed
        if runs:
            records += runs
            found.append(folder)
    if not records:
        raise ReflowbenchError(f"no complete runs in any of {[str(out / f) for f in folders]}: run `reflowbench suite {name} --out {out}` first")
    set_short_labels(records + failed, roles=context.roles)
    diagnostic = [r for r in records if r.get("objective")]
    records = _unique_runs([r for r in records if not r.get("objective")])  # the objective folder repeats main-sweep runs (same keys)
    return records, diagnostic, failed, found


def _head_lines(
    name: str, description: str, records: List[Dict[str, Any]], diagnostic: List[Dict[str, Any]], found: List[str], completeness: List[str]
) -> List[str]:
    """The title, the description, what runs are in (and from which code), the hardware, the completeness."""
    revisions = sorted({str(r["environment"].get("git_revision") or "n/a")[:12] for r in records})
    return [
        f"# reflowbench comparison: {name}",
        "",
        description,
        "",
        f"- runs: {len(records)} in {', '.join(found)}"
        + (f", and {len(diagnostic)} quadratic-model runs" if diagnostic else "")
        + f"; code revisions {', '.join(revisions)}",
        *_hardware(records),
        "",
        *(["## Completeness", "", *completeness, ""] if completeness else []),
    ]


def _accuracy_lines(
    records: List[Dict[str, Any]], figures: Dict[str, Path], context: SuiteContext, best: Tuple[List[str], List[List[str]]], out: Path
) -> List[str]:
    """The accuracy figures, the reference settings, the configurations, the best method per sparsity, fair settings."""
    return [
        "## Accuracy vs sparsity",
        "",
        "Per model, left: right after pruning (dashed); right: after REFLOW (solid). One curve per method: its configuration with the best mean "
        "top-1 after REFLOW (named in the legend: reference, tuned, or the setting that differs); the thick grey line is MP + REFLOW; bands: "
        "±1 std over seeds. Every configuration run at 3 or more sparsities is in the second figure and the tables.",
        "",
        f"![accuracy](figures/{figures['accuracy'].name})",
        "",
        f"![every configuration](figures/{figures['every'].name})",
        "",
        *reference_lines(context.references or [], "reference-settings.md"),
        *_optional_table(
            "Configurations",
            "What each short label stands for: the settings that set it apart from the method's other configurations.",
            configurations_table(records),
        ),
        "## Best method at each sparsity",
        "",
        "Top-1 means over seeds. 'Fisher' is every pruner that uses the Fisher (all but magnitude and the layer-wise family: SparseGPT, "
        "OBC, Wanda). Positive in the first difference: MP + REFLOW beats every Fisher pruner without REFLOW; positive in the second: REFLOW "
        "on a Fisher pruner beats MP + REFLOW; positive in the third: the best layer-wise pruner + REFLOW beats the best Fisher pruner + REFLOW.",
        "",
        markdown_table(*best),
        "",
        *(["## Fair settings: published defaults and tuned", "", *fair_settings_lines(records, context.tuned, out)] if context.tuned else []),
    ]


def _compute_lines(records: List[Dict[str, Any]], figures: Dict[str, Path], points: Any, cost_sparsity: float, sparsity: float) -> List[str]:
    """Accuracy for the compute (figure and front), the signal collapse, the cost per method and phase."""
    cost_header, cost_rows = cost_table(sweep_records(records))
    return [
        "## Accuracy for the compute",
        "",
        f"Per model and sparsity, each configuration's mean pruning wall seconds per run (its gradients and curvature included, as pruning "
        f"that model from scratch costs; on the hardware above, so runs on shared cores are upper bounds) against its mean top-1 after "
        f"REFLOW: the best, the cheapest within {NEAR_BEST_POINTS:g} points of it, and the Pareto front. The figure shows sparsity "
        f"{cost_sparsity:g} (hollow: right after pruning; filled: after REFLOW).",
        "",
        f"![accuracy for the compute](figures/{figures['cost'].name})",
        "",
        markdown_table(*compute_front_rows(points)),
        "",
        f"## Signal collapse at sparsity {sparsity:g}",
        "",
        "Var(BN output of the pruned model) / Var(dense) by depth; dashed after pruning, solid after REFLOW.",
        "",
        f"![signal collapse](figures/{figures['collapse'].name})",
        "",
        "## Cost per method and phase",
        "",
        "Mean wall seconds per run (a seed's dense gradients and curvature are computed once and charged to each of its sparsities).",
        "",
        markdown_table(cost_header, cost_rows),
        "",
        *timing_doubt_lines(records),
    ]


def _tail_lines(
    records: List[Dict[str, Any]], failed: List[Dict[str, Any]], diagnostic: List[Dict[str, Any]], timing_path: Path, found: List[str]
) -> List[str]:
    """Ablation cells, failed runs, the quadratic model, the end-to-end timing, links to the per-model reports."""
    return [
        *_optional_table(
            "Ablation cells",
            "Configurations run at one or two sparsities (the selection × update grid); labels name the setting that differs.",
            extra_cells(records),
        ),
        *_optional_table(
            "Failed runs",
            "Runs whose pruner diverged (a later step could not form its curvature): recorded with the error, left out of the tables and figures above.",
            failed_table(_unique_runs(failed)),
        ),
        *_optional_table(
            "Quadratic model",
            "Q(w) = ½ (w − w̄)ᵀ F (w − w̄) of each pruner's output under one reference whole-network Fisher per seed, the best Q on its support, "
            "the overlap of its support with magnitude's, and its accuracy: does the objective a pruner reaches predict its accuracy?",
            objective_table(diagnostic),
        ),
        *(timing_lines(json.loads(timing_path.read_text())) if timing_path.exists() else []),
        "## Per-model reports",
        "",
        *[f"- [{folder}](../{folder}/report.md)" for folder in found],
        "",
    ]


def _corrections_lines(records: List[Dict[str, Any]], figure_folder: Path) -> List[str]:
    """The corrections section: the figure (top-1 vs sparsity per model and method, a line per correction) and the table."""
    figure = corrections_figure(records, figure_folder / "corrections.png")
    return ["## Corrections", "", CORRECTIONS_CAPTION, "", f"![corrections](figures/{figure.name})", "", markdown_table(*corrections_table(records)), ""]


def _write_corrections_only(
    target: Path,
    name: str,
    context: SuiteContext,
    records: List[Dict[str, Any]],
    diagnostic: List[Dict[str, Any]],
    failed: List[Dict[str, Any]],
    found: List[str],
    corrections: List[str],
) -> Dict[str, Path]:
    """The report of a suite none of whose runs had REFLOW (networks without BatchNorm): its head, the corrections, the tail."""
    md = [
        *_head_lines(name, context.description, records, diagnostic, found, context.completeness),
        *corrections,
        *_tail_lines(records, failed, diagnostic, target / "timing.json", found),
    ]
    markdown = target / "report.md"
    atomic_write_text(markdown, "\n".join(md))
    return {"markdown": markdown}


def write_suite_report(out: Path, name: str, folders: List[str], context: Optional[SuiteContext] = None) -> Dict[str, Path]:
    """Write ``out/<name>-suite/report.md``, its figures, ``reference-settings.md`` and ``summary.md`` (the block a
    README shows, :mod:`.readme_block`) from the runs in ``out/<folder>`` for each folder. ``context``: the harness's
    account of the suite (which runs are in, the settings searches, the reference settings with their sources, and the
    role of each run: reference or tuned)."""
    context = context or SuiteContext()
    out = Path(out)
    every, diagnostic, failed, found = _load_suite_runs(out, folders, context, name)
    target = out / f"{name}-suite"
    figure_folder = target / "figures"
    figure_folder.mkdir(parents=True, exist_ok=True)
    corrections = _corrections_lines(every, figure_folder) if has_corrections(every) else []
    records = [r for r in every if "reflow" in r]  # the REFLOW sections read these; the corrections section every run
    if not records:
        return _write_corrections_only(target, name, context, every, diagnostic, failed, found, corrections)
    figures = {
        "accuracy": accuracy_vs_sparsity(records, figure_folder / "accuracy_vs_sparsity.png"),
        "every": accuracy_all_configurations(records, figure_folder / "accuracy_all_configurations.png"),
    }
    sparsity = pick_sparsity(sweep_records(records), 0.9)
    figures["collapse"] = signal_collapse(records, sparsity, figure_folder / "signal_collapse.png")
    points = cost_points(records)
    best_header, best_rows = best_method_rows(points)
    cost_sparsity = pick_sparsity(sweep_records(records), 0.8)
    figures["cost"] = accuracy_vs_cost(points, cost_sparsity, figure_folder / "accuracy_vs_cost.png")
    md = [
        *_head_lines(name, context.description, every, diagnostic, found, context.completeness),
        *corrections,
        *_accuracy_lines(records, figures, context, (best_header, best_rows), out),
        *_compute_lines(records, figures, points, cost_sparsity, sparsity),
        *_tail_lines(records, failed, diagnostic, target / "timing.json", found),
    ]
    markdown = target / "report.md"
    atomic_write_text(markdown, "\n".join(md))
    references = target / "reference-settings.md"
    atomic_write_text(references, "\n".join(reference_page(name, context.references or [])))
    summary = target / "summary.md"
    atomic_write_text(summary, "\n".join(summary_lines(name, best_header, best_rows, context.references or [])))
    return {"markdown": markdown, "accuracy": figures["accuracy"], "collapse": figures["collapse"], "summary": summary, "references": references}
