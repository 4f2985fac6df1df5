"""The reference-settings tables of a comparison: for every pruner and model, each option's value and where it comes
from (a section of ``../shared/REFERENCES.md``, or "suite choice: why"), so "published defaults" is something a reader
can check. The rows come from the harness (:class:`~reflowbench.schema.tuned.ReferenceRow`)."""

from __future__ import annotations

from typing import Any, Dict, List

from reflowbench.reports.aggregate import markdown_table
from reflowbench.schema.tuned import ReferenceRow


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(source: str) -> str:
    """``unused`` (an option these settings do not read), ``suite`` (the suite's own choice, or a value the run set), or
    ``published`` (a value with a published source)."""
    if source.startswith("not used"):
        return "unused"
    return "suite" if source.startswith(("suite choice", "set by the run")) else "published"


def _by_model(rows: List[ReferenceRow]) -> Dict[str, List[ReferenceRow]]:
    grouped: Dict[str, List[ReferenceRow]] = {}
    for row in rows:
        grouped.setdefault(row.model, []).append(row)
    return grouped


def reference_lines(rows: List[ReferenceRow], page: str) -> List[str]:
    """The report's section: per (model, method), the published values and the suite's own choices in one line each,
    and a link to ``page`` (every option with its source). Empty without rows."""
    if not rows:
        return []
    body = []
    for model, mine in _by_model(rows).items():
        for row in mine:
            kinds: Dict[str, List[str]] = {"published": [], "suite": [], "unused": []}
            for option, value, source in row.options:
                kinds[_kind(source)].append(f"{option}={_value(value)}")
            body.append([model, row.method, ", ".join(kinds["published"]) or "–", ", ".join(kinds["suite"]) or "–", str(len(kinds["unused"]))])
    header = ["model", "method", "published values (a REFERENCES.md section each)", "suite choices (each with its reason)", "options not used"]
    return [
        "## Reference settings",
        "",
        f"The reference row of each pruner runs its authors' shipped settings, or on a model they ship none for, the closest documented "
        f"ones. Every option with its value and source: [{page}]({page}).",
        "",
        markdown_table(header, body),
        "",
    ]


def reference_page(name: str, rows: List[ReferenceRow]) -> List[str]:
    """``reference-settings.md``: per model its note, then per method a table option | value | where it comes from."""
    lines = [
        f"# Reference settings of the {name} comparison",
        "",
        "Each pruner's reference row: every option that enters a run's key, its value, and where the value comes from: a section of "
        "`../shared/REFERENCES.md` (the reference implementations' shipped scripts, in our words), or a suite choice with its reason. "
        "Written by `reflowbench suite` from the pruners' `REFERENCE` tables and the suite's per-model `sources`.",
        "",
    ]
    if not rows:
        return lines + ["No reference rows: the suite's runs could not be keyed (run `reflowbench suite ... --report-only` with `--data`).", ""]
    for model, mine in _by_model(rows).items():
        lines += [f"## {model}", ""]
        if mine[0].note:
            lines += [mine[0].note, ""]
        for row in mine:
            table = [[option, f"`{_value(value)}`", source] for option, value, source in row.options]
            lines += [f"### {model}, {row.method}", "", markdown_table(["option", "value", "where it comes from"], table), ""]
    return lines


__all__ = ["reference_lines", "reference_page"]
