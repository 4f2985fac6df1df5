"""Layer-group streaming (G of one group of layers at a time) gives the one-pass results."""

import numpy as np
import pytest
import torch

from conftest import TinyBNNet
from reflowbench.errors import ConfigError
from reflowbench.hessian.layer_group_streaming import partition_layers
from reflowbench.pruners import PruneContext, make_pruner, select_targets

CPU = torch.device("cpu")


def _prune(digits, name, options, sparsity=0.6, budget_gb=8.0):
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner(name, {"num_grads": 24, "minibatch": 2, "chunk_images": 16, **options})
    ctx = PruneContext(device=CPU, seed=0, train=digits.train, fisher_indices=np.arange(pruner.fisher_images()), memory_budget_gb=budget_gb)
    masks = pruner.prune(model, targets, sparsity, ctx)
    return masks, {t.param_name: t.weight.detach().clone() for t in targets}, ctx


@pytest.mark.parametrize(
    "name, options",
    [
        ("woodfisher", {"block_size": 10}),  # saliency pass, then the summed OBS update pass
        ("woodfisher", {"recompute_steps": 2}),  # two steps: damping and the divergence probe on the streamed Fisher
        ("mp-hessian", {"block_size": 0}),  # fisher_times + restricted solve (joint update)
        ("chita", {"solver": "block-backsolve", "block_size": 16}),
    ],
)
def test_streamed_groups_give_the_one_pass_masks_and_weights(digits, name, options):
    masks, weights, _ = _prune(digits, name, options)
    streamed_masks, streamed_weights, ctx = _prune(digits, name, {**options, "layer_groups": 3})
    assert ctx.notes["layer_groups"] == 3
    for key in masks:
        assert torch.equal(masks[key], streamed_masks[key]), key
        assert torch.allclose(weights[key], streamed_weights[key], atol=1e-6, rtol=1e-5), key


def test_layer_groups_zero_streams_when_the_budget_is_small(digits):
    # 54.5 KiB: all of G (29 KiB) is over half of it; a group's G (at most 24 KiB) + a call's gradients (2 KiB) and
    # activations (2 images of 10.3 KiB) fits
    options = {"num_grads": 24, "minibatch": 2, "layer_groups": 0, "chunk_images": 2}
    _, _, ctx = _prune(digits, "woodfisher", options, budget_gb=5.2e-5)
    assert ctx.notes["layer_groups"] > 1
    planned = make_pruner("woodfisher", options).working_set(select_targets(TinyBNNet()), 0, int(5.2e-5 * 2**30))
    assert f"one of {ctx.notes['layer_groups']} layer groups" in planned.what  # the cost plan chooses the groups the run used
    _, _, ctx = _prune(digits, "woodfisher", {"layer_groups": 0})
    assert "layer_groups" not in ctx.notes  # fits: one pass


def test_pruners_whose_search_reads_g_every_step_refuse_streaming(digits):
    with pytest.raises(ConfigError, match="--cbs-layer-groups"):
        _prune(digits, "cbs", {"layer_groups": 2, "candidates": 5})
    with pytest.raises(ConfigError, match="--chita-layer-groups"):
        _prune(digits, "chita", {"layer_groups": 2, "iht_iters": 3, "solver": "iht"})


def test_partition_keeps_order_and_balances_bytes():
    sizes = {"a": 10, "b": 10, "c": 30, "d": 5, "e": 5}
    groups = partition_layers(sizes, 3)
    assert [n for g in groups for n in g] == list(sizes) and len(groups) <= 3
    assert partition_layers(sizes, 1) == [list(sizes)]
    assert len(partition_layers(sizes, 10)) <= 5 and all(partition_layers(sizes, 10))


def test_streaming_and_the_gradient_engine_leave_a_run_key_unchanged():
    from reflowbench.pruners.base import key_options

    assert key_options(make_pruner("woodfisher", {"layer_groups": 3, "grad_engine": "hooks"})) == key_options(make_pruner("woodfisher"))
    assert key_options(make_pruner("woodfisher", {"block_size": 7})) != key_options(make_pruner("woodfisher"))


@pytest.mark.parametrize("options, flag", [({"layer_groups": -1}, "--woodfisher-layer-groups"), ({"grad_engine": "jax"}, "--woodfisher-grad-engine")])
def test_bad_streaming_and_engine_settings_name_their_flag(options, flag):
    with pytest.raises(ConfigError, match=flag):
        make_pruner("woodfisher", options)
