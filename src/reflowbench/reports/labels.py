"""Short, human labels and one colour per method, shared by every figure and table of a report.

A results folder may hold several configurations of one method (its reference settings, a tuned row, a whole-network
IHT row, an ablation cell). The full label (``schema.results.annotate_variants``) names every setting that differs,
e.g. ``cbs [options.block_size=0, options.damp=1e-05, options.damp_mode=absolute]``: exact, but unreadable in a legend.
The short label is the method, then ``reference`` or ``tuned`` where the comparison says which configuration that is,
else the one setting that sets it apart from the method's reference configuration (``chita solver=iht``), with ``+N``
when N more differ.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional

import matplotlib

matplotlib.use("Agg")
from matplotlib import colormaps  # noqa: E402

from reflowbench.schema.results import config_fields, option_in_key  # noqa: E402

REFERENCE, TUNED = "reference", "tuned"
MAX_LABEL = 32  # characters: a label longer than this is cut (the tables keep the full label)
# The settings a short label names first when several differ (the structural options before the numeric ones).
SALIENT = (
    "solver", "form", "mask", "sparsity_rule", "mode", "refit", "compare", "block_size", "update", "damp", "damp_mode", "num_grads", "num_images",
    "minibatch", "recompute_steps", "scope", "dtype",
)  # fmt: skip
# A fixed colour per built-in method, so a method has the same colour in every figure of every report; other methods
# (plug-ins) take the remaining tab20 colours in name order.
METHOD_ORDER = ("mp", "woodfisher", "cbs", "chita", "chita++", "sparsegpt", "mp-hessian", "mp-layer", "obc", "wanda")  # mp-layer: tab10 grey
MP_REFERENCE_COLOR = "0.55"  # the grey of the MP + REFLOW reference line


def method_colors(methods: Iterable[str]) -> Dict[str, Any]:
    """One colour per method name: the built-ins fixed (tab10), any other in name order after them (tab20's light half)."""
    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    fixed = {name: tab10(index) for index, name in enumerate(METHOD_ORDER)}
    others = sorted(set(methods) - set(fixed))
    return {**fixed, **{name: tab20((2 * index + 1) % 20) for index, name in enumerate(others)}}


def _shorten(name: str) -> str:
    """``options.block_size`` -> ``block_size``, ``targets.pattern`` -> ``pattern``; other settings keep their section
    (``reflow.calib_batches``)."""
    return name.split(".", 1)[1] if name.startswith("options.") or name == "targets.pattern" else name


def _order(name: str) -> tuple:
    short = _shorten(name)
    return (SALIENT.index(short) if short in SALIENT else len(SALIENT), short)


def _cut(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _differences(mine: Dict[str, Any], base: Dict[str, Any]) -> List[str]:
    """The settings (``section.name``) whose values differ between two configurations, most salient first."""
    names = (set(mine) | set(base)) - {"sparsity", "method"}
    differing = [k for k in names if json.dumps(mine.get(k), sort_keys=True, default=str) != json.dumps(base.get(k), sort_keys=True, default=str)]
    return sorted(differing, key=_order)


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def set_short_labels(
    records: List[Dict[str, Any]], roles: Optional[Mapping[str, str]] = None, reference_options: Optional[Mapping[str, Dict[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """Give every record ``short`` (its configuration's short label) and ``role`` (``reference``, ``tuned`` or '').

    ``roles``: run key -> ``reference``/``tuned`` (a comparison's account of its rows); ``reference_options``: method ->
    the options of its reference settings (a configuration with exactly these options is the reference where ``roles``
    says nothing). A method with one configuration is labelled by its name alone. Returns ``records`` (changed in place).
    """
    roles, reference_options = roles or {}, reference_options or {}
    by_method: Dict[Any, Dict[str, List[Dict[str, Any]]]] = {}
    for record in records:
        record.setdefault("config", None)
        by_method.setdefault((record["model"], record["method"]), {}).setdefault(record.get("config") or record.get("label", ""), []).append(record)
    for (_, method), configs in by_method.items():
        role_of = {config: _role(runs, roles, reference_options.get(method)) for config, runs in configs.items()}
        reference = _reference_config(configs, role_of)
        if not roles:  # options alone cannot tell two reference-option configurations apart (e.g. other REFLOW settings): one is the reference
            role_of = {config: role if role != REFERENCE or config == reference else "" for config, role in role_of.items()}
        base = config_fields(configs[reference][0]) if reference is not None else None
        differing = {config: _differences(config_fields(runs[0]), base) if base is not None else [] for config, runs in configs.items()}
        others = list(dict.fromkeys(name for names in differing.values() for name in names))
        for config in configs:  # the base itself, when nothing names it: by its own values of what sets the others apart
            if not differing[config] and not role_of[config] and len(configs) > 1:
                differing[config] = others
        shown = _fewest_settings(method, configs, differing, role_of)
        for config, runs in configs.items():
            role = role_of[config]
            if len(configs) == 1:
                short = method
            elif role:
                short = f"{method} {role}"
            else:
                short = shown.get(config) or runs[0].get("label", method)
            for record in runs:
                record["short"], record["role"] = _cut(short), role
    _disambiguate(records)
    return records


def _fewest_settings(method: str, configs: Dict[str, List[Dict[str, Any]]], differing: Dict[str, List[str]], role_of: Dict[str, str]) -> Dict[str, str]:
    """config -> ``method name=value ...`` naming, most salient first, the fewest of its differing settings that tell it
    from the method's other unnamed configurations (``+N`` when N more differ); '' for a configuration with no difference."""
    unnamed = [config for config in configs if not role_of[config] and differing[config]]
    shown: Dict[str, str] = {}
    for count in range(1, 1 + max((len(differing[c]) for c in unnamed), default=0)):
        stems = {}
        for config in unnamed:
            fields = config_fields(configs[config][0])
            items = [f"{_shorten(name)}={_value(fields.get(name))}" for name in differing[config][:count]]
            rest = len(differing[config]) - len(items)
            stems[config] = f"{method} {' '.join(items)}"
            shown[config] = stems[config] + (f" +{rest}" if rest else "")
        if len(set(stems.values())) == len(stems):  # the named settings alone tell them apart
            break
    return shown


def _role(runs: List[Dict[str, Any]], roles: Mapping[str, str], reference: Optional[Dict[str, Any]]) -> str:
    """The configuration's role: from ``roles`` by any of its run keys, else ``reference`` when its options are ``reference``."""
    found = {roles[r["key"]] for r in runs if r.get("key") in roles}
    if found:
        return TUNED if TUNED in found and REFERENCE not in found else sorted(found)[0]
    patterned = any(r.get("settings", {}).get("targets", {}).get("pattern") for r in runs)  # N:M: not the authors' (unstructured) setting
    if reference is not None and not roles and not patterned and all(_key_options(r) == reference for r in runs):
        return REFERENCE
    return ""


def _key_options(record: Dict[str, Any]) -> Dict[str, Any]:
    return {name: value for name, value in record.get("options", {}).items() if option_in_key(name, value)}


def _reference_config(configs: Dict[str, List[Dict[str, Any]]], role_of: Dict[str, str]) -> Optional[str]:
    """The configuration other labels are measured from: the reference one (of several, the one with the most runs, then
    the first in order), else the one with the most runs."""
    references = [config for config, role in role_of.items() if role == REFERENCE] or list(configs)
    return max(references, key=lambda config: (len(configs[config]), -references.index(config))) if references else None


def _disambiguate(records: List[Dict[str, Any]]) -> None:
    """Where two configurations of one model got the same short label, append their config id's first characters."""
    per_label: Dict[Any, set] = {}
    for record in records:
        per_label.setdefault((record["model"], record["short"]), set()).add(record.get("config"))
    for record in records:
        if len(per_label[(record["model"], record["short"])]) > 1:
            record["short"] = _cut(f"{record['short'][: MAX_LABEL - 7]} #{str(record.get('config'))[:4]}")


def configurations_table(records: List[Dict[str, Any]]) -> tuple:
    """Header and rows: model, short label, role, the full settings label (what the short label stands for), runs."""
    rows: Dict[Any, List[Any]] = {}
    for record in records:
        key = (record["model"], record["short"])
        if key not in rows:
            rows[key] = [record["model"], record["short"], record.get("role") or "–", record.get("variant") or "(the method's only configuration)", 0]
        rows[key][4] += 1
    return ["model", "label", "role", "settings that differ from the method's other configurations", "runs"], [
        [*row[:4], str(row[4])] for _, row in sorted(rows.items())
    ]


__all__ = ["MAX_LABEL", "MP_REFERENCE_COLOR", "REFERENCE", "TUNED", "configurations_table", "method_colors", "set_short_labels"]
