"""Every registered pruner, on a tiny model: exact sparsity, zeros where pruned, finite weights, deterministic."""

import pytest
import torch

from conftest import TinyBNNet
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.pruners import PRUNERS, PruneContext, apply_masks, make_pruner, select_targets, verify_masks

UNSTRUCTURED = sorted(name for name, cls in PRUNERS.items() if "unstructured" in cls.PATTERNS)  # channel-only pruners: tests/test_channels.py
SMALL_OPTIONS = {"num_grads": 32, "minibatch": 2, "chunk_images": 16, "iht_iters": 10, "candidates": 5}


def _small(name):
    """The pruner with small-problem settings where it has the option (multi-stage pruners capped at 4 stages)."""
    cls = PRUNERS[name]
    known = cls.Options.__dataclass_fields__
    options = {k: v for k, v in SMALL_OPTIONS.items() if k in known}
    if "recompute_steps" in known and known["recompute_steps"].default > 4:
        options["recompute_steps"] = 4
    return make_pruner(name, options)


def _prune_model(name, model, digits, seed, sparsity, calibration, heldout):
    """Prune ``model`` in place with the small-settings pruner on the seed's digits subsets: (targets, masks, pruner, subsets)."""
    targets = select_targets(model)
    pruner = _small(name)
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(calibration, pruner.fisher_images(), heldout), seed)
    ctx = PruneContext(device=torch.device("cpu"), seed=seed, train=digits.train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"])
    masks = pruner.prune(model, targets, sparsity, ctx)
    apply_masks(targets, masks)
    return targets, masks, pruner, subsets


def _prune(name, digits, seed, sparsity):
    torch.manual_seed(123)
    targets, masks, pruner, _ = _prune_model(name, TinyBNNet().eval(), digits, seed, sparsity, 64, 32)
    return targets, masks, pruner


@pytest.mark.parametrize("name", UNSTRUCTURED)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_pruner_contract(name, digits, sparsity):
    targets, masks, pruner = _prune(name, digits, 0, sparsity)
    actual = verify_masks(targets, masks, sparsity, pruner.mask_scope())
    assert abs(actual - sparsity) < 1.0 / targets.num_weights * len(targets) + 1e-12
    again, masks_again, _ = _prune(name, digits, 0, sparsity)
    for t, u in zip(targets, again):
        assert torch.equal(masks[t.param_name], masks_again[u.param_name])
        assert torch.equal(t.weight, u.weight)


# A registered pruner's output must stay usable: on the trained small CNN at 0.7, REFLOW must apply to it and its
# accuracy after REFLOW may fall at most this many points below magnitude pruning + REFLOW on the same subsets.
ACCURACY_FLOOR_BELOW_MP = 10.0


def _prune_trained(name, digits, state, sparsity=0.7, seed=0):
    from reflowbench.harness.evaluate import evaluate
    from reflowbench.models import build_model
    from reflowbench.reflow import recalibrate_bn

    model = build_model("smallcnn", num_classes=digits.num_classes)
    model.load_state_dict(state)
    model.eval()
    _, _, _, subsets = _prune_model(name, model, digits, seed, sparsity, 512, 128)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()), f"{name}: non-finite weights or buffers"
    pruned = evaluate(model, digits.test.batches(None, 450), torch.device("cpu"))["top1"]
    handle = recalibrate_bn(model, digits.train.batches(subsets["calibration"], 64, shuffle=True, seed=seed), 8)
    assert handle.batches_seen == 8
    reflow = evaluate(model, digits.test.batches(None, 450), torch.device("cpu"))["top1"]
    return pruned, reflow


@pytest.fixture(scope="module")
def magnitude_reference(digits, trained_smallcnn):
    return _prune_trained("mp", digits, trained_smallcnn)


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_pruner_output_is_finite_reflowable_and_near_magnitude(name, digits, trained_smallcnn, magnitude_reference):
    pruned, reflow = _prune_trained(name, digits, trained_smallcnn)
    mp_pruned, mp_reflow = magnitude_reference
    assert reflow >= mp_reflow - ACCURACY_FLOOR_BELOW_MP, (
        f"{name}: {reflow:.2f}% after REFLOW, MP + REFLOW {mp_reflow:.2f}% (pruned {pruned:.2f} vs {mp_pruned:.2f})"
    )
