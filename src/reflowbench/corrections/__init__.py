"""Post-pruning corrections: the base class and registry, and the corrections themselves (forward passes only).

Importing this package registers every built-in correction: reflow, statcorr, variance-match, repair.
"""

from reflowbench.corrections import reflow, repair, statcorr, variance_match  # noqa: F401  (registers them)
from reflowbench.corrections.base import (
    CORRECTIONS,
    Correction,
    CorrectionContext,
    CorrectionCost,
    correction_names,
    make_correction,
    refuse_inapplicable,
    register_correction,
)

__all__ = [
    "CORRECTIONS",
    "Correction",
    "CorrectionContext",
    "CorrectionCost",
    "correction_names",
    "make_correction",
    "refuse_inapplicable",
    "register_correction",
]
