from dataclasses import dataclass

import pytest
import torch

from reflowbench.errors import ConfigError, MaskError
from reflowbench.models.cifar_resnet import CifarResNet
from reflowbench.pruners import (
    PRUNERS,
    PruneContext,
    Pruner,
    TargetPolicy,
    apply_masks,
    make_pruner,
    masks_from_scores,
    register_pruner,
    select_targets,
    verify_masks,
)
from reflowbench.pruners.masks import lowest_k_mask


def test_target_policy_groups():
    model = CifarResNet(20, shortcut="B")
    full = select_targets(model)
    assert full.num_weights == 270_896
    inner = select_targets(model, TargetPolicy(include_first_conv=False, include_classifier=False, include_shortcuts=False))
    assert inner.num_weights == 267_264 and len(inner) == 18  # the WoodFisher/CBS "18 inner convs"
    assert "conv1.weight" not in inner.names and "fc.weight" not in inner.names
    assert all("downsample" not in name for name in inner.names)
    record = inner.record()
    assert record["num_weights"] == 267_264 and "except first conv, classifier, 1x1 shortcuts" in record["description"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x", None])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    from reflowbench.config import check_sparsity

    with pytest.raises(ConfigError, match=r"sparsity must be"):
        check_sparsity(bad)


def test_lowest_k_breaks_ties_by_index():
    scores = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0])
    assert lowest_k_mask(scores, 2).tolist() == [True, False, False, True, True]


@pytest.mark.parametrize("k", [0, 1, 7, 50, 199, 200])
def test_lowest_k_equals_the_stable_sort_with_many_ties_and_nans(k):
    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 5, (200,), generator=generator).double()  # five distinct values: ties everywhere
    with_nan = scores.clone()
    with_nan[::17] = float("nan")
    for values in (scores, with_nan, scores.view(10, 20)):
        expected = torch.ones(values.numel(), dtype=torch.bool)
        expected[torch.argsort(values.reshape(-1), stable=True)[:k]] = False
        assert torch.equal(lowest_k_mask(values, k).reshape(-1), expected)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 0.999])
def test_magnitude_exact_sparsity(tiny_model, scope, sparsity):
    targets = select_targets(tiny_model)
    pruner = make_pruner("mp", {"scope": scope})
    masks = pruner.prune(tiny_model, targets, sparsity, PruneContext(device=torch.device("cpu"), seed=0))
    apply_masks(targets, masks)
    actual = verify_masks(targets, masks, sparsity, scope)
    if scope == "global":
        assert actual == round(sparsity * targets.num_weights) / targets.num_weights
    else:
        for t in targets:
            assert int((~masks[t.param_name]).sum()) == round(sparsity * t.numel)


def test_global_magnitude_keeps_the_largest_weights(tiny_model):
    targets = select_targets(tiny_model)
    masks = make_pruner("mp").prune(tiny_model, targets, 0.5, PruneContext(device=torch.device("cpu"), seed=0))
    kept = torch.cat([t.weight.detach().abs().flatten()[masks[t.param_name].flatten()] for t in targets])
    pruned = torch.cat([t.weight.detach().abs().flatten()[~masks[t.param_name].flatten()] for t in targets])
    assert kept.min() >= pruned.max()


def test_verify_catches_nonzero_pruned_weights_and_wrong_counts(tiny_model):
    targets = select_targets(tiny_model)
    masks = masks_from_scores(targets, {t.param_name: t.weight.abs() for t in targets}, 0.5)
    with pytest.raises(MaskError, match="not zero"):
        verify_masks(targets, masks, 0.5)
    apply_masks(targets, masks)
    with pytest.raises(MaskError, match="needs"):
        verify_masks(targets, masks, 0.6)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown pruner 'nope'"):
        make_pruner("nope")
    with pytest.raises(ConfigError, match="has no option"):
        make_pruner("mp", {"damp": 1.0})


def test_a_registered_pruner_appears_in_cli_and_harness(digits, tmp_path):
    @dataclass
    class RandomOptions:
        salt: int = 0  # extra seed

    @register_pruner("test-random", "random pruning (test only)")
    class RandomPruner(Pruner):
        Options = RandomOptions

        def prune(self, model, targets, sparsity, ctx):
            generator = torch.Generator().manual_seed(ctx.seed + self.options.salt)
            scores = {t.param_name: torch.rand(t.weight.shape, generator=generator) for t in targets}
            return masks_from_scores(targets, scores, sparsity)

    try:
        from reflowbench.cli import build_parser, main

        help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
        assert "--test-random-salt" in help_text
        code = main(
            [
                "run",
                "--methods",
                "test-random",
                "--sparsities",
                "0.5",
                "--seeds",
                "0",
                "--out",
                str(tmp_path),
                "--calib-batches",
                "2",
                "--calib-batch-size",
                "32",
                "--diag-images",
                "64",
                "--no-progress",
                "--test-random-salt",
                "3",
                "--no-report",
            ]
        )
        assert code == 0
        assert len(list((tmp_path / "runs").glob("test-random_s0.5_seed0_*.json"))) == 1
    finally:
        PRUNERS.pop("test-random")


def test_plugin_module_from_environment(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_plugin.py").write_text(
        "from reflowbench.pruners import Pruner, register_pruner, masks_from_scores\n"
        "@register_pruner('plugin-abs', 'plugin test')\n"
        "class P(Pruner):\n"
        "    def prune(self, model, targets, sparsity, ctx):\n"
        "        return masks_from_scores(targets, {t.param_name: t.weight.abs() for t in targets}, sparsity)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", "my_plugin")
    from reflowbench.cli import main

    try:
        assert main(["list"]) == 0
        assert "plugin-abs" in capsys.readouterr().out
    finally:
        PRUNERS.pop("plugin-abs", None)
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", "no_such_module_xyz")
    assert main(["list"]) == 2
    assert "cannot be imported" in capsys.readouterr().err
