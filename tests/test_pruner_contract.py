"""Every registered pruner, on a tiny model: exact sparsity, zeros where pruned, finite weights, deterministic."""

import pytest
import torch

from conftest import TinyBNNet
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.pruners import PRUNERS, PruneContext, apply_masks, make_pruner, select_targets, verify_masks

SMALL_OPTIONS = {"num_grads": 32, "chunk_images": 16}


def _small(name):
    cls = PRUNERS[name]
    known = {f for f in cls.Options.__dataclass_fields__}
    return make_pruner(name, {k: v for k, v in SMALL_OPTIONS.items() if k in known})


def _prune(name, digits, seed, sparsity):
    torch.manual_seed(123)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = _small(name)
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(64, pruner.fisher_images(), 32), seed)
    ctx = PruneContext(device=torch.device("cpu"), seed=seed, train=digits.train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"])
    masks = pruner.prune(model, targets, sparsity, ctx)
    apply_masks(targets, masks)
    return targets, masks, pruner


@pytest.mark.parametrize("name", sorted(PRUNERS))
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_pruner_contract(name, digits, sparsity):
    targets, masks, pruner = _prune(name, digits, 0, sparsity)
    actual = verify_masks(targets, masks, sparsity, pruner.mask_scope())
    assert abs(actual - sparsity) < 1.0 / targets.num_weights * len(targets) + 1e-12
    again, masks_again, _ = _prune(name, digits, 0, sparsity)
    for t, u in zip(targets, again):
        assert torch.equal(masks[t.param_name], masks_again[u.param_name])
        assert torch.equal(t.weight, u.weight)
