"""What the layer-wise pruners' runs say about their own layers (``notes``), as report lines: the layers whose H saw
fewer calibration samples than columns (``notes.layerwise.underdetermined``) and the layers ExactOBS left to SparseGPT's
sweep because they have more inputs per row than ``--obc-max-columns`` (``notes.obc_sweep_layers``)."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from reflowbench.reports.aggregate import shown

UNDERDETERMINED_CAPTION = (
    "Layers whose input Hessian saw fewer calibration samples (images x output positions) than it has columns: it is "
    "singular there before damping and the weight updates fit the calibration images only; `--<pruner>-num-images` "
    "raises the samples (each run's log names how many make every H full rank)."
)


def layerwise_note_lines(records: List[Dict[str, Any]]) -> List[str]:
    """Markdown lines (a section) listing, per model and configuration, the layers of the two kinds above over its runs
    (layer: samples < columns; the fewest samples seen); empty when no run has such a note."""
    short: Dict[Tuple[str, str], Dict[str, List[int]]] = {}
    swept: Dict[Tuple[str, str], set] = {}
    for record in records:
        notes = record.get("notes") or {}
        where = (record["model"], shown(record))
        for layer, (samples, columns) in (notes.get("layerwise") or {}).get("underdetermined", {}).items():
            seen = short.setdefault(where, {}).get(layer)
            short[where][layer] = [min(samples, seen[0]) if seen else samples, columns]
        if notes.get("obc_sweep_layers"):
            swept.setdefault(where, set()).update(notes["obc_sweep_layers"])
    if not short and not swept:
        return []
    lines = ["## Layer-wise pruners' notes on their layers", ""]
    if short:
        lines += [UNDERDETERMINED_CAPTION, ""]
        for (model, label), layers in sorted(short.items()):
            listed = ", ".join(f"{layer} ({samples:,} < {columns:,})" for layer, (samples, columns) in sorted(layers.items()))
            lines.append(f"- {model} {label}: {listed}")
        lines.append("")
    if swept:
        lines += ["Layers ExactOBS pruned with SparseGPT's sweep instead (more inputs per row than `--obc-max-columns`):", ""]
        lines += [f"- {model} {label}: {', '.join(sorted(layers))}" for (model, label), layers in sorted(swept.items())]
        lines.append("")
    return lines
