"""Regression checks: a results folder against baseline results (e.g. the committed reports).

Per (model, sparsity) of the baseline and for top-1 right after pruning and after REFLOW, the candidate method is
judged against the baseline method. The verdict rests on the baseline's evidence, never on the candidate's noise:

- the allowed drop is ``tolerance`` points plus the **baseline's** seed standard deviation (the candidate's own spread
  never widens it);
- where the candidate has every seed the baseline has, the seeds are **paired** (the same seed means the same Fisher,
  calibration and held-out images on both sides) and the difference is the mean of the per-seed differences;
  otherwise the difference of the means;
- a cell whose candidate seeds disagree by more than the baseline's spread plus the tolerance is **UNSTABLE** (a
  pruner that is magnitude on two seeds and random on the third fails, whatever its mean);
- a cell (or a seed of it) the baseline has and the candidate lacks is **MISSING** (``allow_missing`` reports it
  without failing, and says so);
- a non-finite value is **NOT FINITE**;
- a candidate run recorded as failed (its pruner diverged) where the baseline has runs is a regression too.

Any of these fails the gate. Two uses: a maintainer's new pruner against an established one (``--method my-method
--against mp``); the same method before and after a code change (golden results: ``--method mp``).

The two sides must have been run with the same settings (everything in a run's configuration but the method and its
options: checkpoint and data content, targets, REFLOW, device): :func:`settings_mismatch` names what differs, and the
command refuses to judge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from reflowbench.config import GateSpec
from reflowbench.errors import ReflowbenchError
from reflowbench.reports.aggregate import markdown_table, mean_std
from reflowbench.schema.results import annotate_variants, config_fields, load_finished_runs, omitted_value

METRICS = (("pruned", "top-1 pruned"), ("reflow", "top-1 + REFLOW"))
FAILING = ("REGRESSION", "UNSTABLE", "MISSING", "NOT FINITE")
NAN = float("nan")


@dataclass
class Cell:
    model: str
    sparsity: float
    metric: str  # a METRICS label
    candidate: Tuple[float, float, int]  # mean, std, seeds
    baseline: Tuple[float, float, int]
    tolerance: float
    paired: Optional[Tuple[float, ...]] = None  # per-seed differences (candidate - baseline) on the baseline's seeds, where the candidate has them all
    missing_seeds: Tuple[int, ...] = ()  # baseline seeds the candidate lacks (all of them: the cell is missing)
    finite: bool = True  # every candidate value is finite
    allow_missing: bool = False

    @property
    def difference(self) -> float:
        if self.paired is not None:
            return sum(self.paired) / len(self.paired)
        return self.candidate[0] - self.baseline[0]

    @property
    def allowed_drop(self) -> float:
        """The tolerance plus the baseline's seed spread: the candidate's own spread never widens it."""
        return self.tolerance + self.baseline[1]

    @property
    def unstable(self) -> bool:
        """The candidate's seeds disagree by more than the baseline's do plus the tolerance."""
        return self.candidate[2] >= 2 and self.candidate[1] > self.baseline[1] + self.tolerance

    @property
    def verdict(self) -> str:
        if self.candidate[2] == 0:
            return "missing (allowed)" if self.allow_missing else "MISSING"
        if self.missing_seeds and not self.allow_missing:
            return "MISSING"
        return self._judged()  # with --allow-missing, a cell short of seeds is judged on the seeds it has

    def _judged(self) -> str:
        if not self.finite or not math.isfinite(self.difference):
            return "NOT FINITE"
        if self.unstable:
            return "UNSTABLE"
        if self.difference < -self.allowed_drop:
            return "REGRESSION"
        if self.difference > self.allowed_drop:
            return "better"
        return "same"

    @property
    def fails(self) -> bool:
        return self.verdict in FAILING


def _selected(records: List[Dict[str, Any]], label: str) -> List[Dict[str, Any]]:
    """The records of ``label``: a report label, or a method name where the method has one configuration."""
    return [r for r in annotate_variants(records) if r["label"] == label or (r["method"] == label and not r.get("variant"))]


def _by_cell(records: List[Dict[str, Any]], label: str) -> Dict[Tuple[str, float], List[Dict[str, Any]]]:
    cells: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
    for record in _selected(records, label):
        cells.setdefault((record["model"], record["sparsity"]), []).append(record)
    return cells


def _top1(record: Dict[str, Any], field: str) -> float:
    value = record.get(field, {}).get("top1")
    return float(value) if isinstance(value, (int, float)) else NAN


def _cell(
    key: Tuple[str, float], field: str, label: str, ours: List[Dict[str, Any]], theirs: List[Dict[str, Any]], tolerance: float, allow_missing: bool
) -> Cell:
    """One (model, sparsity, metric) cell from the candidate's runs ``ours`` and the baseline's ``theirs``."""
    mine = {r["seed"]: _top1(r, field) for r in ours}
    base = {r["seed"]: _top1(r, field) for r in theirs}
    missing = tuple(sorted(set(base) - set(mine)))
    values = list(mine.values())
    paired = tuple(mine[s] - base[s] for s in sorted(base)) if not missing and base else None
    if missing and allow_missing and set(mine) & set(base):
        paired = tuple(mine[s] - base[s] for s in sorted(set(mine) & set(base)))
    candidate = (*mean_std(values), len(values)) if values else (NAN, NAN, 0)
    return Cell(
        key[0],
        key[1],
        label,
        candidate,
        (*mean_std(list(base.values())), len(base)),
        tolerance,
        paired=paired,
        missing_seeds=missing,
        finite=all(math.isfinite(v) for v in values),
        allow_missing=allow_missing,
    )


def compare_results(
    candidate: List[Dict[str, Any]],
    baseline: List[Dict[str, Any]],
    method: str,
    against: Optional[str] = None,
    tolerance: float = 1.0,
    allow_missing: bool = False,
) -> List[Cell]:
    """Every (model, sparsity, metric) cell the baseline has, judged for the candidate (a cell the candidate lacks is
    MISSING); ``method``/``against`` are run labels or method names."""
    ours, theirs = _by_cell(candidate, method), _by_cell(baseline, against or method)
    cells = []
    for key in sorted(theirs):
        for field, label in METRICS:
            cells.append(_cell(key, field, label, ours.get(key, []), theirs[key], tolerance, allow_missing))
    return cells


SETTINGS_NOT_COMPARED = ("method", "sparsity")


def _settings(records: List[Dict[str, Any]]) -> Dict[str, set]:
    """field -> the values it takes over ``records``: every configuration field but the method, the sparsity and the
    pruner's options (what a comparison of two methods is allowed to differ in)."""
    values: Dict[str, set] = {}
    fields = [config_fields(record) for record in records]
    names = {name for flat in fields for name in flat if name not in SETTINGS_NOT_COMPARED and not name.startswith("options.")}
    for flat in fields:  # a setting left out of a run's configuration at its earlier behaviour counts as that value
        for name in names:
            values.setdefault(name, set()).add(json.dumps(flat.get(name, omitted_value(name)), sort_keys=True, default=str))
    return values


def settings_mismatch(candidate: List[Dict[str, Any]], baseline: List[Dict[str, Any]], method: str, against: Optional[str] = None) -> List[str]:
    """The settings the compared runs of the two sides differ in, as ``name (candidate X, baseline Y)``; [] when they match."""
    ours, theirs = _settings(_selected(candidate, method)), _settings(_selected(baseline, against or method))
    differing = []
    for name in sorted(set(ours) | set(theirs)):
        default = {json.dumps(omitted_value(name), sort_keys=True, default=str)}
        if ours.get(name, default) != theirs.get(name, default):
            show = lambda values: "/".join(sorted(values))  # noqa: E731
            differing.append(f"{name} (candidate {show(ours.get(name, default))}, baseline {show(theirs.get(name, default))})")
    return differing


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


def _side(values: Tuple[float, float, int]) -> str:
    return "–" if values[2] == 0 else f"{values[0]:.2f} ± {values[1]:.2f} (n={values[2]})"


def comparison_table(cells: List[Cell], method: str, against: str) -> Tuple[List[str], List[List[str]]]:
    header = [
        "model",
        "sparsity",
        "metric",
        f"{method} (%)",
        f"{against} (%)",
        "difference (paired: mean of per-seed differences)",
        "allowed drop (tolerance + baseline std)",
        "verdict",
    ]
    rows = []
    for c in cells:
        note = " (paired)" if c.paired is not None else ""
        if c.missing_seeds and c.candidate[2]:
            note += f" (seeds {list(c.missing_seeds)} missing)"
        difference = "–" if c.candidate[2] == 0 else f"{c.difference:+.2f}{note}"
        rows.append([c.model, f"{c.sparsity:g}", c.metric, _side(c.candidate), _side(c.baseline), difference, f"{c.allowed_drop:.2f}", c.verdict])
    return header, rows


def verdict_summary(cells: List[Cell], failed: int, method: str, against: str, tolerance: float, allow_missing: bool) -> str:
    """The closing line: how many cells of each verdict, and what was allowed."""
    counts = {verdict: sum(c.verdict == verdict for c in cells) for verdict in (*FAILING, "missing (allowed)", "better", "same")}
    parts = [
        f"{counts['better']} cells better",
        f"{counts['REGRESSION']} regressions",
        f"{counts['UNSTABLE']} unstable",
        f"{counts['MISSING']} missing",
        f"{counts['NOT FINITE']} not finite",
        f"{counts['same']} within tolerance ({tolerance:g} points + the baseline's spread)",
    ]
    if allow_missing:
        parts.append(f"{counts['missing (allowed)']} missing cells allowed by --allow-missing")
    if failed:
        parts.append(f"{failed} failed runs (regressions)")
    passed = not failed and not any(c.fails for c in cells)
    return f"{method} vs {against}: " + ", ".join(parts) + f". Verdict: {'PASS' if passed else 'FAIL'}"


__all__ = ["Cell", "FAILING", "compare_results", "comparison_table", "failed_points", "nothing_to_compare", "settings_mismatch", "verdict_summary"]


@dataclass(frozen=True)
class GateVerdict:
    """The gate's printed lines (the table, one line per failed candidate run, the verdict) and whether it failed."""

    lines: List[str]
    failed: bool


def run_gate(gate: GateSpec) -> GateVerdict:
    """Judge ``gate``: load both folders, refuse (ReflowbenchError) what cannot be judged, else the verdict."""
    if not 0 <= gate.tolerance < 100:
        raise ReflowbenchError(f"--tolerance must be in [0, 100) percentage points, got {gate.tolerance}")
    against = gate.against or gate.method
    runs, failed_runs = {}, {}
    for side, folder in (("candidate", gate.candidate), ("baseline", gate.baseline)):
        runs[side], failed_runs[side] = load_finished_runs(Path(folder), gate.skip_unreadable)
        if not runs[side] and not (side == "candidate" and failed_runs[side]):  # a candidate whose every run failed is judged: it fails
            raise ReflowbenchError(f"no complete runs under {folder}/runs (the {side} folder): pass the --out folder of a `reflowbench run`")
    cells = compare_results(runs["candidate"], runs["baseline"], gate.method, against, gate.tolerance, gate.allow_missing)
    failed = failed_points(failed_runs["candidate"], runs["baseline"], gate.method, against)
    if not any(c.candidate[2] for c in cells) and not failed:
        sides = [(f"candidate ({gate.candidate})", gate.method, runs["candidate"]), (f"baseline ({gate.baseline})", against, runs["baseline"])]
        raise ReflowbenchError(nothing_to_compare(sides))
    differing = settings_mismatch(runs["candidate"] + failed_runs["candidate"], runs["baseline"], gate.method, against)
    if differing:
        raise ReflowbenchError(
            f"the candidate and the baseline were run with other settings, so their accuracies do not compare: {'; '.join(differing)}; "
            "run both with the same settings (only the method and its options may differ)"
        )
    lines = [markdown_table(*comparison_table(cells, gate.method, against))]
    lines += [f"REGRESSION: {gate.method} failed on {r['model']} at sparsity {r['sparsity']:g}, seed {r['seed']}: {r['error']}" for r in failed]
    lines.append("\n" + verdict_summary(cells, len(failed), gate.method, against, gate.tolerance, gate.allow_missing))
    return GateVerdict(lines, bool(failed) or any(c.fails for c in cells))
