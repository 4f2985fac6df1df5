"""WoodFisher against exact OBS on quadratic (least-squares) problems, plus end-to-end properties."""

import itertools

import pytest
import torch
from torch import nn

from conftest import TinyBNNet
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix
from reflowbench.pruners import PruneContext, Target, TargetPolicy, TargetSet, apply_masks, make_pruner, select_targets, verify_masks
from reflowbench.pruners.woodfisher import step_sparsities


def _single_layer(w: torch.Tensor) -> TargetSet:
    return TargetSet([Target("w", "", "linear", nn.Parameter(w.clone()))], TargetPolicy())


def _least_squares(n=40, d=6, seed=0):
    """Rows of G = x_i for a least-squares model: with N >= d and lam -> 0, F = X^T X / N is the exact Hessian."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64) @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64))
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    return X, w


def _exact_obs(H: torch.Tensor, w: torch.Tensor, removed):
    """min 1/2 (u - w)^T H (u - w) s.t. u_Q = 0, by a dense solve: (loss increase, minimiser)."""
    d = len(w)
    keep = [i for i in range(d) if i not in removed]
    Q = list(removed)
    # u_keep = w_keep - H_kk^-1 H_kQ w_Q (optimal compensation), u_Q = 0
    u = torch.zeros(d, dtype=torch.float64)
    u[keep] = w[keep] + torch.linalg.solve(H[keep][:, keep], H[keep][:, Q] @ w[Q])
    delta = u - w
    return float(0.5 * delta @ H @ delta), u


def test_single_weight_removal_is_exact_obs():
    X, w = _least_squares()
    H = X.T @ X / len(X)
    targets = _single_layer(w)
    gradients = GradientMatrix({"w": X}, num_grads=len(X), minibatch=1)
    fisher = BlockFisher(gradients, FisherSpec(damp=1e-12, compute_dtype="float64"), torch.device("cpu"))
    pruner = make_pruner("woodfisher")
    masks = pruner.prune_with_fisher(targets, fisher, 1 / len(w), {"w": torch.ones(len(w), dtype=torch.bool)})
    removed = int((~masks["w"]).nonzero())
    increases = [_exact_obs(H, w, [q])[0] for q in range(len(w))]
    assert removed == min(range(len(w)), key=increases.__getitem__)  # the saliency picks the exact best weight
    rho = float(w[removed] ** 2 / (2 * torch.linalg.inv(H)[removed, removed]))
    assert abs(rho - increases[removed]) / increases[removed] < 1e-8  # rho_q equals the exact loss increase
    _, best = _exact_obs(H, w, [removed])
    assert torch.allclose(targets.targets[0].weight.detach().double(), best, atol=1e-8)  # and the update the exact minimiser


def test_summed_update_is_exact_when_hessian_is_diagonal():
    generator = torch.Generator().manual_seed(3)
    scales = torch.linspace(0.5, 3.0, 8, dtype=torch.float64)
    X = torch.diag(scales) * (8**0.5)  # X^T X / N = diag(scales^2)
    w = torch.randn(8, generator=generator, dtype=torch.float64)
    targets = _single_layer(w)
    fisher = BlockFisher(GradientMatrix({"w": X}, 8, 1), FisherSpec(damp=1e-12, compute_dtype="float64"), torch.device("cpu"))
    masks = make_pruner("woodfisher").prune_with_fisher(targets, fisher, 0.5, {"w": torch.ones(8, dtype=torch.bool)})
    H = torch.diag(scales**2)
    best_set = min(itertools.combinations(range(8), 4), key=lambda Q: _exact_obs(H, w, list(Q))[0])
    assert sorted((~masks["w"]).nonzero().flatten().tolist()) == sorted(best_set)


def test_step_schedules_end_at_target():
    for schedule in ("geometric", "cubic", "linear"):
        steps = step_sparsities(0.9, 4, schedule)
        assert steps[-1] == 0.9 and all(a < b for a, b in zip(steps, steps[1:]))
    assert step_sparsities(0.9, 2, "geometric")[0] == pytest.approx(1 - 0.1**0.5)


@pytest.mark.parametrize(
    "options", [{}, {"recompute_steps": 3}, {"block_size": 16}, {"scope": "layer"}, {"minibatch": 2}, {"damp": 1e-3, "damp_mode": "relative"}]
)
def test_end_to_end_exact_sparsity_and_determinism(digits, options):
    from reflowbench.datasets import SubsetSizes, disjoint_subsets

    results = []
    for _ in range(2):
        torch.manual_seed(5)
        model = TinyBNNet().eval()
        targets = select_targets(model)
        pruner = make_pruner("woodfisher", {"num_grads": 24, "chunk_images": 8, **options})
        subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 0), seed=1)
        ctx = PruneContext(device=torch.device("cpu"), seed=1, train=digits.train, fisher_indices=subsets["fisher"])
        masks = pruner.prune(model, targets, 0.8, ctx)
        apply_masks(targets, masks)
        verify_masks(targets, masks, 0.8, pruner.mask_scope())
        results.append((masks, [t.weight.detach().clone() for t in targets]))
        assert all(torch.isfinite(t.weight).all() for t in targets)
    for name in results[0][0]:
        assert torch.equal(results[0][0][name], results[1][0][name])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_woodfisher_beats_magnitude_on_the_local_quadratic(digits):
    """On the model it optimises (the damped Fisher quadratic), WoodFisher's mask + update costs less than MP's."""
    from reflowbench.datasets import SubsetSizes, disjoint_subsets
    from reflowbench.hessian import GradientSpec, collect_gradients

    torch.manual_seed(0)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, 64, 0), seed=0)
    dense = {t.param_name: t.weight.detach().clone().flatten() for t in targets}
    G = collect_gradients(model, targets, digits.train.batches(subsets["fisher"], 64), GradientSpec(num_grads=64, dtype="float64"))
    fisher = BlockFisher(G, FisherSpec(damp=1e-4, compute_dtype="float64"), torch.device("cpu"))
    ones = {t.param_name: torch.ones_like(t.weight, dtype=torch.bool) for t in targets}
    make_pruner("woodfisher").prune_with_fisher(targets, fisher, 0.5, ones)
    wf_cost = sum(fisher[t.param_name].quadratic(t.weight.detach().flatten() - dense[t.param_name]) for t in targets)
    for t in targets:
        t.weight.data.copy_(dense[t.param_name].view(t.weight.shape))
    mp_masks = make_pruner("mp").prune(model, targets, 0.5, PruneContext(device=torch.device("cpu"), seed=0))
    apply_masks(targets, mp_masks)
    mp_cost = sum(fisher[t.param_name].quadratic(t.weight.detach().flatten() - dense[t.param_name]) for t in targets)
    assert wf_cost < mp_cost


def test_dense_gradients_are_shared_per_seed_and_charged_to_every_run(digits):
    from reflowbench.datasets import SubsetSizes, disjoint_subsets

    cache = {}
    ledgers = []
    for seed in (0, 0, 1):
        torch.manual_seed(5)
        model = TinyBNNet().eval()
        targets = select_targets(model)
        pruner = make_pruner("woodfisher", {"num_grads": 16, "chunk_images": 8})
        subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 0), seed=seed)
        ctx = PruneContext(device=torch.device("cpu"), seed=seed, train=digits.train, fisher_indices=subsets["fisher"], cache=cache)
        pruner.prune(model, targets, 0.5, ctx)
        ledgers.append((ctx.ledger.get("gradients").seconds, ctx.notes.get("gradients_reused", False)))
    assert [reused for _, reused in ledgers] == [False, True, False]
    assert ledgers[1][0] == pytest.approx(ledgers[0][0])  # the reused run is charged the measured cost (also in "prune")
    assert len([k for k in cache if k[0] == "dense-fisher"]) == 1  # only the latest seed's dense Fisher stays alive


def test_the_last_run_of_a_seed_frees_the_dense_curvature(digits):
    """keep_curvature=False: the run neither stores the seed's dense Fisher nor leaves a stored one in the cache."""
    from reflowbench.datasets import SubsetSizes, disjoint_subsets

    cache = {}
    reused = []
    for keep in (True, False, False):
        torch.manual_seed(5)
        model = TinyBNNet().eval()
        targets = select_targets(model)
        pruner = make_pruner("woodfisher", {"num_grads": 16, "chunk_images": 8})
        subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 0), seed=0)
        ctx = PruneContext(device=torch.device("cpu"), seed=0, train=digits.train, fisher_indices=subsets["fisher"], cache=cache, keep_curvature=keep)
        pruner.prune(model, targets, 0.5, ctx)
        reused.append(ctx.notes.get("gradients_reused", False))
        assert len([k for k in cache if k[0] == "dense-fisher"]) == (1 if keep else 0)
    assert reused == [False, True, False]  # the second run took the stored Fisher out; the third had to collect again


def test_the_sweep_keeps_a_seeds_curvature_only_while_a_later_run_needs_it():
    from reflowbench.harness.sweep import _reused_later

    wf, cbs = object(), object()
    todo = [(wf, 0.5, 0, "a", None), (wf, 0.7, 0, "b", None), (cbs, 0.5, 0, "c", None), (wf, 0.5, 1, "d", None)]
    assert [_reused_later(todo, i) for i in range(len(todo))] == [True, False, False, False]


def test_credited_cost_counts_in_the_enclosing_phase():
    from reflowbench.utils.cost import CostLedger, PhaseCost

    ledger = CostLedger()
    with ledger.phase("prune"):
        ledger.add("gradients", PhaseCost(seconds=5.0, peak_rss_mb=1.0))
    assert ledger.get("gradients").seconds == 5.0
    assert 5.0 <= ledger.get("prune").seconds < 6.0
