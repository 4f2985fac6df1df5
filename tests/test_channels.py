"""Channel pruning: the groups Torch-Pruning finds (and the ones left whole), the surgery checked against zeroed
channels, the channel masks read back or refused, the scores against brute force, the saved smaller network read back
(``torch.load(weights_only=True)``, ``build_model``, ``run --checkpoint``), and the refusals in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from reflowbench.channels import ChannelGroup, ChannelSlice, find_channel_groups, remove_channels, surgery
from reflowbench.channels.surgery import check_removal
from reflowbench.cli import main
from reflowbench.errors import CheckpointError, ConfigError, MaskError
from reflowbench.models import build_model
from reflowbench.models.pruned_shapes import apply_pruned_shapes, module_shapes
from reflowbench.pruners import PRUNERS, select_targets
from reflowbench.pruners.channels import (
    bn_scales,
    channel_masks,
    channels_to_remove,
    filter_norms,
    lowest_channels,
    removed_channels,
    summed_scores,
)

QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64"]  # the embedded demo's REFLOW and diagnostics, small


def _randomised(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and shifts away from their initial values, so a zeroed channel is not zero by accident."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_the_groups_of_the_three_architectures_and_the_ones_left_whole():
    resnet = find_channel_groups(_randomised(build_model("resnet20")), torch.randn(2, 3, 32, 32))
    assert [g.root for g in resnet.groups] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in (0, 1, 2)]
    assert resnet.groups[0].producers == ("layer1.0.conv1",) and resnet.groups[0].norms == ("layer1.0.bn1",)
    assert {s.param_name for s in resnet.groups[0].slices} == {"layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.conv2.weight"}
    assert list(resnet.excluded) == ["conv1"]  # the residual stream: option A's zero padding fixes its channel count
    mobilenet = find_channel_groups(_randomised(build_model("mobilenetv1")), torch.randn(2, 3, 32, 32))
    assert len(mobilenet.groups) == 14 and not mobilenet.excluded
    first = mobilenet.groups[0]  # the stem's channels pass through the first depthwise convolution
    assert first.producers == ("features.0",) and first.depthwise_root and ChannelSlice("features.6", "weight", 1) in first.slices


def test_the_surgery_equals_the_zeroed_network_and_a_wrong_group_is_caught():
    model = _randomised(build_model("mobilenetv1"))
    example = torch.randn(4, 3, 32, 32)
    search = find_channel_groups(model, example)
    removal = {g.root: list(range(1, g.channels, 3)) for g in search.groups}
    reference = model(example)
    smaller = remove_channels(model, search.groups, removal, example).model
    assert smaller.features[0].out_channels == 32 - len(removal[search.groups[0].root])
    assert sum(p.numel() for p in smaller.parameters()) < 0.6 * sum(p.numel() for p in build_model("mobilenetv1").parameters())
    assert not torch.allclose(smaller(example), reference)  # channels really went
    # A group that forgets the BatchNorm and the consumer: the zeroed channel still carries the BatchNorm's shift into the
    # next layer, the smaller network does not -> refused.
    small = _randomised(build_model("smallcnn"))
    digits = torch.randn(4, 1, 8, 8)
    true = find_channel_groups(small, digits).groups[0]
    forged = ChannelGroup(true.root, true.channels, tuple(s for s in true.slices if s.module == "features.0"), true.producers, ())
    with pytest.raises(MaskError, match="differs from the same network with those channels zeroed"):
        remove_channels(small, [forged], {forged.root: list(range(0, 32, 2))}, digits)


def test_the_option_a_shortcut_group_fails_its_check():
    model = _randomised(build_model("resnet20"))
    stem = ChannelGroup(
        "conv1", 16, (ChannelSlice("conv1", "weight", 0), ChannelSlice("bn1", "weight", 0), ChannelSlice("bn1", "bias", 0)), ("conv1",), ("bn1",)
    )
    example = torch.randn(2, 3, 32, 32)
    assert "breaks the network" in (check_removal(model, [stem], example) or "")
    # Checked together, then halves of a failing set: the one bad group among the nine good ones is found alone.
    good = find_channel_groups(model, example).groups
    assert len(good) == 9
    calls = []
    real = surgery.check_removal
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(surgery, "check_removal", lambda *args: calls.append(len(args[1])) or real(*args))
        assert surgery.failing_groups(model, good, example) == {} and calls == [9]  # all pass: one traced copy
        calls.clear()
        found = surgery.failing_groups(model, good[:4] + [stem] + good[4:], example)
    assert list(found) == ["conv1"] and "breaks the network" in found["conv1"] and calls[0] == 10 and len(calls) <= 2 * 4 + 1


def test_channel_masks_are_read_back_and_anything_else_is_refused():
    model = build_model("smallcnn")
    targets = select_targets(model)
    groups = find_channel_groups(model, torch.randn(2, 1, 8, 8)).groups
    removal = {g.root: [0, 5, 7] for g in groups}
    masks = channel_masks(targets, groups, removal)
    assert removed_channels(targets, groups, masks) == removal
    assert not masks["features.3.weight"][:, 5].any() and not masks["features.3.weight"][5].any()
    partial = {k: v.clone() for k, v in masks.items()}
    partial["features.3.weight"][:, 5] = True  # the consumer's input slice kept: not a whole channel
    with pytest.raises(MaskError, match="not whole channels"):
        removed_channels(targets, groups, partial)
    scattered = {k: v.clone() for k, v in masks.items()}
    scattered["features.0.weight"][1, 0] = False  # one more weight: unstructured
    with pytest.raises(MaskError, match="not whole channels"):
        removed_channels(targets, groups, scattered)


def test_the_channel_scores_against_brute_force():
    model = _randomised(build_model("smallcnn"))
    targets = select_targets(model)
    groups = find_channel_groups(model, torch.randn(2, 1, 8, 8)).groups
    group = groups[1]  # produced by features.3, consumed by features.6
    weight, consumer = model.features[3].weight.detach(), model.features[6].weight.detach()
    assert torch.allclose(filter_norms(groups, targets, "l1")[group.root], weight.abs().sum(dim=(1, 2, 3)).double())
    assert torch.allclose(filter_norms(groups, targets, "l2")[group.root], weight.pow(2).sum(dim=(1, 2, 3)).sqrt().double())
    assert torch.allclose(bn_scales(model, groups)[group.root], model.features[4].weight.detach().abs().double())
    ones = {t.param_name: torch.ones_like(t.weight) for t in targets}  # every weight of a channel counted once
    assert torch.equal(
        summed_scores(groups, targets, ones)[group.root], torch.full((32,), float(weight[0].numel() + consumer[:, 0].numel()), dtype=torch.float64)
    )
    removal = lowest_channels({group.root: torch.arange(32.0).flip(0)}, [group], 0.25)
    assert removal[group.root] == list(range(24, 32)) and channels_to_remove(4, 1.0) == 3


def test_a_saved_channel_pruned_network_is_read_back_and_run_again(tmp_path, capsys):
    save, record = tmp_path / "ch.pt", tmp_path / "r.json"
    quick = QUICK
    assert main(["prune", "--method", "mp", "--pattern", "channels", "--sparsity", "0.5", *quick, "--save", str(save), "--record", str(record)]) == 0
    saved = torch.load(save, weights_only=True)  # no pickled code
    assert saved["pruned_shapes"]["modules"]["features.0"]["out_channels"] == 16
    rebuilt = build_model("smallcnn", 10, save)
    assert rebuilt.features[0].out_channels == 16 and rebuilt.features[3].in_channels == 16
    result = json.loads(record.read_text())
    structure = result["structure"]
    assert result["sparsity_actual"] == 0.5 and structure["params"] < 0.4 * structure["dense_params"] and structure["flops"] < 0.4 * structure["dense_flops"]
    assert result["notes"]["channels_removed"]["features.3"] == "16/32" and result["notes"]["channel_surgery_relative_error"] < 1e-4
    capsys.readouterr()
    out = tmp_path / "again"
    assert main(["run", "--checkpoint", str(save), "--methods", "mp", "--sparsities", "0.5", "--seeds", "0", *quick, "--out", str(out)]) == 0
    again = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert again["targets"]["num_weights"] < 0.3 * result["targets"]["num_weights"]  # the smaller network's weights, pruned further


CHANNEL_PRUNERS = sorted(name for name, cls in PRUNERS.items() if "channels" in cls.PATTERNS)


@pytest.mark.parametrize("name", CHANNEL_PRUNERS)
def test_every_pruner_that_declares_channels_removes_the_same_fraction_of_every_group(tmp_path, name):
    save = tmp_path / "w.pt"
    args = ["prune", "--method", name, "--pattern", "channels", "--sparsity", "0.25", *QUICK, "--save", str(save)] + (
        ["--woodfisher-num-grads", "64"] if name == "woodfisher" else []
    )
    assert main(args) == 0
    modules = torch.load(save, weights_only=True)["pruned_shapes"]["modules"]
    convs = [entry for entry in modules.values() if entry["kind"] == "Conv2d"]
    assert [c["out_channels"] for c in convs] == [24] * 8 and modules["fc"]["in_features"] == 24  # 32 - round(0.25 x 32) in each of the 8 groups


def test_pruned_shapes_of_another_kind_are_refused():
    shapes = module_shapes(build_model("smallcnn"))
    with pytest.raises(CheckpointError, match="not in format"):
        apply_pruned_shapes(build_model("smallcnn"), {"modules": {}}, "x.pt")
    with pytest.raises(CheckpointError, match="pruned from another model"):
        apply_pruned_shapes(build_model("resnet20"), shapes, "x.pt")
    bad = {**shapes, "modules": {"features.0": {"kind": "Conv2d", "in_channels": 1, "out_channels": -3, "groups": 1}}}
    with pytest.raises(CheckpointError, match="positive integers"):
        apply_pruned_shapes(build_model("smallcnn"), bad, "x.pt")


def test_channel_refusals_are_one_line(tmp_path, capsys):
    assert sorted(name for name, cls in PRUNERS.items() if "channels" in cls.PATTERNS) == ["bn-scale", "mp", "woodfisher"]
    out = ["--out", str(tmp_path / "x")]
    group_norm = tmp_path / "gn.pt"
    torch.save(build_model("smallcnn-gn").state_dict(), group_norm)  # its initial weights: the refusal comes before any pruning
    for args, expected in (
        (["run", "--pattern", "channels", "--methods", "chita"], "--pattern channels: chita cannot prune to this pattern yet"),
        (["run", "--methods", "bn-scale"], "bn-scale removes whole channels only (--pattern channels)"),
        (["run", "--pattern", "channels", "--mp-channel-norm", "l3"], "--mp-channel-norm must be one of ('l1', 'l2'), got 'l3'"),
        (["run", "--pattern", "channels", "--corrections", "none,statcorr"], "--corrections statcorr match each channel to the dense model's same channel"),
        (
            ["run", "--pattern", "channels", "--model", "smallcnn-gn", "--checkpoint", str(group_norm), "--corrections", "none", "--sparsities", "0.5", *QUICK],
            "GroupNorm pools statistics over several channels",
        ),
    ):
        assert main([*args, *out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    with pytest.raises(ConfigError, match="has no BatchNorm to score"):
        bn_scales(nn.Sequential(nn.Conv2d(1, 2, 3)), [ChannelGroup("0", 2, (), ("0",), ())])


def test_a_pruner_removing_other_channel_counts_than_asked_fails_its_run(capsys):
    """A channel pruner that removes one channel per group whatever the fraction: its masks are whole channels, but not
    the count --pattern channels asks, and the run is refused in one line (no weights saved)."""
    from reflowbench.pruners import Pruner, register_pruner

    @register_pruner("one-channel", "removes one channel of every group (must be refused)")
    class OneChannel(Pruner):
        PATTERNS = ("channels",)

        def prune(self, model, targets, sparsity, ctx):
            return channel_masks(targets, ctx.channel_groups, {g.root: [0] for g in ctx.channel_groups})

    try:
        assert main(["prune", "--method", "one-channel", "--pattern", "channels", "--sparsity", "0.5", *QUICK]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "removed other channel counts than --pattern channels at 0.5 asks" in err[0] and "1 of 32, not 16" in err[0], err
    finally:
        PRUNERS.pop("one-channel", None)
