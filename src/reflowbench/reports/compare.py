"""Regression checks: a results folder against baseline results (e.g. the committed reports).

Per (model, sparsity) and for top-1 right after pruning and after REFLOW, the candidate method's mean over
its seeds is compared with the baseline method's mean. A cell is a **regression** when the candidate is
lower by more than ``tolerance`` points plus the larger of the two seeds' standard deviations (the spread
the seeds already show is not counted against a method). Two uses:

- a maintainer's new pruner against an established one: ``--method my-method --against mp``;
- the same method before and after a code change (golden results): ``--method mp`` (``--against`` defaults to it).

A candidate run recorded as failed (its pruner diverged) where the baseline has runs is a regression too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from reflowbench.reports.aggregate import mean_std
from reflowbench.schema.results import annotate_variants

METRICS = (("pruned", "top-1 pruned"), ("reflow", "top-1 + REFLOW"))


@dataclass
class Cell:
    model: str
    sparsity: float
    metric: str  # a METRICS label
    candidate: Tuple[float, float, int]  # mean, std, seeds
    baseline: Tuple[float, float, int]
    tolerance: float

    @property
    def difference(self) -> float:
        return self.candidate[0] - self.baseline[0]

    @property
    def allowed_drop(self) -> float:
        return self.tolerance + max(self.candidate[1], self.baseline[1])

    @property
    def verdict(self) -> str:
        if self.difference < -self.allowed_drop:
            return "REGRESSION"
        if self.difference > self.allowed_drop:
            return "better"
        return "same"


def _by_cell(records: List[Dict[str, Any]], label: str) -> Dict[Tuple[str, float], List[Dict[str, Any]]]:
    cells: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
    for record in annotate_variants(records):
        if record["label"] == label or (record["method"] == label and not record.get("variant")):
            cells.setdefault((record["model"], record["sparsity"]), []).append(record)
    return cells


def compare_results(
    candidate: List[Dict[str, Any]], baseline: List[Dict[str, Any]], method: str, against: Optional[str] = None, tolerance: float = 1.0
) -> List[Cell]:
    """The cells (model, sparsity, metric) both sides have; ``method``/``against`` are run labels or method names."""
    ours, theirs = _by_cell(candidate, method), _by_cell(baseline, against or method)
    cells = []
    for key in sorted(set(ours) & set(theirs)):
        for field, label in METRICS:
            a = [r[field]["top1"] for r in ours[key]]
            b = [r[field]["top1"] for r in theirs[key]]
            cells.append(Cell(key[0], key[1], label, (*mean_std(a), len(a)), (*mean_std(b), len(b)), tolerance))
    return cells


def failed_points(failed: List[Dict[str, Any]], baseline: List[Dict[str, Any]], method: str, against: Optional[str] = None) -> List[Dict[str, Any]]:
    """The candidate's failed runs (records with status ``failed``, as ``load_runs(out, "failed")`` gives them) of
    ``method`` at a (model, sparsity) the baseline has finished runs of: each a regression (no model came out)."""
    theirs = _by_cell(baseline, against or method)
    return [r for r in failed if (r.get("label") == method or (r["method"] == method and not r.get("variant"))) and (r["model"], r["sparsity"]) in theirs]


def nothing_to_compare(sides: List[Tuple[str, str, List[Dict[str, Any]]]]) -> str:
    """Why two folders share no cell, for an error message. ``sides``: (which side and folder, the method or label
    asked for, that side's records). Names the labels a method has where it has several configurations (so the
    user can pick one), the labels there are where it has none, else the (model, sparsity) points of each side."""
    problems = []
    for where, name, records in sides:
        if _by_cell(records, name):
            continue
        labels = sorted({r["label"] for r in annotate_variants(records)})
        of_method = [label for label in labels if label.split(" [")[0] == name]
        if of_method:
            problems.append(
                f"{name} has several configurations in the {where}, so name one by its report label (quoted): {', '.join(repr(x) for x in of_method)}"
            )
        else:
            problems.append(f"the {where} has no runs of {name}; its report labels are {', '.join(repr(x) for x in labels)}")
    if problems:
        return "nothing to compare: " + "; ".join(problems)
    points = [sorted({(model, sparsity) for model, sparsity in _by_cell(records, name)}) for _, name, records in sides]
    return f"nothing to compare: no (model, sparsity) in common: the {sides[0][0]} has {points[0]}, the {sides[1][0]} {points[1]}"


def comparison_table(cells: List[Cell], method: str, against: str) -> Tuple[List[str], List[List[str]]]:
    header = ["model", "sparsity", "metric", f"{method} (%)", f"{against} (%)", "difference", "allowed drop", "verdict"]
    rows = [
        [
            c.model,
            f"{c.sparsity:g}",
            c.metric,
            f"{c.candidate[0]:.2f} ± {c.candidate[1]:.2f} (n={c.candidate[2]})",
            f"{c.baseline[0]:.2f} ± {c.baseline[1]:.2f} (n={c.baseline[2]})",
            f"{c.difference:+.2f}",
            f"{c.allowed_drop:.2f}",
            c.verdict,
        ]
        for c in cells
    ]
    return header, rows


__all__ = ["Cell", "compare_results", "comparison_table", "failed_points", "nothing_to_compare"]
