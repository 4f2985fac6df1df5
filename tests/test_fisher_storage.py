"""How the curvature backend holds G: in its storage dtype (bfloat16/float16), pre-padded at collection (no
padded copy), converted one column chunk at a time, factorised one group of blocks at a time — each path
against the plain float path on the same values, and the memory estimate against what is allocated."""

import pytest
import torch

import reflowbench.hessian.block_fisher as block_fisher
from reflowbench.errors import MemoryBudgetError
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix, GradientSpec, LayerFisher, NetworkFisher, collect_gradients
from reflowbench.hessian.gradients import gradient_bytes, padded_width
from reflowbench.pruners import select_targets

CPU = torch.device("cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def _operations(fisher, d: int, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    support = torch.rand(d, generator=generator) < 0.6
    return {
        "diag": fisher.diag_inverse(),
        "inverse": fisher.inverse_times(v),
        "restricted": fisher.restricted_solve(support, v),
        "fisher": fisher.fisher_times(v),
        "quadratic": torch.tensor(fisher.quadratic(v)),
        "eig": torch.tensor(fisher.largest_eigenvalue()),
    }


def _assert_same(a: dict, b: dict, tol: float) -> None:
    for key in a:
        assert _rel(a[key], b[key]) < tol, key


@pytest.mark.parametrize("n, d, block", [(6, 40, 0), (6, 40, 15), (30, 40, 8)])  # dual whole layer, dual blocks (padded), primal blocks
@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16])
def test_half_precision_storage_equals_the_float_path_on_the_same_values(n, d, block, storage):
    G = torch.randn(n, d, generator=torch.Generator().manual_seed(d + n), dtype=torch.float64).to(storage)
    spec = FisherSpec(block_size=block, damp=0.05, compute_dtype="float64")
    stored = LayerFisher("w", G, spec, CPU)
    upcast = LayerFisher("w", G.double(), spec, CPU)
    assert stored.grads.dtype == storage  # kept as stored: no full-precision copy of the layer
    _assert_same(_operations(stored, d), _operations(upcast, d), 1e-10)


def test_chunked_and_grouped_paths_equal_the_direct_path(monkeypatch):
    G = torch.randn(5, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = FisherSpec(block_size=12, damp=0.02, compute_dtype="float64")
    direct = _operations(LayerFisher("w", G, spec, CPU), 64)
    monkeypatch.setattr(block_fisher, "CHUNK_ELEMENTS", 7)  # a few columns per chunk
    monkeypatch.setattr(block_fisher, "FACTOR_GROUP_ELEMENTS", 30)  # one 5 x 5 block per group
    chunked = LayerFisher("w", G.float(), spec, CPU)  # float32 storage under a float64 compute dtype: the chunked path
    assert not chunked._direct
    _assert_same(_operations(chunked, 64), direct, 1e-6)


def test_network_fisher_on_bfloat16_storage_equals_the_float_path():
    rows = {"a": torch.randn(7, 30, dtype=torch.float64).to(torch.bfloat16), "b": torch.randn(7, 11, dtype=torch.float64).to(torch.bfloat16)}
    spec = FisherSpec(damp=0.03, compute_dtype="float64")
    stored = NetworkFisher(GradientMatrix(rows, 7, 1), spec, CPU)
    upcast = NetworkFisher(GradientMatrix({k: v.double() for k, v in rows.items()}, 7, 1), spec, CPU)
    assert all(r.dtype == torch.bfloat16 for r in stored.rows.values())
    _assert_same(_operations(stored, 41), _operations(upcast, 41), 1e-10)


def _images(n: int):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator))]


def test_gradients_collected_pre_padded_are_viewed_without_a_copy(tiny_model):
    targets = select_targets(tiny_model)
    block = 7  # divides none of the tiny model's layers
    padded = collect_gradients(tiny_model, targets, iter(_images(16)), GradientSpec(num_grads=16, pad_to=block))
    plain = collect_gradients(tiny_model, targets, iter(_images(16)), GradientSpec(num_grads=16))
    assert padded.nbytes() == gradient_bytes(targets, GradientSpec(num_grads=16, pad_to=block))
    assert all(padded.storage[t.param_name].shape[1] == padded_width(t.numel, block) for t in targets if t.numel % block)
    spec = FisherSpec(block_size=block, damp=0.01, compute_dtype="float32")
    viewed, copied = BlockFisher(padded, spec, CPU), BlockFisher(plain, spec, CPU)
    assert viewed.copied_bytes == 0 and copied.copied_bytes > 0
    for layer in viewed:
        assert layer.grads.data_ptr() == padded.storage.get(layer.name, padded.rows[layer.name]).data_ptr()
    d = viewed.numel
    _assert_same(_operations(viewed, d), _operations(copied, d), 1e-6)


def test_the_gradient_pass_computes_fewer_rows_a_call_for_large_activations_with_the_same_gradients(tiny_model, monkeypatch):
    import reflowbench.hessian.gradients as gradients

    targets = select_targets(tiny_model)
    spec = GradientSpec(num_grads=16, chunk_images=16)
    per_image = gradients.image_activation_bytes(tiny_model, _images(16)[0][0])
    assert per_image > 0
    assert gradients.groups_per_call(targets, spec, per_image) == 16  # the tiny model's activations are far under the cap
    monkeypatch.setattr(gradients, "CHUNK_ACTIVATION_BYTES", 3 * per_image)
    assert gradients.groups_per_call(targets, spec, per_image) == 3
    assert gradients.groups_per_call(targets, GradientSpec(num_grads=4, minibatch=4, chunk_images=16), per_image) == 1  # at least one group
    capped = collect_gradients(tiny_model, targets, iter(_images(16)), spec)
    monkeypatch.setattr(gradients, "CHUNK_ACTIVATION_BYTES", 1 << 40)
    uncapped = collect_gradients(tiny_model, targets, iter(_images(16)), spec)
    for t in targets:
        torch.testing.assert_close(capped.rows[t.param_name], uncapped.rows[t.param_name], rtol=1e-5, atol=1e-7)


def test_a_mini_batch_group_too_large_for_one_pass_is_computed_in_parts_with_the_same_row(tiny_model, monkeypatch):
    """m = 8 images a row whose activations exceed the cap: each row is the size-weighted mean of 3 + 3 + 2 image parts,
    equal to the row of one pass (the gradient of the mean loss over the 8)."""
    import reflowbench.hessian.gradients as gradients

    targets = select_targets(tiny_model)
    spec = GradientSpec(num_grads=4, minibatch=8, chunk_images=32)
    per_image = gradients.image_activation_bytes(tiny_model.eval(), _images(16)[0][0])
    whole = collect_gradients(tiny_model, targets, iter(_images(32)), spec)
    monkeypatch.setattr(gradients, "CHUNK_ACTIVATION_BYTES", 3 * per_image)
    assert gradients.images_per_pass(spec, per_image) == 3 and gradients.groups_per_call(targets, spec, per_image) == 1
    parts = collect_gradients(tiny_model, targets, iter(_images(32)), spec)
    for t in targets:
        torch.testing.assert_close(parts.rows[t.param_name], whole.rows[t.param_name], rtol=1e-5, atol=1e-7)


def test_the_gradient_budget_check_counts_the_calls_activations_at_the_rows_per_call_it_will_use(tiny_model, monkeypatch):
    """The estimate checked before G is allocated is G + one call's gradients (three times: the engine's output, the
    masked copy, a part-sum) + its images' activations, for the
    rows per call the activation cap allows (not the uncapped count, which over-states it), + the channels-last copy of
    the convolution weights the pass makes."""
    import reflowbench.hessian.gradients as gradients
    from reflowbench.utils.memory_format import channels_last_copy_bytes

    targets = select_targets(tiny_model)
    spec = GradientSpec(num_grads=16, chunk_images=16)
    per_image = gradients.image_activation_bytes(tiny_model.eval(), _images(16)[0][0])
    monkeypatch.setattr(gradients, "CHUNK_ACTIVATION_BYTES", 3 * per_image)  # 3 rows a call, not 16
    checked = []
    monkeypatch.setattr(gradients, "check_budget", lambda need, *args: checked.append(need))
    collect_gradients(tiny_model, targets, iter(_images(16)), spec)
    assert channels_last_copy_bytes(tiny_model) > 0
    assert checked == [gradient_bytes(targets, spec) + 3 * (3 * targets.num_weights * 4 + per_image) + channels_last_copy_bytes(tiny_model)]
    assert gradients.chunk_gradient_bytes(targets, spec, per_image) < gradients.chunk_gradient_bytes(targets, spec)


def test_the_activation_probe_counts_what_backward_saves_but_not_the_weights():
    import reflowbench.hessian.gradients as gradients

    model = torch.nn.Sequential(torch.nn.Linear(1000, 4), torch.nn.ReLU())  # 16 kB of weights, tiny activations
    x = torch.randn(3, 1000)
    counted = gradients.image_activation_bytes(model, x)
    outputs = 2 * 4 * 4  # the Linear's and the ReLU's outputs of one image, float32
    saved_input = 1000 * 4  # the Linear saves its input for the weight gradient
    assert counted >= outputs + saved_input
    assert counted < outputs + saved_input + 1000 * 4 * 4  # the weight the Linear saves is not counted
    assert model[0].weight.grad is None and model.training


def test_factor_budget_counts_the_padded_copies_and_names_the_block_size(tiny_model):
    targets = select_targets(tiny_model)
    plain = collect_gradients(tiny_model, targets, iter(_images(16)), GradientSpec(num_grads=16))
    spec = FisherSpec(block_size=7, damp=0.01)
    with pytest.raises(MemoryBudgetError, match="block-size"):
        BlockFisher(plain, spec, CPU, budget_gb=1e-7)


def test_factors_are_kept_in_the_compute_dtype_and_the_estimate_counts_them():
    G = torch.randn(20, 300, dtype=torch.float32)
    fisher = BlockFisher(GradientMatrix({"w": G}, 20, 1), FisherSpec(block_size=50, damp=0.1), CPU)
    layer = fisher["w"]
    layer.diag_inverse()
    assert layer.factor.dtype == torch.float32
    assert layer.factor.numel() * layer.factor.element_size() == layer.factor_bytes()
    assert layer.transient_bytes() > 0


@pytest.mark.parametrize("block_size, form", [(50, "dual"), (10, "primal")])
def test_packed_factors_hold_the_lower_triangles_of_the_block_cholesky_factors(block_size, form):
    """Factors are kept packed (lower triangles only, about half a square): unpacked they are the Cholesky factors of
    K_b = N lam I + G_b G_b^T (dual) or F_b = lam I + G_b^T G_b / N (primal), computed densely here."""
    torch.manual_seed(0)
    n, lam = 20, 0.1
    G = torch.randn(n, 100, dtype=torch.float64)
    fisher = BlockFisher(GradientMatrix({"w": G}, n, 1), FisherSpec(block_size=block_size, damp=lam, compute_dtype="float64"), CPU)
    layer = fisher["w"]
    assert layer.form == form
    side = n if form == "dual" else block_size
    assert layer.factor.shape == (100 // block_size, side * (side + 1) // 2)
    squares = layer.unpacked_factor()
    for b in range(layer.num_blocks):
        g = G[:, b * block_size : (b + 1) * block_size]
        dense = n * lam * torch.eye(n, dtype=G.dtype) + g @ g.T if form == "dual" else lam * torch.eye(side, dtype=G.dtype) + g.T @ g / n
        torch.testing.assert_close(squares[b], torch.linalg.cholesky(dense), rtol=1e-10, atol=1e-10)
        assert bool((squares[b].triu(1) == 0).all())


def test_per_sample_gradients_by_default_never_import_torch_dynamo():
    """The default engine computes per-sample rows with the hooks, not torch.func (whose first grad call imports
    torch._dynamo: ~160 MiB resident for the rest of the process); same rows as the vmap engine. Seeded and in float64:
    in float32 an activation near a ReLU kink can flip between the engines (a 4e-4 row difference on one unseeded draw
    of three), which made this test flaky."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from reflowbench.hessian import GradientSpec, collect_gradients\n"
        "from reflowbench.models import build_model\n"
        "from reflowbench.pruners import select_targets\n"
        "torch.manual_seed(0)\n"
        "model = build_model('resnet20').double().eval()\n"
        "targets = select_targets(model)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "batch = (torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g))\n"
        "hooks = collect_gradients(model, targets, iter([batch]), GradientSpec(num_grads=6))\n"
        "assert 'torch._dynamo' not in sys.modules, 'the default gradient engine imported torch._dynamo'\n"
        "vmap = collect_gradients(model, targets, iter([batch]), GradientSpec(num_grads=6, engine='vmap'))\n"
        "worst = max(float((hooks.rows[k] - vmap.rows[k]).norm() / vmap.rows[k].norm()) for k in hooks.rows)\n"
        "assert worst < 1e-4, worst\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("numel, num_grads, block_size, form", [(40, 8, 16, "auto"), (40, 24, 16, "auto"), (40, 8, 0, "primal"), (33, 8, 10, "dual")])
def test_the_memory_plan_counts_the_factors_the_fisher_keeps(numel, num_grads, block_size, form):
    """One formula for the packed factors: the pruners' working set (the cost plan) and the factors a LayerFisher holds."""
    from reflowbench.hessian.block_fisher import FisherSpec, LayerFisher, packed_factor_bytes

    spec = FisherSpec(block_size=block_size, form=form)
    fisher = LayerFisher("layer", torch.randn(num_grads, numel), spec, torch.device("cpu"))
    held = fisher.factor_bytes()
    factor = fisher.factor  # factorised: the packed factors it keeps
    assert packed_factor_bytes(numel, num_grads, spec) == held == factor.numel() * factor.element_size()
