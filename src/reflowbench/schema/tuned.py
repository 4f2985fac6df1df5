"""What a comparison hands its report about its rows: for a settings search, which runs are the reference (published
defaults) row and which the tuned row (by run key), and the settings that set them apart; for every main-sweep method,
its reference settings with the source of each value. Produced by the harness (which plans the
runs and so knows their keys), read by the suite report; kept here, below both."""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Tuple


class TunedRow(NamedTuple):
    """One (model, method) settings search of a comparison and its two rows."""

    folder: str  # the job folder under the suite's --out (the runs and tuning/ live there)
    model: str
    method: str
    defaults: Dict[str, Any]  # the options the search changed, at their values in the defaults row
    chosen: Optional[Dict[str, Any]]  # the same options as the search chose them ({}: it chose the defaults); None while it is open
    defaults_keys: FrozenSet[str]  # run keys of the defaults row (every sparsity and seed of the main sweep)
    tuned_keys: FrozenSet[str]  # run keys of the tuned row (empty while the search is open)
    table: str  # the search's table, relative to the suite's --out (e.g. cifar10-resnet20/tuning/resnet20_woodfisher.md)
    scored: int = 0  # scores the search has in
    needed: int = 0  # scores the search needs
    chosen_loss: Optional[float] = None  # the chosen cell's relative loss in the search (1.0: best at every point)
    defaults_loss: Optional[float] = None  # the defaults' relative loss, where the grid has a cell with the defaults row's settings


class ReferenceRow(NamedTuple):
    """One (model, method) reference-settings row of a comparison: each option's value and where it comes from."""

    folder: str  # the job folder under the suite's --out
    model: str
    method: str
    options: Tuple[Tuple[str, Any, str], ...]  # (option, value, source) for every option in the run key
    note: str  # what a reference row is on this model (e.g. no script exists for it: the ResNet-20 setting)
    keys: FrozenSet[str]  # run keys of the row (every sparsity and seed of the main sweep)


class SuiteContext(NamedTuple):
    """Everything a comparison tells its combined report beyond the runs themselves."""

    description: str = ""
    completeness: Optional[List[str]] = None  # markdown lines: which of the suite's runs are in (shown first)
    tuned: Optional[List[TunedRow]] = None  # the settings searches and their two rows
    references: Optional[List[ReferenceRow]] = None  # every main-sweep method's reference settings, with sources
    roles: Optional[Dict[str, str]] = None  # run key -> "reference" / "tuned" (the short labels of the figures and tables)
    skip_unreadable: bool = False  # leave files under runs/ that are not readable run records out (else the report refuses them)


__all__ = ["ReferenceRow", "SuiteContext", "TunedRow"]
