"""What a comparison hands its report about one settings search: which runs are the published-defaults row and
which the tuned row (by run key), and the settings that set them apart. Produced by the harness (which plans the
runs and so knows their keys), read by the suite report; kept here, below both."""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, NamedTuple, Optional


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


__all__ = ["TunedRow"]
