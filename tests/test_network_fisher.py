"""The whole-network Fisher and the flat whole-target operations of the block Fisher, against dense brute force."""

import pytest
import torch

from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix, NetworkFisher

CPU = torch.device("cpu")


def _gradients(n: int, sizes, seed: int = 0, uncoupled: bool = False) -> GradientMatrix:
    """Random rows per layer; ``uncoupled``: layer l's gradients live on its own rows only (G_l^T G_m = 0)."""
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for i, d in enumerate(sizes):
        g = torch.randn(n, d, generator=generator, dtype=torch.float64)
        if uncoupled:
            own = torch.zeros(n, 1, dtype=torch.float64)
            own[i * (n // len(sizes)) : (i + 1) * (n // len(sizes))] = 1.0
            g = g * own
        rows[f"layer{i}"] = g
    return GradientMatrix(rows, n, 1)


def _dense(gradients: GradientMatrix, lam: float) -> torch.Tensor:
    G = torch.cat(list(gradients.rows.values()), dim=1)
    return lam * torch.eye(G.shape[1], dtype=torch.float64) + G.T @ G / G.shape[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("n, sizes", [(5, (7, 11, 4)), (40, (7, 11, 4))])  # N < p and N > p
def test_network_operations_match_brute_force(n, sizes):
    gradients = _gradients(n, sizes)
    lam = 0.03
    fisher = NetworkFisher(gradients, FisherSpec(damp=lam, compute_dtype="float64"), CPU)
    F = _dense(gradients, lam)
    F_inv = torch.linalg.inv(F)
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(F.shape[0], generator=generator, dtype=torch.float64)
    support = torch.rand(F.shape[0], generator=generator) < 0.5
    expected = torch.zeros_like(v)
    expected[support] = torch.linalg.solve(F[support][:, support], v[support])
    assert _rel(fisher.fisher_times(v), F @ v) < 1e-10
    assert _rel(fisher.inverse_times(v), F_inv @ v) < 1e-8
    assert _rel(fisher.diag_inverse(), F_inv.diagonal()) < 1e-8
    assert _rel(fisher.restricted_solve(support, v), expected) < 1e-8
    assert abs(fisher.quadratic(v) - float(0.5 * v @ F @ v)) < 1e-9 * float(v @ F @ v)
    assert fisher.largest_eigenvalue() == pytest.approx(float(torch.linalg.eigvalsh(F).max()), rel=1e-4)  # power iteration, from below


def test_network_fisher_keeps_cross_layer_terms_that_the_block_fisher_drops():
    gradients = _gradients(6, (5, 8))
    network = NetworkFisher(gradients, FisherSpec(damp=0.01, compute_dtype="float64"), CPU)
    block = BlockFisher(gradients, FisherSpec(damp=0.01, compute_dtype="float64"), CPU)
    v = torch.randn(13, dtype=torch.float64)
    assert _rel(network.fisher_times(v), _dense(gradients, 0.01) @ v) < 1e-10
    assert _rel(block.fisher_times(v), network.fisher_times(v)) > 1e-3


def test_block_and_network_forms_agree_without_cross_layer_coupling():
    gradients = _gradients(12, (5, 8, 3), uncoupled=True)
    spec = FisherSpec(damp=0.02, compute_dtype="float64")
    network, block = NetworkFisher(gradients, spec, CPU), BlockFisher(gradients, spec, CPU)
    v = torch.randn(16, dtype=torch.float64)
    support = torch.rand(16) < 0.6
    for op in ("fisher_times", "inverse_times"):
        assert _rel(getattr(block, op)(v), getattr(network, op)(v)) < 1e-9
    assert _rel(block.diag_inverse(), network.diag_inverse()) < 1e-9
    assert _rel(block.restricted_solve(support, v), network.restricted_solve(support, v)) < 1e-9
    assert block.quadratic(v) == pytest.approx(network.quadratic(v), rel=1e-10)
    assert block.largest_eigenvalue() == pytest.approx(network.largest_eigenvalue(), rel=1e-4)


@pytest.mark.parametrize("block_size", [0, 4])
def test_block_fisher_flat_operations_match_brute_force(block_size):
    gradients = _gradients(9, (7, 10))
    fisher = BlockFisher(gradients, FisherSpec(damp=0.05, block_size=block_size, compute_dtype="float64"), CPU)
    F = torch.block_diag(*[torch.linalg.inv(torch.linalg.inv(m)) for m in _blocks_dense(gradients, 0.05, block_size)])
    v = torch.randn(17, dtype=torch.float64)
    support = torch.rand(17) < 0.5
    expected = torch.zeros_like(v)
    expected[support] = torch.linalg.solve(F[support][:, support], v[support])
    assert _rel(fisher.fisher_times(v), F @ v) < 1e-10
    assert _rel(fisher.inverse_times(v), torch.linalg.solve(F, v)) < 1e-8
    assert _rel(fisher.restricted_solve(support, v), expected) < 1e-8
    assert fisher.quadratic(v) == pytest.approx(float(0.5 * v @ F @ v), rel=1e-10)
    assert fisher.largest_eigenvalue() == pytest.approx(float(torch.linalg.eigvalsh(F).max()), rel=1e-4)  # power iteration, from below


def _blocks_dense(gradients: GradientMatrix, lam: float, block_size: int):
    out = []
    for rows in gradients.rows.values():
        d = rows.shape[1]
        b = d if block_size == 0 or block_size >= d else block_size
        for start in range(0, d, b):
            g = rows[:, start : start + b]
            out.append(lam * torch.eye(g.shape[1], dtype=torch.float64) + g.T @ g / rows.shape[0])
    return out


def test_network_fisher_rejects_non_finite_gradients():
    gradients = _gradients(4, (3, 3))
    gradients.rows["layer1"][0, 0] = float("nan")
    with pytest.raises(Exception, match="layer1.*non-finite"):
        NetworkFisher(gradients, FisherSpec(compute_dtype="float64"), CPU)


def _batched_form(form: str, gradients: GradientMatrix, spec: FisherSpec):
    """The curvature form ``form`` on ``gradients`` and the block size its dense F is cut with (0 = whole layers, None = not block-diagonal)."""
    from dataclasses import replace

    from reflowbench.hessian.layer_group_streaming import StreamedBlockFisher

    if form == "network":
        return NetworkFisher(gradients, spec, CPU), None
    if form == "block":
        return BlockFisher(gradients, spec, CPU), 0
    if form == "block-padded":  # blocks of 4: layer sizes 7 and 11 end in a padded block
        return BlockFisher(gradients, replace(spec, block_size=4), CPU), 4
    names = list(gradients.rows)

    def group_fisher(group):
        return BlockFisher(GradientMatrix({n: gradients.rows[n] for n in group}, gradients.num_grads, 1), spec, CPU)

    sizes = [gradients.rows[n].shape[1] for n in names]
    return StreamedBlockFisher(names, sizes, [names[:2], names[2:]], group_fisher, torch.float64, CPU), 0


@pytest.mark.parametrize("form", ["network", "block", "block-padded", "streamed"])
def test_batched_fisher_products_match_the_dense_fisher(form):
    """fisher_products and quadratic_products (every form of the Curvature protocol): F v_j and v_j^T F v_j for several
    rows at once, in the passes over G one vector takes, against the explicitly formed F."""
    gradients = _gradients(9, (7, 11, 4))
    fisher, block = _batched_form(form, gradients, FisherSpec(damp=0.02, compute_dtype="float64"))
    F = _dense(gradients, 0.02)
    if block is not None:
        F = torch.block_diag(*_blocks_dense(gradients, 0.02, block))
    vectors = torch.randn(3, 22, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products, twice_q = fisher.fisher_products(vectors), fisher.quadratic_products(vectors)
    assert products.shape == (3, 22) and twice_q.shape == (3,)
    assert _rel(products, (F @ vectors.T).T) < 1e-12
    assert _rel(twice_q, torch.einsum("mp,pq,mq->m", vectors, F, vectors)) < 1e-12
    assert _rel(products[1], fisher.fisher_times(vectors[1])) < 1e-12  # one row of the batch = the single product


def test_restricted_solves_reuse_the_last_two_dual_factors(monkeypatch):
    """A solver backsolves its support and the magnitude one; the joint update on whichever won builds no K_S of its
    own. The last two factors are kept, and every solve still equals the brute-force one."""
    gradients = _gradients(6, (9, 7))
    fisher = NetworkFisher(gradients, FisherSpec(damp=0.03, compute_dtype="float64"), CPU)
    F = _dense(gradients, 0.03)
    built = []
    factorise = fisher._factorise
    monkeypatch.setattr(fisher, "_factorise", lambda gram: built.append(gram) or factorise(gram))
    generator = torch.Generator().manual_seed(3)
    v = torch.randn(16, generator=generator, dtype=torch.float64)
    first, second, third = (torch.rand(16, generator=generator) < share for share in (0.5, 0.7, 0.6))
    for support in (first, first.clone(), second, first, third, second):
        expected = torch.zeros_like(v)
        expected[support] = torch.linalg.solve(F[support][:, support], v[support])
        assert _rel(fisher.restricted_solve(support, v), expected) < 1e-8
    assert len(built) == 4  # first, second, third, then second again (evicted by third: two are kept)
    fisher.inverse_times(v)
    fisher.inverse_times(v)
    assert len(built) == 5  # all weights: one K, kept


@pytest.mark.parametrize("storage", ["float64", "bfloat16"])
def test_a_support_near_a_kept_one_corrects_its_gram_instead_of_a_pass_over_g(monkeypatch, storage):
    """IHT's support differs from the magnitude one in a few weights: its Gram G_S G_S^T is the kept one plus the
    added columns' products minus the removed ones' (no pass over all of G), and its solves equal brute force; a
    support that differs in more than GRAM_UPDATE_FRACTION of the weights is built from G."""
    from reflowbench.hessian.network_fisher import GRAM_UPDATE_FRACTION

    gradients = _gradients(6, (30, 25, 45))
    if storage == "bfloat16":  # stored low, the corrections gather and upcast columns like the pass does
        gradients = GradientMatrix({k: v.to(torch.bfloat16) for k, v in gradients.rows.items()}, 6, 1)
    fisher = NetworkFisher(gradients, FisherSpec(damp=0.03, compute_dtype="float64"), CPU)
    F = _dense(GradientMatrix({k: v.double() for k, v in gradients.rows.items()}, 6, 1), 0.03)
    passes = []
    build = fisher._build_gram
    monkeypatch.setattr(fisher, "_build_gram", lambda support: passes.append(support) or build(support))
    generator = torch.Generator().manual_seed(4)
    v = torch.randn(100, generator=generator, dtype=torch.float64)
    magnitude = torch.rand(100, generator=generator) < 0.5
    moved = magnitude.clone()
    moved[[3, 40, 41, 99]] = ~moved[[3, 40, 41, 99]]  # columns in the first, second and last layer, in and out
    far = torch.rand(100, generator=generator) < 0.5
    assert int((far ^ moved).sum()) > GRAM_UPDATE_FRACTION * 100 and int((far ^ magnitude).sum()) > GRAM_UPDATE_FRACTION * 100
    for support in (magnitude, moved, far):
        expected = torch.zeros_like(v)
        expected[support] = torch.linalg.solve(F[support][:, support], v[support])
        assert _rel(fisher.restricted_solve(support, v), expected) < 1e-10
    assert len(passes) == 2 and torch.equal(passes[0], magnitude) and torch.equal(passes[1], far)
    corrected = fisher._recent[1]  # moved's system, made from magnitude's
    assert _rel(corrected.gram, build(moved)) < 1e-12


def test_power_iteration_stops_once_settled_and_keeps_going_while_not():
    from reflowbench.hessian.block_fisher import power_iteration

    calls = []

    def apply_of(matrix):
        def apply(v):
            calls.append(1)
            return matrix @ v

        return apply

    fast = torch.diag(torch.tensor([10.0, 1.0, 0.5], dtype=torch.float64)).unsqueeze(0)  # gap 10: settles in a few steps
    value = power_iteration(apply_of(fast), (1, 3, 1), 50, torch.empty(0, dtype=torch.float64))
    assert float(value[0]) == pytest.approx(10.0, rel=1e-8) and len(calls) < 20
    calls.clear()
    slow = torch.diag(torch.tensor([1.0, 0.999, 0.5], dtype=torch.float64)).unsqueeze(0)  # gap 1.001: never settles in 50
    power_iteration(apply_of(slow), (1, 3, 1), 50, torch.empty(0, dtype=torch.float64))
    assert len(calls) == 50
