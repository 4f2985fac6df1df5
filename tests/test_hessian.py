"""The block Fisher backend against dense brute force (explicit F, explicit inverse)."""

import warnings

import pytest
import torch
from torch import nn

from reflowbench.errors import FisherError, MemoryBudgetError
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix, GradientSpec, LayerFisher, collect_gradients
from reflowbench.hessian.block_fisher import _cholesky_with_escalation
from reflowbench.pruners import select_targets
from reflowbench.utils.memory_format import channels_last_copy_bytes, channels_last_weights


def dense_block_fisher(G: torch.Tensor, block: int, lam: float) -> torch.Tensor:
    """The explicit d x d block-diagonal F = lam I + G_b^T G_b / N (blocks of ``block`` contiguous weights)."""
    n, d = G.shape
    block = d if block == 0 else block
    F = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, d, block):
        stop = min(d, start + block)
        g = G[:, start:stop].double()
        F[start:stop, start:stop] = lam * torch.eye(stop - start, dtype=torch.float64) + g.T @ g / n
    return F


CASES = [  # (N, d, block size, form)
    (6, 15, 0, "auto"),  # dual, whole layer
    (30, 15, 0, "auto"),  # primal, whole layer
    (7, 23, 5, "auto"),  # primal blocks with a padded last block
    (4, 23, 10, "auto"),  # dual blocks with padding
    (7, 23, 5, "dual"),
    (12, 23, 10, "primal"),
]


def test_the_gathered_restricted_solve_in_groups_of_blocks_is_the_one_batch_solve(monkeypatch):
    """A restricted solve whose kept columns per block are at most N goes block group by block group (its temporaries
    bounded); the groups give exactly the all-blocks-at-once result, and brute force on the block-diagonal F."""
    import reflowbench.hessian.block_fisher as block_fisher

    generator = torch.Generator().manual_seed(3)
    n, d, block = 12, 95, 10  # 10 blocks, the last padded
    G = torch.randn(n, d, generator=generator, dtype=torch.float64)
    layer = LayerFisher("w", G, FisherSpec(block_size=block, damp=0.05, form="primal"), torch.device("cpu"))
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    support = torch.rand(d, generator=generator) < 0.5
    assert layer.gathered_group_blocks(10) >= layer.num_blocks  # the default cap: one group here
    one_batch = layer.restricted_solve(support, v)
    monkeypatch.setattr(block_fisher, "GATHER_GROUP_ELEMENTS", 3 * (n * 10 + 2 * 10 * 10))
    assert layer.gathered_group_blocks(10) == 3  # groups of 3 blocks: 4 groups
    assert torch.equal(layer.restricted_solve(support, v), one_batch)
    F = dense_block_fisher(G, block, 0.05)
    expected = torch.zeros(d, dtype=torch.float64)
    expected[support] = torch.linalg.solve(F[support][:, support], v[support])
    assert float((one_batch - expected).norm() / expected.norm()) < 1e-10


@pytest.mark.parametrize("n, d, block, form", CASES)
@pytest.mark.parametrize("precision, tol", [("float64", 1e-8), ("float32", 1e-4)])
def test_operations_match_brute_force(n, d, block, form, precision, tol):
    generator = torch.Generator().manual_seed(n * 100 + d)
    G = torch.randn(n, d, generator=generator, dtype=torch.float64)
    lam = 0.05
    layer = LayerFisher("w", G.to(getattr(torch, precision)), FisherSpec(block_size=block, damp=lam, form=form, compute_dtype=precision), torch.device("cpu"))
    F = dense_block_fisher(G, block, lam)
    F_inv = torch.linalg.inv(F)
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    support = torch.rand(d, generator=generator) < 0.6
    expected_restricted = torch.zeros(d, dtype=torch.float64)
    expected_restricted[support] = torch.linalg.solve(F[support][:, support], v[support])

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert rel(layer.diag_inverse(), F_inv.diagonal()) < tol
    assert rel(layer.inverse_times(v), F_inv @ v) < tol
    assert rel(layer.restricted_solve(support, v), expected_restricted) < tol
    assert abs(layer.quadratic(v) - float(0.5 * v @ F @ v)) / float(0.5 * v @ F @ v) < tol


def test_dual_and_primal_agree():
    G = torch.randn(9, 20, dtype=torch.float64)
    spec = dict(block_size=0, damp=1e-3, compute_dtype="float64")
    dual = LayerFisher("w", G, FisherSpec(form="dual", **spec), torch.device("cpu"))
    primal = LayerFisher("w", G, FisherSpec(form="primal", **spec), torch.device("cpu"))
    v = torch.randn(20, dtype=torch.float64)
    assert torch.allclose(dual.diag_inverse(), primal.diag_inverse(), rtol=1e-9)
    assert torch.allclose(dual.inverse_times(v), primal.inverse_times(v), rtol=1e-9)


def test_relative_damping_scales_with_mean_diagonal():
    G = 10 * torch.randn(5, 8, dtype=torch.float64)
    layer = LayerFisher("w", G, FisherSpec(damp=0.1, damp_mode="relative", compute_dtype="float64"), torch.device("cpu"))
    expected = 0.1 * float((G**2).sum() / (5 * 8))
    assert abs(float(layer.damp[0]) - expected) < 1e-9


def test_cholesky_failure_escalates_damping_with_warning_then_errors():
    indefinite = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64)).unsqueeze(0)
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        _, damp = _cholesky_with_escalation(indefinite, "layerX", lambda m, extra: m + extra.view(-1, 1, 1) * eye, torch.tensor([0.1], dtype=torch.float64))
    assert float(damp[0]) > 0.5
    hopeless = torch.diag(torch.tensor([1.0, -1e9], dtype=torch.float64)).unsqueeze(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FisherError, match="layerY"):
            _cholesky_with_escalation(hopeless, "layerY", lambda m, extra: m + extra.view(-1, 1, 1) * eye, torch.tensor([1e-5], dtype=torch.float64))


def test_non_finite_gradients_name_the_layer():
    G = torch.randn(4, 6)
    G[1, 2] = float("nan")
    with pytest.raises(FisherError, match="conv7.weight"):
        LayerFisher("conv7.weight", G, FisherSpec(), torch.device("cpu"))


def test_bad_damping_is_rejected():
    from reflowbench.errors import ConfigError

    with pytest.raises(ConfigError, match="positive"):
        FisherSpec(damp=0.0).validate()


def _images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


class _ConvZoo(nn.Module):
    """Strided, depthwise, grouped, dilated convs and a linear layer: every case the hook engine unfolds."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, groups=4),
            nn.Conv2d(4, 6, 1, groups=2, bias=False),
            nn.Conv2d(6, 6, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.mark.parametrize("engine", ["vmap", "hooks"])
@pytest.mark.parametrize("minibatch", [1, 3])
@pytest.mark.parametrize("zoo", [False, True])
def test_gradient_rows_match_autograd_loop(tiny_model, minibatch, engine, zoo):
    model = _ConvZoo().double().eval() if zoo else tiny_model
    if zoo:
        model.features[1].running_var.uniform_(0.5, 2.0)
    targets = select_targets(model)
    x, y = _images(12)
    x = x.to(next(model.parameters()).dtype)
    masks = {t.param_name: torch.rand(t.weight.shape) > 0.3 for t in targets}
    spec = GradientSpec(num_grads=4, minibatch=minibatch, chunk_images=5, dtype="float64", engine=engine)
    batches = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 12, 5)]
    G = collect_gradients(model, targets, iter(batches), spec, masks=masks)
    for row in range(4):
        chunk = slice(row * minibatch, (row + 1) * minibatch)
        model.zero_grad()
        nn.functional.cross_entropy(model(x[chunk]), y[chunk]).backward()
        for t in targets:
            expected = (t.weight.grad * masks[t.param_name]).flatten().double()
            assert torch.allclose(G.rows[t.param_name][row], expected, atol=1e-6), (t.param_name, row)


def test_gradient_memory_budget_error_names_the_knobs(tiny_model):
    targets = select_targets(tiny_model)
    with pytest.raises(MemoryBudgetError, match=r"needs .* GiB, over the memory budget .*num-grads"):
        collect_gradients(tiny_model, targets, iter([_images(4)]), GradientSpec(num_grads=10**7), budget_gb=0.5)


def test_non_finite_inputs_give_a_fisher_error(tiny_model):
    targets = select_targets(tiny_model)
    x, y = _images(4)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(FisherError, match="non-finite gradients in layer"):
        collect_gradients(tiny_model, targets, iter([(x, y)]), GradientSpec(num_grads=4))


def test_block_fisher_over_all_layers(tiny_model):
    targets = select_targets(tiny_model)
    x, y = _images(16)
    G = collect_gradients(tiny_model, targets, iter([(x, y)]), GradientSpec(num_grads=16, dtype="float64"))
    fisher = BlockFisher(G, FisherSpec(block_size=20, compute_dtype="float64"), torch.device("cpu"))
    for t in targets:
        F = dense_block_fisher(G.rows[t.param_name], 20, 1e-5)
        assert torch.allclose(fisher[t.param_name].diag_inverse(), torch.linalg.inv(F).diagonal(), rtol=1e-6)
    tight = BlockFisher(G, FisherSpec(block_size=0), torch.device("cpu"), budget_gb=1e-9)  # products and restricted solves need no factor
    assert tight.restricted_solve(torch.ones(tight.numel, dtype=torch.bool), torch.ones(tight.numel)).shape == (tight.numel,)
    with pytest.raises(MemoryBudgetError, match="block-size"):  # the factors are checked against the budget before the first is made
        tight.diag_inverse()


def test_dual_diagonal_is_clamped_to_its_lower_bound_with_a_warning():
    """Cancellation in (1 - sum z^2) / lam can cross the exact bound [F^-1]_qq >= 1 / F_qq (even to <= 0):
    such entries become the bound, with a warning; entries above it are untouched."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 20, generator=generator, dtype=torch.float64)
    layer = BlockFisher(GradientMatrix({"w": rows}, 6, 1), FisherSpec(damp=1e-3, compute_dtype="float64"), torch.device("cpu"))["w"]
    exact = layer.to_blocks(layer.diag_inverse())
    lower = 1.0 / (1e-3 + rows.pow(2).sum(0) / 6)
    assert bool((layer.from_blocks(exact) >= lower).all())  # the bound holds for the exact values ...
    broken = exact.clone()
    broken[0, :3] = torch.tensor([-5.0, 0.0, 1e-9], dtype=torch.float64)  # ... cancellation-like garbage
    with pytest.warns(RuntimeWarning, match="3 entries of diag.*fell below their lower bound"):
        fixed = layer.from_blocks(layer._clamp_to_lower_bound(broken))
    assert torch.allclose(fixed[:3], lower[:3]) and torch.equal(fixed[3:], layer.from_blocks(exact)[3:])


def test_gradient_collection_leaves_every_weight_as_it_was():
    """The collection lays conv weights out channels-last while it runs (faster on CPU); afterwards each parameter
    holds its original tensor (same storage and strides), so aliases taken before still alias the model's weights."""
    model = _ConvZoo().eval()
    before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    aliases = {name: p.detach() for name, p in model.named_parameters()}
    collect_gradients(model, select_targets(model), iter([_images(6)]), GradientSpec(num_grads=2, minibatch=3))
    assert {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()} == before
    with torch.no_grad():
        model.features[3].weight.add_(1.0)
    assert torch.equal(aliases["features.3.weight"], model.features[3].weight)


def test_channels_last_weights_relays_only_convolution_weights_and_restores_them():
    model = _ConvZoo().eval()
    x, _ = _images(3)
    with torch.no_grad():
        expected = model(x)
    originals = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    with channels_last_weights(model) as converted:
        assert converted
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        assert (model.fc.weight.data_ptr(), model.fc.weight.stride()) == originals["fc.weight"]
        with torch.no_grad():
            assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-6)  # another summation order
    assert {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()} == originals


def test_channels_last_copy_bytes_counts_what_the_block_copies():
    model = _ConvZoo()
    # the 3x3 kernels with several input channels need a copy; (K, 1, k, k) and 1x1 kernels are both layouts at once
    expected = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2:] != (1, 1))
    assert channels_last_copy_bytes(model) == expected > 0
    with channels_last_weights(model):
        assert channels_last_copy_bytes(model) == 0


class _ViewsItsOwn4dParameter(nn.Module):
    """A custom layer whose 4-D parameter is viewed in forward (a channels-last tensor would refuse the view)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.mix = nn.Parameter(torch.randn(3, 3, 1, 1))

    def forward(self, x):
        y = self.conv(torch.cat([x, x], dim=1))
        return torch.einsum("oc,bchw->bohw", self.mix.view(3, 3), y)


def test_channels_last_weights_leaves_other_4d_parameters_alone():
    model = _ViewsItsOwn4dParameter()
    model.mix.data = torch.randn(3, 3, 2, 2)[:, :, :1, :1]  # a 4-D parameter that is not contiguous in either layout
    x, _ = _images(2)
    with channels_last_weights(model) as converted:
        assert converted and model.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not model.mix.is_contiguous(memory_format=torch.channels_last)
    assert channels_last_copy_bytes(model) == 4 * model.conv.weight.numel()
    model.mix.data = torch.randn(3, 3, 1, 1)
    with channels_last_weights(model):
        model(x)  # the custom view still works
