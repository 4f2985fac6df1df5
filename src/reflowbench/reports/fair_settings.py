"""The comparison report's "Fair settings" section: for every settings search of a suite, the published-defaults
row beside the tuned row (top-1 % right after pruning -> after REFLOW, mean ± std over seeds) and MP + REFLOW,
with the settings that set the two rows apart and a link to the search's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List

from reflowbench.reports.aggregate import BASELINE, fmt, markdown_table, mean_std
from reflowbench.schema.tuned import TunedRow


def _options(options: Dict[str, Any]) -> str:
    return "`" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "`"


def _losses(row: TunedRow) -> str:
    """``relative loss 1.030, the defaults' 1.083; `` (the defaults' part only where they were a cell of the grid)."""
    if row.chosen_loss is None:
        return ""
    theirs = f", the defaults' {row.defaults_loss:.3f}" if row.defaults_loss is not None and row.chosen else ""
    return f"relative loss {row.chosen_loss:.3f}{theirs}; "


def _cell(runs: List[Dict[str, Any]], seeds: int) -> str:
    """``pruned → REFLOW`` top-1 %, mean ± std; the seed count when below ``seeds``; "–" without runs."""
    if not runs:
        return "–"
    pruned, reflow = (fmt(*mean_std([r[stage]["top1"] for r in runs])) for stage in ("pruned", "reflow"))
    fewer = f" ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if len(runs) < seeds else ""
    return f"{pruned} → {reflow}{fewer}"


def _by_sparsity(records: List[Dict[str, Any]], keep: Callable[[Dict[str, Any]], bool]) -> Dict[float, List[Dict[str, Any]]]:
    """sparsity -> the records that ``keep`` accepts."""
    rows: Dict[float, List[Dict[str, Any]]] = {}
    for record in filter(keep, records):
        rows.setdefault(record["sparsity"], []).append(record)
    return rows


def _keyed(keys: FrozenSet[str]) -> Callable[[Dict[str, Any]], bool]:
    return lambda record: record.get("key") in keys


def _row_table(records: List[Dict[str, Any]], row: TunedRow) -> List[str]:
    """The defaults row, the tuned row and MP + REFLOW per sparsity, as markdown lines."""
    defaults, tuned = _by_sparsity(records, _keyed(row.defaults_keys)), _by_sparsity(records, _keyed(row.tuned_keys))
    mp = _by_sparsity(records, lambda record: record["model"] == row.model and record.get("label", record["method"]) == BASELINE)
    seeds = max((len(runs) for runs in [*defaults.values(), *tuned.values()]), default=1)
    body = [
        [f"{s:g}", _cell(defaults.get(s, []), seeds), _cell(tuned.get(s, []), seeds), fmt(*mean_std([r["reflow"]["top1"] for r in mp.get(s, [])]))]
        for s in sorted({*defaults, *tuned})
    ]
    header = ["sparsity", f"{row.method}, defaults", f"{row.method}, tuned", "MP + REFLOW"]
    return [markdown_table(header, body), ""]


def fair_settings_lines(records: List[Dict[str, Any]], rows: List[TunedRow], out: Path, link_prefix: str = "../") -> List[str]:
    """The section's markdown (without its heading): per search, what it changed and both rows. ``out`` is the
    suite's --out (where each search's table lives, linked once it exists); ``link_prefix`` leads there from the
    report's folder."""
    lines = [
        "Each Hessian pruner's settings grid was searched per model on the held-out training loss (never the test "
        "split; `reflowbench tune`, the lowest relative loss wins). The defaults row is the method's row in the main sweep (its "
        "published defaults, but where the suite sets an option, e.g. for memory); only the options the search changed are "
        "named. Top-1 % right after pruning → after REFLOW, mean ± std over seeds.",
        "",
    ]
    for row in rows:
        search = f"[search]({link_prefix}{row.table})" if (out / row.table).exists() else "no table yet"
        head = f"**{row.model}, {row.method}**: defaults {_options(row.defaults)}; "
        if row.chosen is None:
            lines += [head + f"settings search open ({row.scored} of {row.needed} scores in, {search}).", ""]
        elif not row.chosen:
            lines += [head + f"the search chose them ({_losses(row)}{search}): the tuned row is the defaults row.", ""]
        else:
            lines += [head + f"tuned {_options(row.chosen)} ({_losses(row)}{search}).", "", *_row_table(records, row)]
    return lines


__all__ = ["fair_settings_lines"]
