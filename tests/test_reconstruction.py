"""The layer-wise reconstruction backend against dense brute force on tiny layers: the unfolding, H, the exact re-fit,
ExactOBS's greedy order, SparseGPT's sweep, Wanda's scores and the exact-k splits."""

import itertools

import pytest
import torch
from torch import nn

from reflowbench.errors import ConfigError
from reflowbench.reconstruction import (
    InputHessian,
    LayerGeometry,
    collect_hessians,
    counts_from_traces,
    damped,
    greedy_obs,
    input_columns,
    inverse_upper,
    lowest_per_row,
    prefix_keep,
    refit_rows,
    row_counts,
    sweep,
)


def _spd(d, groups=1, n=None, seed=0):
    """A random positive definite H = X X^T / n (n > d) per group, float64."""
    g = torch.Generator().manual_seed(seed)
    n = n or 4 * d
    x = torch.randn(groups, d, n, generator=g, dtype=torch.float64)
    x[:, 0] += 0.5 * x[:, 1]  # correlated columns, so updates matter
    return x @ x.transpose(1, 2) / n


def _error(h, w, v):
    """(v - w)^T H (v - w) per row: h (d, d), w/v (R, d)."""
    diff = v - w
    return torch.einsum("rd,de,re->r", diff, h, diff)


def _ls_on_support(h, w, keep):
    """Brute force: minimise (v - w)^T H (v - w) with v = 0 off keep, via the normal equations on the support."""
    v = torch.zeros_like(w)
    s = keep.nonzero().flatten()
    p = (~keep).nonzero().flatten()
    if len(s):
        v[s] = w[s] + torch.linalg.solve(h[s][:, s], h[s][:, p] @ w[p])
    return v


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3, padding=1, bias=False),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(4, 6, (3, 1), padding=(1, 0), dilation=(2, 1), bias=False, groups=2),
        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),  # depthwise
        nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect", bias=False),
    ],
    ids=["plain", "stride", "grouped-dilated", "depthwise", "same-reflect"],
)
def test_unfolded_columns_reproduce_the_convolution(conv):
    x = torch.randn(3, conv.in_channels, 7, 7)
    geometry = LayerGeometry.of(conv)
    columns = torch.cat(list(input_columns(conv, x)), dim=2)  # (G, d, n)
    rows = geometry.rows_of(conv.weight.detach())
    out = torch.bmm(rows, columns)  # (G, R, n) with n = images * positions, image-major
    expected = conv(x).detach()  # (B, C_out, H, W)
    b, c, hh, ww = expected.shape
    expected = expected.view(b, geometry.groups, geometry.rows, hh * ww).permute(1, 2, 0, 3).reshape(geometry.groups, geometry.rows, -1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_input_hessian_is_the_mean_outer_product_over_pieces(monkeypatch):
    import reflowbench.reconstruction.layer_inputs as li

    linear = nn.Linear(5, 2)
    x = torch.randn(4, 3, 5)
    monkeypatch.setattr(li, "UNFOLD_ELEMENTS", 10)  # many pieces
    hessian = InputHessian(linear, torch.device("cpu"))
    hessian.add(x)
    flat = x.reshape(-1, 5).double()
    assert torch.allclose(hessian.matrix()[0], flat.t() @ flat / 12)
    diag_only = InputHessian(linear, torch.device("cpu"), full=False)
    diag_only.add(x)
    assert torch.allclose(diag_only.diagonal(), hessian.diagonal())


def test_refit_is_exact_least_squares_on_each_rows_support():
    h = _spd(7, groups=2)
    rows = torch.randn(2, 3, 7, dtype=torch.float64)
    keep = torch.rand(2, 3, 7) > 0.5
    keep[0, 0] = False  # a row with nothing kept
    got = refit_rows(rows, h, keep)
    for gi, r in itertools.product(range(2), range(3)):
        assert torch.allclose(got[gi, r], _ls_on_support(h[gi], rows[gi, r], keep[gi, r]), atol=1e-10)


@pytest.mark.parametrize("d, lazy", [(6, 32), (13, 4)])  # lazy 4: the downdates applied and the removed columns dropped 3 times
def test_greedy_obs_removes_the_brute_force_best_weight_at_every_step(d, lazy, monkeypatch):
    import reflowbench.reconstruction.obs as obs

    monkeypatch.setattr(obs, "LAZY_STEPS", lazy)
    h = _spd(d, seed=1)[0]
    rows = torch.randn(1, 2, d, dtype=torch.float64)
    order, losses = greedy_obs(rows, torch.linalg.inv(h).unsqueeze(0))
    for r in range(2):
        w = rows[0, r]
        keep = torch.ones(d, dtype=torch.bool)
        previous = 0.0
        for t in range(d - 1):
            errors = {}
            for q in keep.nonzero().flatten().tolist():
                trial = keep.clone()
                trial[q] = False
                errors[q] = float(_error(h, w[None], _ls_on_support(h, w, trial)[None]))
            best = min(errors, key=errors.get)
            assert int(order[0, r, t]) == best
            assert float(losses[0, r, t]) == pytest.approx(errors[best] - previous, rel=1e-7, abs=1e-11)
            keep[best] = False
            previous = errors[best]


@pytest.mark.parametrize("nm, lazy", [((2, 4), 32), ((1, 3), 2)])  # lazy 2: the removed columns dropped between steps
def test_greedy_nm_removes_the_brute_force_best_open_weight_at_every_step(nm, lazy, monkeypatch):
    """ExactOBS's N:M rule: at every step the weight removed is the brute-force best among the groups of M that have
    lost fewer than M - N; the trace leaves exactly N of every group, and a group never loses more."""
    import reflowbench.reconstruction.obs as obs

    monkeypatch.setattr(obs, "LAZY_STEPS", lazy)
    n, m = nm
    d = 3 * m
    h = _spd(d, seed=4)[0]
    rows = torch.randn(1, 2, d, dtype=torch.float64)
    order, _ = greedy_obs(rows, torch.linalg.inv(h).unsqueeze(0), nm=nm)
    assert order.shape == (1, 2, d // m * (m - n))
    for r in range(2):
        w = rows[0, r]
        keep = torch.ones(d, dtype=torch.bool)
        for t in range(order.shape[2]):
            open_ = [q for q in keep.nonzero().flatten().tolist() if int((~keep[q // m * m : q // m * m + m]).sum()) < m - n]
            errors = {}
            for q in open_:
                trial = keep.clone()
                trial[q] = False
                errors[q] = float(_error(h, w[None], _ls_on_support(h, w, trial)[None]))
            assert int(order[0, r, t]) == min(errors, key=errors.get)
            keep[int(order[0, r, t])] = False
        assert keep.view(-1, m).sum(1).tolist() == [n] * (d // m)
    with pytest.raises(ConfigError, match="multiple of 4"):
        greedy_obs(torch.randn(1, 1, 6, dtype=torch.float64), torch.eye(6, dtype=torch.float64).unsqueeze(0), nm=(2, 4))


def test_greedy_order_matches_exhaustive_search_for_two_removals():
    """Where the greedy pair is optimal among all pairs (checked exhaustively on this H), greedy finds it."""
    h = _spd(5, seed=3)[0]
    w = torch.randn(5, dtype=torch.float64)
    order, _ = greedy_obs(w.view(1, 1, 5), torch.linalg.inv(h).unsqueeze(0), steps=2)
    pairs = {}
    for a, b in itertools.combinations(range(5), 2):
        keep = torch.ones(5, dtype=torch.bool)
        keep[[a, b]] = False
        pairs[(a, b)] = float(_error(h, w[None], _ls_on_support(h, w, keep)[None]))
    greedy_pair = tuple(sorted(order[0, 0].tolist()))
    assert pairs[greedy_pair] <= min(pairs.values()) * 1.5  # greedy is near the exhaustive optimum ...
    best = min(pairs, key=pairs.get)
    if best[0] in greedy_pair or best[1] in greedy_pair:
        assert greedy_pair == best  # ... and equals it when the best pair contains the best single removal


def _sequential_freeze(h, w, keep):
    """Brute-force definition of the sweep with a fixed mask: columns in order; a pruned column is zeroed and the
    columns to its right re-fitted optimally (those to its left are fixed)."""
    w = w.clone()
    d = len(w)
    for j in range(d):
        if keep[j]:
            continue
        right = torch.arange(j + 1, d)
        delta_j = -w[j]
        w[j] = 0.0
        if len(right):
            w[right] -= torch.linalg.solve(h[right][:, right], h[right, j] * delta_j)
    return w


@pytest.mark.parametrize("block_size", [0, 2, 3])
def test_sweep_with_a_fixed_mask_equals_its_brute_force_definition_for_any_block_size(block_size):
    h = _spd(7, seed=2)[0]
    rows = torch.randn(1, 3, 7, dtype=torch.float64)
    keep = torch.rand(1, 3, 7) > 0.4
    upper = inverse_upper(torch.linalg.cholesky(h).unsqueeze(0))
    chosen = lambda block, diag, start, k: keep[:, :, start : start + block.shape[2]]  # noqa: E731
    got, got_keep = sweep(rows, upper, int((~keep).sum()), block_size, chosen)
    assert torch.equal(got_keep, keep)
    for r in range(3):
        assert torch.allclose(got[0, r], _sequential_freeze(h, rows[0, r], keep[0, r]), atol=1e-10)


def test_sweep_equals_the_exact_row_solution_when_pruned_columns_come_first():
    """With every pruned column before every kept one, no kept weight is frozen before an error reaches it: the sweep
    is the exact least-squares re-fit of the row on the same mask."""
    h = _spd(6, seed=4)[0]
    w = torch.randn(1, 1, 6, dtype=torch.float64)
    keep = torch.tensor([False, False, False, True, True, True]).view(1, 1, 6)
    upper = inverse_upper(torch.linalg.cholesky(h).unsqueeze(0))
    got, _ = sweep(w, upper, 3, 0, lambda block, diag, start, k: keep[:, :, start : start + block.shape[2]])
    assert torch.allclose(got, refit_rows(w, h.unsqueeze(0), keep), atol=1e-10)


def test_adaptive_sweep_prunes_exact_counts_per_block_by_obs_error():
    h = _spd(10, groups=2, seed=5)
    rows = torch.randn(2, 4, 10, dtype=torch.float64)
    upper = inverse_upper(torch.linalg.cholesky(h))
    got, keep = sweep(rows, upper, 29, 4)
    assert int((~keep).sum()) == 29
    assert [int((~keep[:, :, s : s + 4]).sum()) for s in (0, 4, 8)] == [12, 11, 6]  # round(29 * e / 10) differences
    assert torch.all(got[~keep] == 0)
    # the first block's mask: the 12 lowest w^2 / U_jj^2 of the untouched weights
    saliency = rows[:, :, :4].pow(2) / upper.diagonal(dim1=1, dim2=2)[:, :4].pow(2).unsqueeze(1)
    assert torch.equal(~keep[:, :, :4], saliency <= saliency.flatten().sort().values[11])


def test_one_block_sweep_error_is_never_below_the_exact_refit():
    h = _spd(8, seed=6)[0]
    rows = torch.randn(1, 5, 8, dtype=torch.float64)
    upper = inverse_upper(torch.linalg.cholesky(h).unsqueeze(0))
    got, keep = sweep(rows, upper, 20, 0)
    exact = refit_rows(rows, h.unsqueeze(0), keep)
    assert torch.all(_error(h, rows[0], exact[0]) <= _error(h, rows[0], got[0]) + 1e-10)


def test_row_splits_and_prefixes_are_exact():
    assert row_counts(10, 4).tolist() == [3, 3, 2, 2]
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.5, 9.0, 0.1]])
    assert lowest_per_row(scores, torch.tensor([1, 2])).tolist() == [[True, False, True], [False, True, False]]
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])
    assert prefix_keep(order, torch.tensor([2, 0]), 3).tolist() == [[False, True, False], [True, True, True]]
    losses = torch.tensor([[1.0, 5.0, 2.0], [3.0, 4.0, 9.0]])  # row 0's running max: 1, 5, 5
    assert counts_from_traces(losses, 3).tolist() == [1, 2]


def test_damping_escalates_on_a_singular_hessian():
    h = torch.zeros(1, 4, 4, dtype=torch.float64)
    h[0, 0, 0] = 1.0
    h[0, 1, 1] = -0.5  # not positive semidefinite: the damping must grow
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        matrix, lower = damped(h, 0.01)
    assert torch.allclose(lower @ lower.transpose(1, 2), matrix)
    silent, _ = damped(torch.zeros(1, 3, 3, dtype=torch.float64), 0.01)  # a layer that never saw an input: H = I
    assert torch.allclose(silent[0], 1.01 * torch.eye(3, dtype=torch.float64))


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_collection_uses_the_network_as_it_is_now():
    model = _Chain()
    images = [torch.randn(5, 4), torch.randn(3, 4)]
    dense = collect_hessians(model, {"a": model.a, "b": model.b}, images, torch.device("cpu"))
    with torch.no_grad():
        model.a.weight[:, :2] = 0.0
    only_b = collect_hessians(model, {"b": model.b}, images, torch.device("cpu"), stop_early=True)["b"]
    hidden = torch.cat([torch.relu(model.a(x)) for x in images]).detach().double()
    assert torch.allclose(only_b.matrix()[0], hidden.t() @ hidden / 8)
    assert not torch.allclose(only_b.matrix(), dense["b"].matrix())
