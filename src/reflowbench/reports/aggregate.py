"""Group run records into tables: mean ± std over seeds, per (model, method, sparsity)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from reflowbench.schema.results import DOUBT_MIN_CPU_SHARE, cpu_share, timing_doubts

COST_PHASES = (
    "gradients",
    "curvature",
    "inputs",
    "selection",
    "update",
    "solve",
    "prune",
    "surgery",
    "recalibrate",
    "eval_pruned",
)  # inputs, solve: the layer-wise pruners; surgery: removing the channels of --pattern channels


OPTIONAL_PHASES = ("surgery",)  # a column only where some run has it
BASELINE = "mp"  # the method every comparison table measures the others against (MP + REFLOW)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return float("nan"), float("nan")
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0


def fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std >= 0.5 * 10**-digits else f"{mean:.{digits}f}"


def shown(record: Dict[str, Any]) -> str:
    """How a configuration is named in tables: its short label where the report set one, else its full label."""
    return record.get("short") or record["label"]


def group(records: List[Dict[str, Any]]) -> Dict[Tuple[str, str, float], List[Dict[str, Any]]]:
    """(model, method, sparsity) -> records (one per seed)."""
    grouped: Dict[Tuple[str, str, float], List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["model"], record["label"], record["sparsity"])].append(record)
    return dict(sorted(grouped.items()))


def accuracy_table(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows: model, method, sparsity, seeds, top-1 after pruning, top-1 after REFLOW, gain, last-BN ratios."""
    header = ["model", "method", "sparsity", "seeds", "top-1 pruned (%)", "top-1 + REFLOW (%)", "REFLOW gain", "last-BN var ratio pruned → REFLOW"]
    rows = []
    for (model, _method, sparsity), runs in group(records).items():
        pruned = mean_std([r["pruned"]["top1"] for r in runs])
        reflow = mean_std([r["reflow"]["top1"] for r in runs])
        ratio_before = mean_std([r["variance"]["pruned"]["last"] for r in runs])
        ratio_after = mean_std([r["variance"]["reflow"]["last"] for r in runs])
        rows.append(
            [
                model,
                shown(runs[0]),
                f"{sparsity:g}",
                str(len(runs)),
                fmt(*pruned),
                fmt(*reflow),
                f"{reflow[0] - pruned[0]:+.2f}",
                f"{ratio_before[0]:.3g} → {ratio_after[0]:.3g}",
            ]
        )
    return header, rows


def cost_table(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """Mean seconds per phase, peak RSS and CUDA memory of pruning, and pruning's CPU seconds per wall second (mean over
    the runs that measured it: about the torch thread count when the cores were the run's own), per (model, method),
    over all sparsities and seeds. A phase that no run has (e.g. surgery outside --pattern channels) gets no column."""
    phases = [p for p in COST_PHASES if p not in OPTIONAL_PHASES or any(p in r["cost"] for r in records)]
    header = ["model", "method", "runs"] + [f"{p} (s)" for p in phases] + ["peak RSS prune (MB)", "peak CUDA prune (MB)", "prune CPU s / wall s"]
    by_method: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_method[(record["model"], record["label"])].append(record)
    rows = []
    for (model, _method), runs in sorted(by_method.items()):
        cells = [model, shown(runs[0]), str(len(runs))]
        for phase in phases:
            values = [r["cost"][phase]["seconds"] for r in runs if phase in r["cost"]]
            cells.append(f"{np.mean(values):.2f}" if values else "–")
        cells.append(f"{max(r['cost']['prune']['peak_rss_mb'] for r in runs):.0f}")
        cuda = max(r["cost"]["prune"].get("peak_cuda_mb", 0.0) for r in runs)
        cells.append(f"{cuda:.0f}" if cuda else "–")
        shares = [share for share in (cpu_share(r, "prune") for r in runs) if share is not None]
        cells.append(f"{np.mean(shares):.2f}" if shares else "–")
        rows.append(cells)
    return header, rows


def timing_doubt_lines(records: List[Dict[str, Any]], limit: int = 10) -> List[str]:
    """Markdown lines naming the runs whose wall seconds overstate their cost (:func:`timing_doubts`), at most
    ``limit`` of them listed; empty when there are none."""
    doubtful = [(r, doubts) for r in records for doubts in [timing_doubts(r)] if doubts]
    if not doubtful:
        return []
    lines = [
        f"Timings to distrust: {len(doubtful)} runs spent under {DOUBT_MIN_CPU_SHARE:.0%} of a phase's wall time on a CPU (suspended, or cores shared):",
        "",
    ]
    for record, doubts in sorted(doubtful, key=lambda item: (item[0]["model"], item[0]["label"], item[0]["sparsity"], item[0]["seed"]))[:limit]:
        lines.append(f"- {record['model']} {shown(record)} s={record['sparsity']:g} seed {record['seed']}: {'; '.join(doubts)}")
    if len(doubtful) > limit:
        lines.append(f"- and {len(doubtful) - limit} more")
    return lines + [""]


def failed_table(failed: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """One row per failed run (its pruner diverged): model, method, sparsity, seed, the step it failed at, the
    wall seconds spent pruning until then, and the error. ``failed``: records with status ``failed``."""
    header = ["model", "method", "sparsity", "seed", "failed at step", "prune s", "error"]
    rows = []
    for record in sorted(failed, key=lambda r: (r["model"], r["label"], r["sparsity"], r["seed"])):
        step = record.get("notes", {}).get(f"{record['method']}_failed_step")
        steps = record.get("notes", {}).get(f"{record['method']}_steps") or []
        where = f"{step + 1} of {len(steps)}" if step is not None and steps else "n/a"
        seconds = record.get("cost", {}).get("prune", {}).get("seconds")
        rows.append(
            [
                record["model"],
                shown(record),
                f"{record['sparsity']:g}",
                str(record["seed"]),
                where,
                f"{seconds:.0f}" if seconds is not None else "n/a",
                record["error"].replace("|", "/").replace("\n", " "),
            ]
        )
    return header, rows


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: List[str], rows: List[List[str]]) -> str:
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def objective_table(records: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """The quadratic-model diagnostic (runs with ``objective``), per (model, method, sparsity), means over seeds:
    Q of the pruned weights, the best Q on their support, the support's overlap with magnitude's, top-1 before and after REFLOW."""
    header = [
        "model",
        "method",
        "sparsity",
        "seeds",
        "Q pruned",
        "best Q on its support",
        "overlap with magnitude (%)",
        "top-1 pruned (%)",
        "top-1 + REFLOW (%)",
    ]
    rows = []
    for (model, _method, sparsity), runs in group([r for r in records if r.get("objective")]).items():
        objective = [r["objective"] for r in runs]
        rows.append(
            [
                model,
                shown(runs[0]),
                f"{sparsity:g}",
                str(len(runs)),
                f"{mean_std([o['q'] for o in objective])[0]:.5g}",
                f"{mean_std([o['q_support_best'] for o in objective])[0]:.5g}",
                f"{100 * mean_std([o['magnitude_overlap'] for o in objective])[0]:.2f}",
                fmt(*mean_std([r["pruned"]["top1"] for r in runs])),
                fmt(*mean_std([r["reflow"]["top1"] for r in runs])),
            ]
        )
    return header, rows
