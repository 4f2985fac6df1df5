"""CHITA against brute force: the backsolve vs the closed-form restricted ridge solution, IHT and the
active set vs enumeration of every support, the network and block forms, the pruner end to end."""

import itertools
import json
import math

import pytest
import torch

from conftest import TinyBNNet
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix, NetworkFisher
from reflowbench.pruners import PruneContext, apply_masks, make_pruner, select_targets, verify_masks
from reflowbench.pruners.chita_solvers import IHTSettings, SparseRidge, solve_active_set, solve_iht, top_k_support
from reflowbench.pruners.hessian_base import HessianPruner

F64 = dict(compute_dtype="float64")
CPU = torch.device("cpu")
# IHT and the active set are local heuristics for an NP-hard problem. Their stated tolerance on the random
# problems below (p = 12, every support enumerated): never worse than magnitude, median within 2x of the
# optimum Q, every case within 5x (measured: IHT median 1.29x, worst 3.01x; active set median 1.72x, worst
# 4.06x; magnitude median 5.0x, worst 26.7x).
OPTIMUM_MEDIAN = 2.0
OPTIMUM_WORST = 5.0


def _problem(sizes=(5, 7), n=6, damp=1e-2, seed=0, correlated=True, uncoupled=False):
    """Random gradients per layer (rows mixed so weights interact), weights, and the explicit whole-network F."""
    generator = torch.Generator().manual_seed(seed)
    p = sum(sizes)
    G = torch.randn(n, p, generator=generator, dtype=torch.float64)
    if correlated:  # columns share directions: some weights can stand in for others
        G = G @ (torch.eye(p, dtype=torch.float64) + 0.8 * torch.randn(p, p, generator=generator, dtype=torch.float64))
    rows, offset = {}, 0
    for k, d in enumerate(sizes):
        g = G[:, offset : offset + d].clone()
        if uncoupled:
            own = torch.zeros(n, 1, dtype=torch.float64)
            own[k * (n // len(sizes)) : (k + 1) * (n // len(sizes))] = 1.0
            g = g * own
        rows[f"l{k}"] = g
        offset += d
    weights = torch.randn(p, generator=generator, dtype=torch.float64)
    full = torch.cat(list(rows.values()), dim=1)
    dense = damp * torch.eye(p, dtype=torch.float64) + full.T @ full / n
    return GradientMatrix(rows, n, 1), weights, dense


def _q(dense, w_bar, w):
    d = w - w_bar
    return float(0.5 * d @ dense @ d)


def _closed_form_backsolve(dense, w_bar, support):
    """argmin Q on the support: (F_SS) w_S = (F w_bar)_S, zero elsewhere (Q = 1/2 (w - w_bar)^T F (w - w_bar))."""
    w = torch.zeros_like(w_bar)
    s = support
    w[s] = torch.linalg.solve(dense[s][:, s], (dense @ w_bar)[s])
    return w


def _optimum(dense, w_bar, k):
    p = len(w_bar)
    best = math.inf
    for chosen in itertools.combinations(range(p), k):
        support = torch.zeros(p, dtype=torch.bool)
        support[list(chosen)] = True
        best = min(best, _q(dense, w_bar, _closed_form_backsolve(dense, w_bar, support)))
    return best


@pytest.mark.parametrize("form", ["network", "block"])
@pytest.mark.parametrize("n", [4, 30])  # dual (N < |S|) and gathered primal (|S| <= N) restricted solves
def test_backsolve_is_the_closed_form_restricted_ridge_solution(form, n):
    gradients, w_bar, dense = _problem(n=n)
    if form == "network":
        curvature = NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU)
    else:
        curvature = BlockFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU)
        dense = torch.block_diag(dense[:5, :5], dense[5:, 5:])  # the block form drops the cross-layer terms
    support = torch.zeros(12, dtype=torch.bool)
    support[[0, 2, 3, 6, 7, 10, 11]] = True
    problem = SparseRidge(curvature, w_bar, torch.ones(12, dtype=torch.bool))
    solved = problem.backsolve(support)
    expected = _closed_form_backsolve(dense, w_bar, support)
    assert float((solved - expected).abs().max()) < 1e-8
    assert problem.value(solved) == pytest.approx(_q(dense, w_bar, expected), rel=1e-10)
    assert bool((solved[~support] == 0).all())


def test_iht_and_active_set_against_every_support():
    """Every support of 12 weights enumerated (k = 4 and 7, six random problems each): the solvers' support
    is never worse than magnitude's, has exactly k weights, Q never rises; IHT is a local method, and its
    stated tolerance is a median within OPTIMUM_MEDIAN and every case within OPTIMUM_WORST of the optimum."""
    ratios = {"iht": [], "active-set": []}
    for seed, k in itertools.product(range(6), (4, 7)):
        gradients, w_bar, dense = _problem(seed=seed, correlated=False)
        problem = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar, torch.ones(12, dtype=torch.bool))
        optimum = _optimum(dense, w_bar, k)
        magnitude = _q(dense, w_bar, _closed_form_backsolve(dense, w_bar, problem.magnitude_support(k)))
        for name, (support, trace) in (("iht", solve_iht(problem, k, IHTSettings())), ("active-set", solve_active_set(problem, k, IHTSettings()))):
            assert int(support.sum()) == k
            reached = _q(dense, w_bar, _closed_form_backsolve(dense, w_bar, support))
            assert reached <= magnitude + 1e-12
            assert all(b <= a + 1e-12 for a, b in zip(trace.objective, trace.objective[1:])), trace.objective
            ratios[name].append(reached / optimum)
    for name, values in ratios.items():
        assert float(torch.tensor(values).median()) <= OPTIMUM_MEDIAN, (name, values)
        assert max(values) <= OPTIMUM_WORST, (name, values)


def _two_of_four_projection(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The N:M hard thresholding of a flat vector of groups of 4: the 2 highest allowed scores of every group."""
    from reflowbench.reconstruction.selection import keep_top_n

    masked = torch.where(allowed, scores, torch.full_like(scores, -math.inf)).view(-1, 4)
    return (keep_top_n(masked, 2, 4) & allowed.view(-1, 4)).view(-1)


def test_iht_under_two_of_four_against_every_two_of_four_support():
    """12 weights in three groups of 4, every 2:4 support enumerated (6^3), six random problems: IHT with the N:M
    projection returns a 2:4 support never worse than the projected magnitude one, Q never rises, and it stays within
    the unstructured test's distance of the 2:4 optimum (measured: the optimum itself on 3 of the 6, a median of 1.07x).
    The active set with the same projection (restricted to the top 1.5k magnitudes) was measured on these problems at
    a median of 2.2x the optimum, never at it but once: why CHITA refuses the active set under N:M."""
    supports = []
    for choice in itertools.product(itertools.combinations(range(4), 2), repeat=3):
        support = torch.zeros(12, dtype=torch.bool)
        support[[4 * group + i for group, pair in enumerate(choice) for i in pair]] = True
        supports.append(support)
    ratios = []
    for seed in range(6):
        gradients, w_bar, dense = _problem(seed=seed, correlated=False)
        problem = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar, torch.ones(12, dtype=torch.bool))
        optimum = min(_q(dense, w_bar, _closed_form_backsolve(dense, w_bar, support)) for support in supports)
        magnitude = _q(dense, w_bar, _closed_form_backsolve(dense, w_bar, _two_of_four_projection(w_bar.abs(), problem.allowed)))
        support, trace = solve_iht(problem, 6, IHTSettings(), _two_of_four_projection)
        assert support.view(3, 4).sum(1).tolist() == [2, 2, 2], support
        reached = _q(dense, w_bar, _closed_form_backsolve(dense, w_bar, support))
        assert reached <= magnitude + 1e-12
        assert all(b <= a + 1e-12 for a, b in zip(trace.objective, trace.objective[1:])), trace.objective
        ratios.append(reached / optimum)
    assert float(torch.tensor(ratios).median()) <= OPTIMUM_MEDIAN and max(ratios) <= OPTIMUM_WORST, ratios


def test_iht_batched_trial_steps_follow_the_one_at_a_time_path(monkeypatch):
    """The line search's trial points are scored in batches (one pass over G for all); batches of one give the same
    supports and objectives (float64: rounding only)."""
    import reflowbench.pruners.chita_solvers as solvers

    gradients, w_bar, _ = _problem(sizes=(20, 30), n=15, seed=3)
    problem = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar, torch.ones(50, dtype=torch.bool))
    batched_support, batched = solve_iht(problem, 12, IHTSettings())
    monkeypatch.setattr(solvers, "TRIAL_BATCH_BYTES", 1)
    single_support, single = solve_iht(problem, 12, IHTSettings())
    assert batched.trial_steps == single.trial_steps > 0 and batched.support_changes == single.support_changes > 0
    assert torch.equal(batched_support, single_support)
    assert batched.objective == pytest.approx(single.objective, rel=1e-10)


def test_iht_leaves_the_magnitude_support_where_weights_cancel():
    """w_bar = (1.0, 0.9, 0.3): the two large weights act the same way on the data and the small one is
    independent; keeping one of the pair lets it carry the other's effect, so Q is far lower keeping {0, 2}
    than magnitude's {0, 1}. IHT finds it."""
    g_pair = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64) * torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    g_single = torch.tensor([[0.0], [0.0], [1.0], [1.0]], dtype=torch.float64) * torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    G = g_pair + g_single
    w_bar = torch.tensor([1.0, 0.9, 0.3], dtype=torch.float64)
    gradients = GradientMatrix({"l0": G}, 4, 1)
    dense = 1e-3 * torch.eye(3, dtype=torch.float64) + G.T @ G / 4
    problem = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-3, **F64), CPU), w_bar, torch.ones(3, dtype=torch.bool))
    support, _ = solve_iht(problem, 2, IHTSettings())
    assert problem.magnitude_support(2).tolist() == [True, True, False]
    assert support.tolist() == [True, False, True]
    assert _q(dense, w_bar, problem.backsolve(support)) == pytest.approx(_optimum(dense, w_bar, 2), rel=1e-9)


def test_network_and_block_forms_agree_without_cross_layer_coupling():
    gradients, w_bar, dense = _problem(n=8, uncoupled=True)
    allowed = torch.ones(12, dtype=torch.bool)
    network = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar, allowed)
    block = SparseRidge(BlockFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar, allowed)
    for k in (3, 6, 9):
        s_network, _ = solve_iht(network, k, IHTSettings())
        s_block, _ = solve_iht(block, k, IHTSettings())
        assert torch.equal(s_network, s_block)
        assert float((network.backsolve(s_network) - block.backsolve(s_block)).abs().max()) < 1e-10


def test_pruned_weights_stay_out_of_the_support():
    gradients, w_bar, _ = _problem(seed=3)
    allowed = torch.ones(12, dtype=torch.bool)
    allowed[[1, 4, 9]] = False
    problem = SparseRidge(NetworkFisher(gradients, FisherSpec(damp=1e-2, **F64), CPU), w_bar * allowed, allowed)
    for support, _ in (solve_iht(problem, 5, IHTSettings()), solve_active_set(problem, 5, IHTSettings())):
        assert int(support.sum()) == 5 and not bool((support & ~allowed).any())


def test_top_k_support_is_exact():
    scores = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0])
    assert top_k_support(scores, 2, torch.ones(5, dtype=torch.bool)).tolist() == [True, False, False, False, True]
    assert int(top_k_support(scores, 3, torch.tensor([True, True, False, False, False])).sum()) == 2


def _chita_prune(digits, seed, name="chita", sparsity=0.7, **options):
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner(name, {"num_grads": 24, "minibatch": 2, "chunk_images": 16, **options})
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 64), seed)
    ctx = PruneContext(device=CPU, seed=seed, train=digits.train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"])
    masks = pruner.prune(model, targets, sparsity, ctx)
    apply_masks(targets, masks)
    return model, targets, masks, ctx


@pytest.mark.parametrize("solver", ["iht", "active-set", "backsolve", "block-backsolve"])
def test_chita_end_to_end_exact_zero_deterministic(digits, solver):
    model, targets, masks, ctx = _chita_prune(digits, 0, solver=solver)
    assert verify_masks(targets, masks, 0.7, model=model) == round(0.7 * targets.num_weights) / targets.num_weights
    notes = ctx.notes["chita"][-1]
    assert notes["solver"] == solver and notes["form"] == ("block" if solver == "block-backsolve" else "network")
    if solver in ("iht", "active-set"):
        assert notes["objective_end"] <= notes["objective_start"]
    _, again_targets, again_masks, _ = _chita_prune(digits, 0, solver=solver)
    assert all(torch.equal(masks[t.param_name], again_masks[t.param_name]) for t in targets)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(targets, again_targets))


def test_chita_weights_are_the_backsolve_on_its_support(digits):
    """The joint update of a network-form CHITA run is the whole-network ridge solve: checked against the dense F."""
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    w_bar = torch.cat([t.weight.detach().reshape(-1).double() for t in targets])
    _, pruned_targets, masks, ctx = _chita_prune(digits, 0, solver="backsolve", dtype="float64")
    from reflowbench.hessian import GradientSpec, collect_gradients

    subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, 48, 64), 0)
    gradients = collect_gradients(
        model, targets, digits.train.batches(subsets["fisher"], 48, shuffle=False), GradientSpec(num_grads=24, minibatch=2, dtype="float64")
    )
    G = torch.cat(list(gradients.rows.values()), dim=1)
    dense = 1e-4 * torch.eye(G.shape[1], dtype=torch.float64) + G.T @ G / 24
    support = torch.cat([masks[t.param_name].reshape(-1) for t in pruned_targets])
    expected = _closed_form_backsolve(dense, w_bar, support)
    got = torch.cat([t.weight.detach().reshape(-1).double() for t in pruned_targets])
    assert float((got - expected).abs().max()) < 1e-6 * float(expected.abs().max())


def test_chita_plus_plus_runs_its_stages(digits):
    model, targets, masks, ctx = _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert verify_masks(targets, masks, 0.7, model=model) > 0
    assert len(ctx.notes["chita"]) == 3 and ctx.notes["chita++_steps"][-1] == 0.7
    assert [n["sparsity"] for n in ctx.notes["chita"]] == ctx.notes["chita++_steps"]


def test_multi_step_run_rejects_an_update_that_makes_the_model_diverge(digits, monkeypatch):
    """A step whose update blows the weights up is undone (update none for that step) and the run goes on."""
    from reflowbench.pruners import hessian_base

    real_update, calls = hessian_base.apply_update, []

    def exploding_update(kind, targets, curvature, old, new):
        real_update(kind, targets, curvature, old, new)
        calls.append(kind)
        if len(calls) == 2:  # the second step's update diverges
            with torch.no_grad():
                next(iter(targets)).weight.mul_(1e30)

    monkeypatch.setattr(hessian_base, "apply_update", exploding_update)
    model, targets, masks, ctx = _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert ctx.notes["chita++_rejected_updates"] == [1]
    assert len(ctx.notes["chita"]) == 3 and verify_masks(targets, masks, 0.7, model=model) > 0
    assert all(bool(torch.isfinite(t.weight).all()) and float(t.weight.detach().abs().max()) < 1e3 for t in targets)
    _, _, _, clean_ctx = _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert "chita++_rejected_updates" not in clean_ctx.notes


def test_the_loss_guard_undoes_an_update_that_raises_the_probe_loss_and_the_finite_guard_does_not(digits, monkeypatch):
    """update_guard loss: a step whose update makes the probe-batch loss higher than without it is undone (both losses
    noted); the default guard keeps such an update as long as the loss stays finite."""
    from reflowbench.pruners import hessian_base

    def harmful_updates():
        real_update, calls = hessian_base.apply_update, []

        def update(kind, targets, curvature, old, new):
            real_update(kind, targets, curvature, old, new)
            calls.append(kind)
            if len(calls) == 2:  # the second step's update makes every image look like class 0
                fc = next(t for t in targets if t.param_name == "fc.weight")
                with torch.no_grad():
                    fc.weight[0] += 100.0 * new["fc.weight"][0]

        return update

    monkeypatch.setattr(hessian_base, "apply_update", harmful_updates())
    model, targets, masks, ctx = _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5, update_guard="loss")
    assert 1 in ctx.notes["chita++_rejected_updates"] and verify_masks(targets, masks, 0.7, model=model) > 0
    without, updated = ctx.notes["chita++_probe_losses"][1]
    assert len(ctx.notes["chita++_probe_losses"]) == 3 and updated > without + 10
    assert float(next(t for t in targets if t.param_name == "fc.weight").weight.detach().abs().max()) < 50
    monkeypatch.setattr(hessian_base, "apply_update", harmful_updates())
    model, targets, _, ctx = _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert "chita++_rejected_updates" not in ctx.notes and "chita++_probe_losses" not in ctx.notes
    assert float(next(t for t in targets if t.param_name == "fc.weight").weight.detach().abs().max()) > 50


def test_the_update_guard_enters_run_keys_and_configurations_only_away_from_its_default():
    """Added after runs were recorded: at 'finite' (the earlier behaviour) it changes no key and no report row."""
    from reflowbench.errors import ConfigError
    from reflowbench.pruners.base import key_options
    from reflowbench.schema.results import annotate_variants, config_fields

    plain, guarded = make_pruner("chita++"), make_pruner("chita++", {"update_guard": "loss"})
    assert "update_guard" not in key_options(plain) and key_options(guarded)["update_guard"] == "loss"
    record = {"method": "chita++", "sparsity": 0.9, "settings": {}, "options": {"damp": 1e-4}}
    with_default = {**record, "options": {"damp": 1e-4, "update_guard": "finite"}}
    with_loss = {**record, "options": {"damp": 1e-4, "update_guard": "loss"}}
    assert config_fields(record) == config_fields(with_default) != config_fields(with_loss)
    labels = {r["options"].get("update_guard"): r["label"] for r in annotate_variants([{**r, "model": "m"} for r in (record, with_loss)])}
    assert labels == {None: "chita++ [options.update_guard=finite]", "loss": "chita++ [options.update_guard=loss]"}
    with pytest.raises(ConfigError, match=r"--chita\+\+-update-guard must be one of"):
        make_pruner("chita++", {"update_guard": "magic"})


def test_multi_step_run_names_its_knobs_when_even_the_unupdated_model_diverges(digits, monkeypatch):
    from reflowbench.errors import FisherError
    from reflowbench.pruners import hessian_base

    monkeypatch.setattr(hessian_base, "probe_loss", lambda *args: math.inf)
    with pytest.raises(FisherError, match=r"--chita\+\+-recompute-steps.*--chita\+\+-damp"):
        _chita_prune(digits, 0, name="chita++", recompute_steps=2, iht_iters=5)


def test_a_later_step_whose_curvature_fails_is_a_divergence_the_first_step_is_not(digits, monkeypatch):
    """A FisherError in step 2 or later (the earlier updates moved the weights there) is the method diverging on this
    run: DivergedError naming the step, with the notes so far; in step 1 (the dense model) it stays a FisherError."""
    from reflowbench.errors import DivergedError, FisherError

    real_curvature = HessianPruner.curvature_at

    def failing_at(step_to_fail):
        calls = []

        def curvature_at(self, model, targets, masks, ctx, dense):
            calls.append(dense)
            if len(calls) - 1 == step_to_fail:
                raise FisherError("the Gram matrix G G^T of the whole-network Fisher is not finite although its gradients are")
            return real_curvature(self, model, targets, masks, ctx, dense)

        return curvature_at

    monkeypatch.setattr(HessianPruner, "curvature_at", failing_at(2))
    with pytest.raises(DivergedError, match=r"chita\+\+: step 3 of 3 \(sparsity 0\.7\) failed after the earlier steps' updates: the Gram") as caught:
        _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert caught.value.notes["chita++_failed_step"] == 2 and len(caught.value.notes["chita"]) == 2
    monkeypatch.setattr(HessianPruner, "curvature_at", failing_at(0))
    with pytest.raises(FisherError) as caught:
        _chita_prune(digits, 0, name="chita++", recompute_steps=3, iht_iters=5)
    assert not isinstance(caught.value, DivergedError)


def test_a_non_finite_gram_matrix_is_refused_at_once_as_overflow():
    """No damping makes an overflowed G G^T definite: the error says the gradients are too large, without escalating."""
    import warnings

    from reflowbench.errors import FisherError
    from reflowbench.hessian.block_fisher import _cholesky_with_escalation

    gram = torch.eye(3).unsqueeze(0).repeat(2, 1, 1)
    gram[1, 0, 0] = float("inf")
    eye = torch.eye(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damping escalation is tried
        with pytest.raises(FisherError, match=r"not finite although its gradients are: .*torch.float32 products.*diverged"):
            _cholesky_with_escalation(gram, "layer x", lambda m, extra: m + extra.view(-1, 1, 1) * eye, torch.full((2,), 1e-4))


def test_a_gram_matrix_too_large_for_its_damping_is_named_as_diverged_weights():
    """Finite but huge gradients (weights that diverged): the damping vanishes in float32 rounding and no escalation helps;
    the error says so (with the largest entry) instead of blaming all-zero gradients."""
    import warnings

    from reflowbench.errors import FisherError
    from reflowbench.hessian.block_fisher import _cholesky_with_escalation

    g = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 1e20  # singular, entries far above any damping
    eye = torch.eye(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FisherError, match=r"largest diagonal entry is 1e\+20, so the damping is lost in torch.float32 rounding.*diverged"):
            _cholesky_with_escalation(g.unsqueeze(0), "layer x", lambda m, extra: m + extra.view(-1, 1, 1) * eye, torch.full((1,), 1e-4))


def test_bad_chita_options_are_refused_with_the_flag():
    from reflowbench.errors import ConfigError

    with pytest.raises(ConfigError, match="--chita-solver must be one of"):
        make_pruner("chita", {"solver": "magic"})
    with pytest.raises(ConfigError, match="--chita-scope must be global"):
        make_pruner("chita", {"scope": "layer"})
    with pytest.raises(ConfigError, match=r"--chita\+\+-active-factor must be a number >= 1"):
        make_pruner("chita++", {"active_factor": 0.5})


def test_objective_diagnostic_in_the_suite_and_the_report(tmp_path):
    """``--objective-grads``: every run records Q under one reference Fisher, the best Q on its support and the
    overlap with magnitude; the report gets a table. CHITA's backsolve reaches the best Q of its own support
    when its Fisher is the reference one; MP's support is magnitude's."""
    from reflowbench.cli import main

    out = tmp_path / "objective"
    common = [
        "--out",
        str(out),
        "--calib-batches",
        "2",
        "--calib-batch-size",
        "32",
        "--diag-images",
        "64",
        "--seeds",
        "0",
        "--no-progress",
        "--sparsities",
        "0.7",
    ]
    chita = ["--chita-num-grads", "12", "--chita-minibatch", "2", "--chita-solver", "backsolve", "--chita-dtype", "float64"]
    assert main(["run", "--methods", "mp,chita", *chita, "--objective-grads", "12", "--objective-minibatch", "2", *common]) == 0
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    mp, ch = records["mp"]["objective"], records["chita"]["objective"]
    assert mp["magnitude_overlap"] == 1.0 and ch["magnitude_overlap"] == 1.0
    assert mp["q"] > mp["q_support_best"] and ch["q"] == pytest.approx(ch["q_support_best"], rel=1e-4)
    assert ch["q"] < mp["q"] and "N = 12 x 2" in ch["reference"]
    report = (out / "report.md").read_text()
    assert "## Quadratic model" in report and "best Q on its support" in report


def test_iht_working_memory_is_checked_against_the_budget(digits):
    """The IHT solver's own vectors (iterate, gradients, a batch of trial steps) count against --memory-budget-gb with G
    (resident through the iterations): a budget that holds G but not both is refused, naming the knobs, before any iteration."""
    from reflowbench.errors import MemoryBudgetError
    from reflowbench.pruners.chita_solvers import TRIAL_BATCH_BYTES, IHTSettings, iht_working_bytes

    settings = IHTSettings()
    assert iht_working_bytes(1000, 4, settings) == 10 * 4000 + 4 * 4 * 4000  # all four trials in one batch
    assert iht_working_bytes(10**8, 4, settings) == 10 * 4 * 10**8 + 4 * 4 * 10**8  # one trial is over the cap: batches of one
    assert iht_working_bytes(10**7, 4, settings) == 10 * 4 * 10**7 + TRIAL_BATCH_BYTES  # capped
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner("chita", {"num_grads": 4, "minibatch": 2, "chunk_images": 2, "solver": "iht"})
    need = 4 * targets.num_weights * 4 + iht_working_bytes(targets.num_weights, 4, settings)  # G (N = 4, float32) and the solver
    assert need > 3 * (4 + 2) * targets.num_weights * 4  # G and a chunk of gradients fit well within the budget below
    ctx = PruneContext(device=CPU, seed=0, train=digits.train, fisher_indices=torch.arange(pruner.fisher_images()).numpy(), memory_budget_gb=0.9 * need / 2**30)
    with pytest.raises(MemoryBudgetError, match="G and the iht solver's working vectors.*--chita-solver backsolve or block-backsolve.*--chita-dtype bfloat16"):
        pruner.prune(model, targets, 0.7, ctx)


def test_the_joint_update_reuses_the_solvers_last_dual_factor(digits, monkeypatch):
    """IHT backsolves the magnitude support (one pass over G for its Gram), then its own (that Gram corrected by the
    few columns IHT moved); the joint update on the returned support needs no third K_S (each pass over G: N^2 p
    flops on a real network)."""
    from reflowbench.hessian import NetworkFisher

    factorised, passes = [], []
    factorise, build = NetworkFisher._factorise, NetworkFisher._build_gram
    monkeypatch.setattr(NetworkFisher, "_factorise", lambda self, gram: factorised.append(gram) or factorise(self, gram))
    monkeypatch.setattr(NetworkFisher, "_build_gram", lambda self, support: passes.append(support) or build(self, support))
    _, _, _, ctx = _chita_prune(digits, 0, solver="iht")
    notes = ctx.notes["chita"][-1]
    assert notes["moved_from_magnitude"] > 0 and not notes["kept_magnitude_support"]
    assert len(factorised) == 2 and len(passes) == 1
    factorised.clear()
    _chita_prune(digits, 0, solver="backsolve")
    assert len(factorised) == 1


_UNPATCHED_STEP = HessianPruner._step


class _Interrupted(Exception):
    """Stands in for a kill (Slurm preemption, Ctrl-C) between two steps."""


def _staged_prune(digits, stages, interrupt_at=None, monkeypatch=None):
    """CHITA++ in 3 stages on TinyBNNet with ``stages`` as the context's StageCheckpoint; ``interrupt_at``: the step
    (0-based) whose start raises :class:`_Interrupted`. Returns (targets, masks, ctx, steps run)."""
    ran = []
    step = _UNPATCHED_STEP

    def counted(self, model, targets, masks, index, schedule, ctx):
        if index == interrupt_at:
            raise _Interrupted()
        ran.append(index)
        return step(self, model, targets, masks, index, schedule, ctx)

    monkeypatch.setattr(HessianPruner, "_step", counted)
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner("chita++", {"num_grads": 24, "minibatch": 2, "chunk_images": 16, "recompute_steps": 3, "iht_iters": 5})
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 64), 0)
    ctx = PruneContext(device=CPU, seed=0, train=digits.train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"], stages=stages)
    masks = pruner.prune(model, targets, 0.7, ctx)
    apply_masks(targets, masks)
    return targets, masks, ctx, ran


def test_an_interrupted_multi_step_run_resumes_at_its_next_step_with_the_same_result(digits, monkeypatch, tmp_path):
    from reflowbench.pruners.base import StageCheckpoint

    whole_targets, whole_masks, whole_ctx, whole_ran = _staged_prune(digits, None, monkeypatch=monkeypatch)
    stages = StageCheckpoint(tmp_path / "partial" / "run.stages.pt", "key-1")
    with pytest.raises(_Interrupted):
        _staged_prune(digits, stages, interrupt_at=2, monkeypatch=monkeypatch)
    assert stages.load()["steps_done"] == 2
    targets, masks, ctx, ran = _staged_prune(digits, stages, monkeypatch=monkeypatch)
    assert whole_ran == [0, 1, 2] and ran == [2]  # steps 1 and 2 came from the file
    assert all(torch.equal(masks[t.param_name], whole_masks[t.param_name]) for t in targets)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(targets, whole_targets))
    assert ctx.notes["chita++_resumed_at_step"] == 3
    assert ctx.notes["chita"] == whole_ctx.notes["chita"]  # the restored steps' notes, then this step's
    saved = stages.load()  # still there: the harness removes it once the record is written
    for phase in ("gradients", "curvature", "selection", "update"):  # the restored steps' costs, plus this step's
        assert ctx.ledger.get(phase).seconds > saved["cost"][phase]["seconds"] > 0


def test_saved_steps_of_other_settings_or_a_torn_file_are_not_trusted(digits, monkeypatch, tmp_path):
    from reflowbench.pruners.base import StageCheckpoint

    path = tmp_path / "run.stages.pt"
    with pytest.raises(_Interrupted):
        _staged_prune(digits, StageCheckpoint(path, "key-1"), interrupt_at=2, monkeypatch=monkeypatch)
    _, _, ctx, ran = _staged_prune(digits, StageCheckpoint(path, "key-2"), monkeypatch=monkeypatch)  # another run key
    assert ran == [0, 1, 2] and "chita++_resumed_at_step" not in ctx.notes
    path.write_bytes(b"not a torch file")
    assert StageCheckpoint(path, "key-2").load() is None
    StageCheckpoint(path, "key-2").clear()
    assert not path.exists()
