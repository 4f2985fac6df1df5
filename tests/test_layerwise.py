"""The layer-wise pruners (SparseGPT, ExactOBS/OBC, Wanda) as pruners: their sparsity rules, modes and targets on tiny
networks, checked against brute force, and their option errors."""

import pytest
import torch
from torch import nn

from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.errors import ConfigError
from reflowbench.pruners import PruneContext, make_pruner, masks_from_scores, select_targets, verify_masks
from reflowbench.pruners.masks import num_to_prune
from reflowbench.reconstruction import InputHessian, refit_rows


class _Net(nn.Module):
    """conv - BN - ReLU - conv (grouped) - BN - ReLU - pool - linear on 3 x 8 x 8 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def images():
    import numpy as np

    rng = np.random.default_rng(0)
    return TensorImageSet(rng.integers(0, 256, size=(96, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 96), 4, (0.5,) * 3, (0.25,) * 3)


def _net():
    torch.manual_seed(0)
    net = _Net()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _prune(name, options, sparsity, images, net=None):
    import numpy as np

    net = net or _net()
    targets = select_targets(net)
    pruner = make_pruner(name, {"num_images": 64, "batch_size": 16, **options})
    ctx = PruneContext(device=torch.device("cpu"), seed=0, train=images, fisher_indices=np.arange(64))
    masks = pruner.prune(net, targets, sparsity, ctx)
    verify_masks(targets, masks, sparsity, pruner.mask_scope(), model=net)
    return net, targets, masks, ctx


@pytest.mark.parametrize("name", ["sparsegpt", "obc", "wanda"])
@pytest.mark.parametrize("rule", ["uniform", "global-magnitude", "global-obs"])
def test_sparsity_rules_prune_exact_counts(name, rule, images):
    if name == "wanda" and rule == "global-obs":
        with pytest.raises(ConfigError, match="--wanda-sparsity-rule global-obs needs"):
            make_pruner(name, {"sparsity_rule": rule})
        return
    _, targets, masks, ctx = _prune(name, {"sparsity_rule": rule}, 0.6, images)
    pruned = {t.param_name: int((~masks[t.param_name]).sum()) for t in targets}
    if rule == "uniform":
        assert pruned == {t.param_name: num_to_prune(t.numel, 0.6) for t in targets}
    else:
        assert sum(pruned.values()) == num_to_prune(targets.num_weights, 0.6)
    if rule == "global-magnitude":
        mp = masks_from_scores(select_targets(_net()), {t.param_name: t.weight.detach().abs() for t in select_targets(_net())}, 0.6)
        assert pruned == {name_: int((~keep).sum()) for name_, keep in mp.items()}
    assert ctx.notes["layerwise"]["sparsity_rule"] == rule


def test_magnitude_mask_with_global_rule_is_mps_mask_refitted_exactly(images):
    dense = _net()
    mp_masks = masks_from_scores(select_targets(dense), {t.param_name: t.weight.detach().abs() for t in select_targets(dense)}, 0.7)
    net, targets, masks, _ = _prune("sparsegpt", {"sparsity_rule": "global-magnitude", "mask": "magnitude", "mode": "parallel"}, 0.7, images)
    for t in targets:
        assert torch.equal(masks[t.param_name], mp_masks[t.param_name])
    # parallel mode: the first layer's new weights are the exact re-fit under the dense H of its inputs
    hessian = InputHessian(dense.conv1, torch.device("cpu"))
    for batch, _ in images.batches(list(range(64)), 16):
        hessian.add(batch)
    from reflowbench.reconstruction import damped

    matrix, _ = damped(hessian.matrix(), 0.01)
    rows = dense.conv1.weight.detach().reshape(1, 8, -1).double()
    expected = refit_rows(rows, matrix, mp_masks["conv1.weight"].reshape(1, 8, -1))
    assert torch.allclose(net.conv1.weight.detach().reshape(1, 8, -1).double(), expected, atol=1e-5)


def test_sequential_mode_sees_the_pruned_layers_and_parallel_does_not(images):
    seq, *_ = _prune("sparsegpt", {"mode": "sequential", "target": "pruned-inputs"}, 0.7, images)
    par, *_ = _prune("sparsegpt", {"mode": "parallel"}, 0.7, images)
    assert torch.equal(seq.conv1.weight, par.conv1.weight)  # the first layer's inputs are the images either way
    assert not torch.allclose(seq.conv2.weight, par.conv2.weight)


def test_dense_outputs_target_is_the_least_squares_fit_to_the_dense_outputs():
    """With ``target dense-outputs`` a row's solve starts from H_hat^-1 C w: on the support it then lands on
    argmin_v |w^T X - v^T X_hat|^2 (brute force: least squares on the support's columns of X_hat)."""
    from reflowbench.pruners.layerwise import LayerwisePruner

    torch.manual_seed(1)
    layer = nn.Linear(6, 3, bias=False)
    dense_x, pruned_x = torch.randn(200, 6), torch.randn(200, 6)
    pruned_x[:, 0] += dense_x[:, 0]
    hessian = InputHessian(layer, torch.device("cpu"))
    hessian.add(pruned_x, dense_inputs=dense_x)
    pruner = make_pruner("sparsegpt", {"target": "dense-outputs", "damp": 1e-10})
    assert isinstance(pruner, LayerwisePruner)
    target = select_targets(nn.Sequential(layer)).targets[0]
    start = pruner._rows_to_fit(target, hessian.geometry, hessian)
    keep = torch.tensor([[True, False, True, True, False, True]] * 3).view(1, 3, 6)
    from reflowbench.reconstruction import damped

    matrix, _ = damped(hessian.matrix(), 1e-10)
    got = refit_rows(start, matrix, keep)[0]
    for r in range(3):
        support = keep[0, r].nonzero().flatten()
        wanted = (dense_x.double() @ layer.weight[r].detach().double()).unsqueeze(1)
        solution = torch.linalg.lstsq(pruned_x.double()[:, support], wanted).solution.flatten()
        assert torch.allclose(got[r, support], solution, atol=1e-6)


def test_dense_outputs_target_undoes_the_input_change_better_than_pruned_inputs(images):
    """On the tiny net at 0.7 the last conv's outputs stay nearer the dense network's with the dense-outputs target."""
    dense = _net()
    probe = next(iter(images.batches(list(range(64, 96)), 32)))[0]

    def conv2_out(net):
        with torch.no_grad():
            return net.conv2(torch.relu(net.bn1(net.conv1(probe))))

    reference = conv2_out(dense)
    plain, *_ = _prune("sparsegpt", {"refit": True, "target": "pruned-inputs"}, 0.7, images)
    towards_dense, *_ = _prune("sparsegpt", {"refit": True, "target": "dense-outputs"}, 0.7, images)
    assert (conv2_out(towards_dense) - reference).pow(2).mean() < (conv2_out(plain) - reference).pow(2).mean()


def test_obc_falls_back_to_the_sweep_on_wide_layers_and_says_so(images):
    _, _, _, ctx = _prune("obc", {"max_columns": 30}, 0.5, images)
    # conv1: 27 columns, conv2 (2 groups): 4 * 9 = 36 columns, fc: 8 columns; only conv2 is over 30
    assert ctx.notes["obc_sweep_layers"] == ["conv2.weight"]


@pytest.mark.parametrize("name", ["sparsegpt", "obc"])
def test_a_layer_with_fewer_calibration_samples_than_columns_is_named_with_the_fix(images, name):
    _, _, _, ctx = _prune(name, {"num_images": 4, "batch_size": 4}, 0.5, images)
    # fc: 8 columns, one position per image: 4 samples; the convolutions see 4 x 64 positions
    assert ctx.notes["layerwise"]["underdetermined"] == {"fc.weight": [4, 8]}
    _, _, _, ctx = _prune(name, {}, 0.5, images)
    assert "underdetermined" not in ctx.notes["layerwise"]
    from reflowbench.pruners.layerwise import underdetermined_warning

    line = underdetermined_warning(name, f"--{name}-num-images", 4, {"fc.weight": [4, 8], "conv2.weight": [30, 36]})
    assert "fc.weight, 4 < 8" in line and f"--{name}-num-images 8 or more" in line


def test_obc_prunes_a_layer_with_less_error_than_the_sweep(images):
    dense = _net()
    hessian = InputHessian(dense.conv1, torch.device("cpu"))
    for batch, _ in images.batches(list(range(64)), 16):
        hessian.add(batch)
    from reflowbench.reconstruction import damped

    h, _ = damped(hessian.matrix(), 0.01)
    rows = dense.conv1.weight.detach().reshape(1, 8, -1).double()

    def error(net):
        diff = net.conv1.weight.detach().reshape(1, 8, -1).double() - rows
        return float(torch.einsum("grd,gde,gre->", diff, h, diff))

    same = {"sparsity_rule": "uniform", "target": "pruned-inputs"}  # conv1 at 0.7 in both, on the same inputs
    obc, *_ = _prune("obc", same, 0.7, images)
    sweep, *_ = _prune("sparsegpt", {**same, "mask": "adaptive", "refit": False}, 0.7, images)
    assert error(obc) < error(sweep)


def test_wanda_splits_each_layers_count_evenly_between_rows(images):
    _, targets, masks, _ = _prune("wanda", {"compare": "row"}, 0.55, images)
    for t in targets:
        per_row = (~masks[t.param_name]).reshape(t.weight.shape[0], -1).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1


@pytest.mark.parametrize(
    "name, options, flag",
    [
        ("sparsegpt", {"num_images": 0}, "--sparsegpt-num-images"),
        ("sparsegpt", {"damp": 0.0}, "--sparsegpt-damp"),
        ("sparsegpt", {"mode": "both"}, "--sparsegpt-mode"),
        ("sparsegpt", {"mask": "random"}, "--sparsegpt-mask"),
        ("sparsegpt", {"block_size": -1}, "--sparsegpt-block-size"),
        ("obc", {"target": "outputs"}, "--obc-target"),
        ("obc", {"max_columns": 0}, "--obc-max-columns"),
        ("wanda", {"compare": "column"}, "--wanda-compare"),
    ],
)
def test_bad_options_name_their_flag(name, options, flag):
    with pytest.raises(ConfigError, match=flag):
        make_pruner(name, options)


def test_unsupported_layers_are_refused_in_one_line():
    from reflowbench.reconstruction import LayerGeometry

    with pytest.raises(ConfigError, match="handle Conv2d and Linear layers, not Conv1d"):
        LayerGeometry.of(nn.Conv1d(3, 4, 3))


def test_dense_inputs_recorded_or_recomputed_give_the_same_pruning(images, monkeypatch):
    from reflowbench.pruners.layerwise import LayerwisePruner

    recorded, *_ = _prune("sparsegpt", {"target": "dense-outputs"}, 0.7, images)
    monkeypatch.setattr(LayerwisePruner, "dense_input_bytes", staticmethod(lambda ctx: 0))  # over the budget: one forward per layer
    recomputed, *_ = _prune("sparsegpt", {"target": "dense-outputs"}, 0.7, images)
    for a, b in zip(recorded.parameters(), recomputed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "target"), [("sparsegpt", "pruned-inputs"), ("sparsegpt", "dense-outputs"), ("obc", "pruned-inputs"), ("wanda", "pruned-inputs")]
)
def test_the_sequential_inputs_in_one_staged_forward_give_the_pass_per_layer_pruning(images, monkeypatch, name, target):
    """Each layer's inputs on the network pruned so far, from one forward in stages (reflow/staged.py) or from a
    forward per layer cut short at it: the same pruned network, bit for bit."""
    import reflowbench.pruners.layerwise as layerwise

    options = {"target": target} if name != "wanda" else {"mode": "sequential"}
    staged, _, _, staged_ctx = _prune(name, options, 0.7, images)
    monkeypatch.setattr(layerwise, "staged_walk", lambda *args, **kwargs: None)
    per_layer, _, _, per_layer_ctx = _prune(name, options, 0.7, images)
    assert staged_ctx.notes["layerwise_staged"] is True and per_layer_ctx.notes["layerwise_staged"] is False
    for a, b in zip(staged.parameters(), per_layer.parameters()):
        assert torch.equal(a, b)


def test_hessians_over_the_memory_budget_are_refused_before_any_work(images):
    import numpy as np

    net = _net()
    pruner = make_pruner("sparsegpt", {"mode": "parallel"})
    ctx = PruneContext(device=torch.device("cpu"), seed=0, train=images, fisher_indices=np.arange(64), memory_budget_gb=1e-6)
    with pytest.raises(ConfigError, match=r"sparsegpt: the input Hessians need .* GiB budget \(largest: conv2.weight.*every layer's H at once"):
        pruner.prune(net, select_targets(net), 0.5, ctx)
    assert torch.equal(net.conv1.weight, _net().conv1.weight)  # nothing was pruned
