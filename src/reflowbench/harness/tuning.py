"""Fair settings (``reflowbench tune``): search a Hessian pruner's settings grid per model on the
cross-entropy of the held-out training subset, never on the test split.

Every cell of the grid (the product of the pruner's ``TUNING_GRID`` axes, or a ``--grid`` file) prunes
at each tuning sparsity for each seed; the pruned model's held-out loss is measured, then again after
REFLOW (the run's calibration settings). Each cell is scored by its **relative loss**: the geometric mean, over
the (sparsity, seed) points, of its loss (the chosen criterion) divided by the best cell's loss at that point
(1.0 = best everywhere); the lowest relative loss is chosen. The ratio counts how much worse a cell is, which a
rank does not (a cell 3.6x the best at one point and narrowly first at a point where every cell collapsed to
chance must not win), and it is scale-free per point, so neither low-loss nor collapsed points dominate.
Results:

- ``<out>/tuning/<model>_<method>.json``: every cell's losses, rewritten after each (resumable);
- ``<out>/tuning/<model>_<method>.md``: the table, best first;
- ``<out>/tuning/<model>_<method>.config.json``: ``{"method_options": {method: chosen}}``, for
  ``reflowbench run --config`` (the tuned row of a comparison; every run records its options).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from reflowbench.config import SweepSettings, TuneSpec, narrow_sweep
from reflowbench.errors import ConfigError, DivergedError, MemoryBudgetError
from reflowbench.harness import search_sharing
from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import SweepPlan, plan_sweep
from reflowbench.harness.run import SweepState, prune_fresh
from reflowbench.harness.search_sharing import Point, claim_point, merge_into_file, scored_points
from reflowbench.pruners import Pruner, make_pruner
from reflowbench.pruners.base import key_options
from reflowbench.reports.aggregate import markdown_table
from reflowbench.utils.cost import CostLedger
from reflowbench.utils.io import atomic_write_json, atomic_write_text, read_keyed_json, read_settings_file, stable_hash

Log = Callable[[str], None]
Grid = Dict[str, List[Dict[str, Any]]]


def read_grid(tune: TuneSpec, method: str) -> Grid:
    """The grid to search: ``tune.grid`` (a JSON file) or the pruner's ``TUNING_GRID``; checked for shape."""
    if tune.grid is None:
        cls = type(make_pruner(method))
        grid = getattr(cls, "TUNING_GRID", None)
        if not grid:
            raise ConfigError(f"pruner {method} has no settings grid to tune (the Hessian and layer-wise pruners have one); pass --grid FILE.json")
        return grid
    grid = read_settings_file(Path(tune.grid), f"--grid {tune.grid}")
    if not isinstance(grid, dict) or not grid or not all(isinstance(a, list) and a and all(isinstance(c, dict) for c in a) for a in grid.values()):
        raise ConfigError(f'--grid {tune.grid}: must be {{"axis": [{{"option": value, ...}}, ...], ...}} with at least one option set per axis')
    return grid


def grid_cells(grid: Grid) -> List[Dict[str, Any]]:
    """One option dict per cell of the product of the axes (later axes win on a shared option)."""
    return [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*grid.values())]


def tune_plan(spec: SweepSettings, tune: TuneSpec, check_out: bool = True) -> Tuple[SweepPlan, List[Dict[str, Any]]]:
    """The plan (one pruner per grid cell, each cell's options checked) and the cells' option overrides.
    ``tune`` is validated; ``spec``'s sweep is narrowed to the method and the tuning sparsities in place."""
    base = dict(spec.method_options.get(tune.method, {}))
    narrow_sweep(spec, tune.narrowing())
    plan = plan_sweep(spec, check_out=check_out)
    cells = [{**base, **cell} for cell in grid_cells(read_grid(tune, tune.method))]
    pruners = []
    for cell in cells:
        try:
            pruners.append(make_pruner(tune.method, cell))
        except ConfigError as exc:
            raise ConfigError(f"tuning grid cell {cell}: {exc}") from None
    return replace(plan, pruners=pruners), cells


def _loss(model, state: SweepState, seed: int) -> float:
    return evaluate(model, state.diagnostic_batches(seed), state.device)["loss"]


def _measure(state: SweepState, pruner: Pruner, sparsity: float, seed: int) -> Dict[str, Any]:
    """Prune, the held-out loss, REFLOW, the held-out loss again (both infinite, with the error, when the pruner
    diverged with this cell's settings: ranked last)."""
    ledger = CostLedger()
    try:
        model, _, _ = prune_fresh(state, pruner, sparsity, seed, ledger, keep_curvature=True)
    except DivergedError as error:
        state.log(f"  diverged: {error}")
        return _unscored(error, ledger)
    except MemoryBudgetError as error:  # this cell does not fit: ranked last, scored again under a larger --memory-budget-gb
        budget = state.spec.sweep.memory_budget_gb
        state.log(f"  skipped, over the {budget:g} GiB memory budget: {error}")
        return _unscored(error, ledger, over_budget_gb=budget)
    pruned = _loss(model, state, seed)
    state.recalibrate(model, seed)
    return {"loss_pruned": pruned, "loss_reflow": _loss(model, state, seed), "prune_seconds": ledger.get("prune").seconds}


def _unscored(error: Exception, ledger: CostLedger, **extra: Any) -> Dict[str, Any]:
    """The score of a cell that produced no model: infinite losses (ranked last), the error and the seconds spent."""
    return {"loss_pruned": math.inf, "loss_reflow": math.inf, "prune_seconds": ledger.get("prune").seconds, "error": str(error), **extra}


class CellScore(NamedTuple):
    """One grid cell's place in a search (see :func:`rank_cells`)."""

    cell: str  # the cell's id
    relative_loss: float  # geometric mean over its scored points of loss / best loss there (1.0 = best everywhere; inf: none scored)
    unscored: int  # its points without a finite loss (diverged, over the memory budget): ranked after every cell with fewer


def rank_cells(results: List[Dict[str, Any]], criterion: str, cut: FrozenSet[str] = frozenset()) -> List[CellScore]:
    """Every cell's :class:`CellScore`, best first: fewest unscored points, then the cells the first pass kept before
    those it ``cut`` (scored at fewer sparsities, they never outrank a cell scored at all of them), then the lowest
    relative loss of ``loss_<criterion>`` (each point's loss divided by the lowest finite loss any cell reached at that
    (sparsity, seed), geometric mean over the cell's points with a finite loss)."""
    key = f"loss_{criterion}"
    best: Dict[Tuple[float, int], float] = {}
    for result in results:
        if math.isfinite(result[key]):
            point = (result["sparsity"], result["seed"])
            best[point] = min(best.get(point, math.inf), result[key])
    log_ratios: Dict[str, List[float]] = {}
    unscored: Dict[str, int] = {}
    for result in results:
        log_ratios.setdefault(result["cell"], [])
        unscored.setdefault(result["cell"], 0)
        if math.isfinite(result[key]):
            log_ratios[result["cell"]].append(math.log(result[key] / best[(result["sparsity"], result["seed"])]))
        else:
            unscored[result["cell"]] += 1
    scores = [CellScore(cell, math.exp(sum(logs) / len(logs)) if logs else math.inf, unscored[cell]) for cell, logs in log_ratios.items()]
    return sorted(scores, key=lambda score: (score.unscored, score.cell in cut, score.relative_loss, score.cell))


def planned_scores(cells: int, tune: TuneSpec, seeds: int) -> int:
    """(cell, sparsity, seed) scores a search makes: all of them, or with a first pass every cell at the first sparsity
    and the ``first_pass_keep`` best at the others."""
    if not tune.first_pass_keep:
        return cells * len(tune.at_sparsities) * seeds
    return cells * seeds + min(tune.first_pass_keep, cells) * (len(tune.at_sparsities) - 1) * seeds


def first_pass_kept(results: List[Dict[str, Any]], tune: TuneSpec, ids: List[str], seeds: List[int]) -> Optional[FrozenSet[str]]:
    """With a first pass, the ids of the cells that go on to the other sparsities: the ``first_pass_keep`` best at the
    first sparsity over ``seeds``; None while that pass is not complete (or without a first pass: every cell goes on)."""
    if not tune.first_pass_keep:
        return frozenset(ids)
    first = tune.at_sparsities[0]
    mine = [r for r in results if r["cell"] in ids and r["sparsity"] == first and r["seed"] in seeds]
    if len({(r["cell"], r["seed"]) for r in mine}) < len(ids) * len(seeds):
        return None
    return frozenset(score.cell for score in rank_cells(mine, tune.criterion)[: tune.first_pass_keep])


def run_tuning(plan: SweepPlan, cells: List[Dict[str, Any]], tune: TuneSpec, log: Log = print) -> Dict[str, Any]:
    """Score every cell (resuming from the results file), then write the table and the chosen config; returns
    their paths ("results", "markdown", "config") and the chosen options ("chosen")."""
    spec = plan.spec
    state = SweepState(plan, log)
    folder, stem = _where(spec, tune)
    results_path = folder / f"{stem}.json"
    read = lambda: _scores(state, tune)  # noqa: E731 - the file as it is now (other workers may have added to it)
    retry = [r for r in read()["results"] if _fits_now(r, spec.sweep.memory_budget_gb)]
    if retry:
        log(f"scoring {len(retry)} cells again that were over a smaller memory budget than --memory-budget-gb {spec.sweep.memory_budget_gb:g}")
        retried = {(r["cell"], r["sparsity"], r["seed"]) for r in retry}
        merge_into_file(results_path, read, lambda rec: rec.update(results=[r for r in rec["results"] if (r["cell"], r["sparsity"], r["seed"]) not in retried]))
    ids = _cell_ids(plan)
    seeds = [] if tune.report_only else spec.sweep.seeds
    pruner_of = dict(zip(ids, plan.pruners))
    options_of = dict(zip(ids, cells))

    def measure(point: Point) -> None:
        cell_id, sparsity, seed = point
        result = {"cell": cell_id, "options": options_of[cell_id], "sparsity": sparsity, "seed": seed, **_measure(state, pruner_of[cell_id], sparsity, seed)}
        merge_into_file(results_path, read, lambda rec: _add_result(rec, result))
        log(f"seed {seed} s={sparsity:g} {options_of[cell_id]}: held-out loss {result['loss_pruned']:.4g} pruned, {result['loss_reflow']:.4g} after REFLOW")

    def score(going_on: FrozenSet[str], sparsities: List[float]) -> None:
        wanted = [(c, x, seed) for seed in seeds for c in ids if c in going_on for x in sparsities]
        _score_shared(results_path, wanted, read, measure, log)

    if tune.first_pass_keep:
        score(frozenset(ids), tune.at_sparsities[:1])
        kept = first_pass_kept(read()["results"], tune, ids, spec.sweep.seeds)
        if kept is not None:
            log(f"first pass at s={tune.at_sparsities[0]:g}: {len(kept)} of {len(ids)} cells go on to s={', '.join(f'{x:g}' for x in tune.at_sparsities[1:])}")
            score(kept, tune.at_sparsities[1:])
    else:
        score(frozenset(ids), tune.at_sparsities)
    record = read()
    expected = planned_scores(len(cells), tune, len(spec.sweep.seeds))
    return _write_outputs(folder, stem, record, cells, ids, tune, expected, spec.sweep.seeds)


def _add_result(record: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Add ``result`` to the results ``record`` unless its point is there already (another worker's, kept)."""
    if (result["cell"], result["sparsity"], result["seed"]) not in scored_points(record):
        record["results"].append(result)
    record["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _score_shared(results_path: Path, wanted: List[Point], read: Callable[[], Dict[str, Any]], measure: Callable[[Point], None], log: Log) -> None:
    """Measure every point of ``wanted`` not in the results file, each under its claim; wait for the points other
    workers hold until they are in (or their workers are gone, and this one takes them over)."""
    said_waiting = False
    while True:
        scored = scored_points(read())
        missing = [point for point in wanted if point not in scored]
        held = 0
        for point in missing:
            claim = claim_point(results_path, point)
            if claim is None:
                held += 1
                continue
            with claim:
                if point not in scored_points(read()):  # finished by another worker since the list was made
                    measure(point)
        if not held:
            return
        if not said_waiting:
            log(f"{held} scores are being measured by another worker sharing {results_path.parent}: waiting for them")
            said_waiting = True
        time.sleep(search_sharing.WAIT_POLL_S)


def _note(scores: List[Dict[str, Any]], cut_at: Optional[float] = None) -> str:
    """Why some of a cell's scores are infinite (over the memory budget, or the pruner diverged) or missing (cut by the
    first pass at ``cut_at``); '' when none is."""
    if cut_at is not None:
        return f"cut by the first pass at s={cut_at:g}"
    over = [r["over_budget_gb"] for r in scores if r.get("over_budget_gb") is not None]
    if over:
        return f"over the {max(over):g} GiB memory budget (--memory-budget-gb)"
    failed = sum(1 for r in scores if r.get("error"))
    return f"diverged at {failed} of {len(scores)} points" if failed else ""


def _fits_now(result: Dict[str, Any], budget_gb: float) -> bool:
    """Whether a score skipped as over the memory budget was skipped under a smaller budget than ``budget_gb`` (so it
    may fit now and is scored again)."""
    return result.get("over_budget_gb") is not None and result["over_budget_gb"] < budget_gb


def _where(spec: SweepSettings, tune: TuneSpec) -> Tuple[Path, str]:
    """(the tuning folder under --out, the file stem ``<model>_<method>``)."""
    return Path(spec.sweep.out) / "tuning", f"{spec.model.model}_{tune.method}"


def _cell_ids(plan: SweepPlan) -> List[str]:
    return [stable_hash(key_options(pruner), 8) for pruner in plan.pruners]


def _scores(state: SweepState, tune: TuneSpec) -> Dict[str, Any]:
    """The search's results file when it was written under these settings, else a new, empty record."""
    folder, stem = _where(state.spec, tune)
    key = stable_hash({**state.settings, "method": tune.method})
    return read_keyed_json(folder / f"{stem}.json", key, "results") or {
        "kind": "tuning",
        "key": key,
        "model": state.spec.model.model,
        "method": tune.method,
        "settings": state.settings,
        "results": [],
    }


class SearchProgress(NamedTuple):
    """What ``--dry-run`` reports of one settings search."""

    scored: int  # (cell, sparsity, seed) scores in
    needed: int  # scores the search needs
    chosen: Optional[Dict[str, Any]]  # the options it chooses once every score is in, else None
    prune_s: float  # mean pruning wall seconds of the scores in (0 when none; cells skipped for memory left out)
    over_budget: int = 0  # scores skipped as over the memory budget they were run under
    relative_losses: Tuple[Tuple[Dict[str, Any], float], ...] = ()  # (a cell's options, its relative loss) per cell, best first, once every score is in


def tuning_status(plan: SweepPlan, cells: List[Dict[str, Any]], tune: TuneSpec) -> SearchProgress:
    """The search's progress from its results file only (``--dry-run``); ``plan`` and ``cells`` from :func:`tune_plan`."""
    state = SweepState(plan, log=lambda message: None)
    ids = _cell_ids(plan)
    options_of = dict(zip(ids, cells))
    seeds = plan.spec.sweep.seeds
    stored = _scores(state, tune)["results"]
    kept = first_pass_kept(stored, tune, ids, seeds)
    going_on = kept if kept is not None else frozenset()
    firsts = tune.at_sparsities[:1] if tune.first_pass_keep else tune.at_sparsities
    wanted = {(cell, sparsity, seed) for cell in options_of for sparsity in firsts for seed in seeds}
    wanted |= {(cell, sparsity, seed) for cell in going_on for sparsity in tune.at_sparsities for seed in seeds}
    results = [r for r in stored if (r["cell"], r["sparsity"], r["seed"]) in wanted]
    needed = planned_scores(len(cells), tune, len(seeds))
    pruned = [r for r in results if r.get("over_budget_gb") is None]  # a cell skipped for memory stopped before pruning
    prune_s = sum(r["prune_seconds"] for r in pruned) / len(pruned) if pruned else 0.0
    cut = frozenset(ids) - going_on if tune.first_pass_keep else frozenset()
    ranking = rank_cells(results, tune.criterion, cut) if len(results) == needed else []
    chosen = options_of[ranking[0].cell] if ranking else None
    relative = tuple((options_of[score.cell], score.relative_loss) for score in ranking)
    return SearchProgress(len(results), needed, chosen, prune_s, len(results) - len(pruned), relative)


def _mean_loss(scores: List[Dict[str, Any]], sparsity: float, stage: str) -> str:
    """A cell's mean held-out loss at ``sparsity`` (``stage``: pruned or reflow) over its seeds; "–" where it has no score there."""
    losses = [r[f"loss_{stage}"] for r in scores if r["sparsity"] == sparsity]
    return f"{sum(losses) / len(losses):.4g}" if losses else "–"


def _write_outputs(
    folder: Path, stem: str, record: Dict[str, Any], cells: List[Dict[str, Any]], ids: List[str], tune: TuneSpec, expected: int, seeds: List[int]
) -> Dict[str, Any]:
    options_of = dict(zip(ids, cells))
    results = [r for r in record["results"] if r["cell"] in options_of and r["sparsity"] in tune.at_sparsities and r["seed"] in seeds]
    kept = first_pass_kept(results, tune, ids, seeds)
    cut = frozenset(ids) - kept if tune.first_pass_keep and kept is not None else frozenset()
    if tune.first_pass_keep:  # a cut cell's scores at the later sparsities (from an earlier search without the first pass) are not used
        results = [r for r in results if r["cell"] not in cut or r["sparsity"] == tune.at_sparsities[0]]
    if not results:
        raise ConfigError(f"no tuning cell of {record['method']} has been scored yet in {folder}: run `reflowbench tune` without --report-only first")
    partial = len(results) < expected
    ranking = rank_cells(results, tune.criterion, cut)
    if not any(math.isfinite(r[f"loss_{tune.criterion}"]) for r in results):
        reasons = sorted({r.get("error", "non-finite loss") for r in results})
        raise ConfigError(
            f"no cell of the {record['method']} grid could be scored ({len(results)} tried): {reasons[0]}"
            + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
        )
    chosen = ranking[0].cell
    header = ["rank", "options", "relative loss", *[f"loss {stage} s={s:g}" for s in tune.at_sparsities for stage in ("pruned", "reflow")], "prune s", "note"]
    rows = []
    for place, (cell, relative_loss, _) in enumerate(ranking, start=1):
        mine = [r for r in results if r["cell"] == cell]
        losses = [_mean_loss(mine, s, stage) for s in tune.at_sparsities for stage in ("pruned", "reflow")]
        rows.append(
            [
                str(place) + (" (chosen)" if cell == chosen else ""),
                json.dumps(options_of[cell], sort_keys=True),
                f"{relative_loss:.3f}",
                *losses,
                f"{sum(r['prune_seconds'] for r in mine) / len(mine):.1f}",
                _note(mine, tune.at_sparsities[0] if cell in cut else None),
            ]
        )
    seeds = sorted({r["seed"] for r in results})
    md = [
        f"# Tuning {record['method']} on {record['model']}",
        "",
        f"Held-out training loss (cross-entropy on the held-out subset, never the test split), seeds {seeds}. A cell's relative loss is the "
        f"geometric mean, over the (sparsity, seed) points, of its loss {'right after pruning' if tune.criterion == 'pruned' else 'after REFLOW'} "
        "divided by the best cell's loss at that point (1.000 = best everywhere); rows in order of it (cells with points that could not be "
        "scored last), the first is chosen.",
        "",
        *(
            [
                f"**First pass**: every cell was scored at s={tune.at_sparsities[0]:g}; only the {tune.first_pass_keep} best there went on to the other "
                f"sparsities ({len(cut)} cells cut, listed last: their relative loss covers s={tune.at_sparsities[0]:g} only).",
                "",
            ]
            if tune.first_pass_keep
            else []
        ),
        markdown_table(header, rows),
        "",
        *(
            [f"**Partial search**: {len(results)} of {expected} (cell, sparsity, seed) scores; a cell's relative loss covers only the points it has.", ""]
            if partial
            else []
        ),
        f"Chosen{' so far' if partial else ''}: `{json.dumps(options_of[chosen], sort_keys=True)}`; run it with `--config {folder / (stem + '.config.json')}`.",
        "",
    ]
    markdown, config = folder / f"{stem}.md", folder / f"{stem}.config.json"
    atomic_write_text(markdown, "\n".join(md))
    atomic_write_json(config, {"method_options": {record["method"]: options_of[chosen]}})
    return {"results": folder / f"{stem}.json", "markdown": markdown, "config": config, "chosen": options_of[chosen], "partial": partial}
