"""Pruners: base class and registry, target layers, masks, and the pruners themselves.

Importing this package registers every built-in pruner.
"""

from reflowbench.pruners import bn_scale, cbs, chita, magnitude, mp_hessian, obc, sparsegpt, wanda, woodfisher  # noqa: F401  (registers bn-scale, cbs, chita, chita++, mp, mp-layer, mp-hessian, obc, sparsegpt, wanda, woodfisher)
from reflowbench.pruners.base import PRUNERS, NoOptions, PruneContext, Pruner, get_pruner_class, make_pruner, pruner_names, register_pruner
from reflowbench.pruners.masks import Masks, apply_masks, current_masks, mask_sparsity, masks_from_scores, verify_masks
from reflowbench.schema.targets import Target, TargetPolicy, TargetSet, select_targets

__all__ = [
    "PRUNERS",
    "NoOptions",
    "PruneContext",
    "Pruner",
    "get_pruner_class",
    "make_pruner",
    "pruner_names",
    "register_pruner",
    "Masks",
    "apply_masks",
    "current_masks",
    "mask_sparsity",
    "masks_from_scores",
    "verify_masks",
    "Target",
    "TargetPolicy",
    "TargetSet",
    "select_targets",
]
