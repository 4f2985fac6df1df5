"""CBS against brute force: the objective and swap scores vs an explicitly formed F, local search vs
enumeration of every mask, the joint update vs the dense constrained least-squares minimiser."""

import itertools

import pytest
import torch
from torch import nn

from conftest import TinyBNNet
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix
from reflowbench.pruners import PruneContext, Target, TargetPolicy, TargetSet, apply_masks, make_pruner, select_targets, verify_masks
from reflowbench.pruners.cbs_search import SearchSettings, SelectionObjective, local_search, perturbed_magnitude_masks
from reflowbench.pruners.updates import apply_update

F64 = dict(compute_dtype="float64")


def _problem(sizes=(7, 5), n=6, block_size=0, damp=1e-3, seed=0):
    """Two layers of random gradients (N < d: the dual form), their weights, and the explicit block-diagonal F."""
    generator = torch.Generator().manual_seed(seed)
    rows = {f"l{k}": torch.randn(n, d, generator=generator, dtype=torch.float64) for k, d in enumerate(sizes)}
    weights = torch.randn(sum(sizes), generator=generator, dtype=torch.float64)
    fisher = BlockFisher(GradientMatrix(rows, n, 1), FisherSpec(block_size=block_size, damp=damp, **F64), torch.device("cpu"))
    dense = torch.zeros(sum(sizes), sum(sizes), dtype=torch.float64)
    offset = 0
    for g in rows.values():
        d = g.shape[1]
        block = d if block_size in (0, None) or block_size >= d else block_size
        for start in range(0, d, block):
            stop = min(start + block, d)
            gb = g[:, start:stop]
            dense[offset + start : offset + stop, offset + start : offset + stop] = damp * torch.eye(stop - start, dtype=torch.float64) + gb.T @ gb / n
        offset += d
    return fisher, list(rows), weights, dense


def _j(dense, w, pruned):
    wp = torch.where(pruned, w, torch.zeros_like(w))
    return float(0.5 * wp @ dense @ wp)


@pytest.mark.parametrize("block_size", [0, 3])
def test_objective_and_swap_scores_match_the_formed_fisher(block_size):
    fisher, names, w, dense = _problem(block_size=block_size)
    objective = SelectionObjective(fisher, names, w)
    pruned = torch.zeros(len(w), dtype=torch.bool)
    pruned[[0, 2, 5, 8, 11]] = True
    assert objective.value(pruned) == pytest.approx(_j(dense, w, pruned), rel=1e-10)
    rows, cols = torch.nonzero(pruned).flatten(), torch.nonzero(~pruned).flatten()
    scores = objective.swap_scores(pruned, rows, cols)
    for a, i in enumerate(rows.tolist()):
        for b, j in enumerate(cols.tolist()):
            swapped = pruned.clone()
            swapped[i], swapped[j] = False, True
            assert float(scores[a, b]) == pytest.approx(_j(dense, w, swapped) - _j(dense, w, pruned), rel=1e-9, abs=1e-12)


def test_local_search_never_raises_the_objective():
    for seed in range(5):
        fisher, names, w, dense = _problem(sizes=(9, 6), seed=seed)
        objective = SelectionObjective(fisher, names, w)
        start = perturbed_magnitude_masks(w.abs(), torch.zeros(len(w), dtype=torch.bool), 8, 1, torch.Generator().manual_seed(seed))[0]
        result, summary = local_search(objective, start, torch.zeros(len(w), dtype=torch.bool), SearchSettings(epsilon=0.0))
        assert int(result.sum()) == 8
        assert _j(dense, w, result) <= _j(dense, w, start) + 1e-12
        assert summary["objective_end"] <= summary["objective_start"] + 1e-12


def test_local_search_finds_weights_that_cancel_where_magnitude_does_not():
    """w0 = -w1 with equal gradient columns: pruning both costs only lam. Magnitude prunes the two
    smallest |w|, whose gradients are large; local search swaps its way to the optimum."""
    n = 8
    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    g = torch.cat(
        [shared, shared, 3 * torch.randn(n, 1, generator=generator, dtype=torch.float64), 4 * torch.randn(n, 1, generator=generator, dtype=torch.float64)],
        dim=1,
    )
    w = torch.tensor([1.0, -1.0, 0.5, 0.6], dtype=torch.float64)
    damp = 1e-6
    fisher = BlockFisher(GradientMatrix({"l": g}, n, 1), FisherSpec(damp=damp, **F64), torch.device("cpu"))
    dense = damp * torch.eye(4, dtype=torch.float64) + g.T @ g / n
    objective = SelectionObjective(fisher, ["l"], w)
    magnitude = torch.tensor([False, False, True, True])
    every = [torch.tensor([k in c for k in range(4)]) for c in itertools.combinations(range(4), 2)]
    optimum = min(every, key=lambda m: _j(dense, w, m))
    assert torch.equal(optimum, torch.tensor([True, True, False, False])) and not torch.equal(magnitude, optimum)
    result, _ = local_search(objective, magnitude, torch.zeros(4, dtype=torch.bool), SearchSettings(epsilon=0.0))
    assert torch.equal(result, optimum)


def test_local_search_matches_enumeration_on_small_problems():
    hits = 0
    for seed in range(8):
        fisher, names, w, dense = _problem(sizes=(5, 4), n=4, seed=seed)
        objective = SelectionObjective(fisher, names, w)
        k = 4
        every = [torch.tensor([i in c for i in range(9)]) for c in itertools.combinations(range(9), k)]
        best = min(_j(dense, w, m) for m in every)
        start = perturbed_magnitude_masks(w.abs(), torch.zeros(9, dtype=torch.bool), k, 1, torch.Generator().manual_seed(0))[0]
        result, _ = local_search(objective, start, torch.zeros(9, dtype=torch.bool), SearchSettings(epsilon=0.0))
        assert _j(dense, w, result) <= _j(dense, w, start) + 1e-12
        hits += _j(dense, w, result) <= best + 1e-12
    assert hits >= 6  # swaps are a local search: the exact optimum on most, never worse than the start


def test_nm_local_search_swaps_inside_groups_and_reaches_the_enumerated_optimum_on_most_problems():
    """2:4 on 16 weights (4 groups): the search keeps exactly 2 of every group, never raises J, and on most random
    problems reaches the best of all 6^4 N:M masks (brute force)."""
    hits = 0
    for seed in range(6):
        fisher, names, w, dense = _problem(sizes=(8, 8), n=5, seed=seed)
        objective = SelectionObjective(fisher, names, w)
        members = torch.arange(16).view(4, 4)
        start = torch.zeros(16, dtype=torch.bool)
        for group in members:  # prune the 2 smallest |w| of every group
            start[group[torch.argsort(w[group].abs())[:2]]] = True
        result, _ = local_search(objective, start, torch.zeros(16, dtype=torch.bool), SearchSettings(epsilon=0.0), members=members)
        assert [int(result[g].sum()) for g in members] == [2, 2, 2, 2]
        assert _j(dense, w, result) <= _j(dense, w, start) + 1e-12
        choices = [torch.tensor([k in c for k in range(4)]) for c in itertools.combinations(range(4), 2)]
        best = min(_j(dense, w, torch.cat(masks)) for masks in itertools.product(choices, repeat=4))
        hits += _j(dense, w, result) <= best + 1e-12
    assert hits >= 4, hits


@pytest.mark.parametrize("block_size", [0, 4])
def test_joint_update_is_the_constrained_least_squares_minimiser(block_size):
    fisher, names, w, dense = _problem(sizes=(7, 5), block_size=block_size)
    targets = TargetSet([Target(name, name, "linear", nn.Parameter(part.clone())) for name, part in zip(names, torch.split(w, [7, 5]))], TargetPolicy())
    keep = torch.ones(12, dtype=torch.bool)
    keep[[1, 4, 6, 9]] = False
    new = dict(zip(names, torch.split(keep, [7, 5])))
    old = {name: torch.ones_like(m) for name, m in new.items()}
    apply_update("joint", targets, fisher, old, new)
    updated = torch.cat([t.weight.detach() for t in targets])
    # brute force: minimise 1/2 (u - w)^T F (u - w) subject to u_Q = 0
    S, Q = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    expected = torch.zeros(12, dtype=torch.float64)
    expected[S] = w[S] + torch.linalg.solve(dense[S][:, S], dense[S][:, Q] @ w[Q])
    assert torch.allclose(updated, expected, atol=1e-8, rtol=0)
    assert bool((updated[Q] == 0).all())


def test_perturbed_candidates_have_the_exact_count_and_keep_frozen_weights():
    magnitudes = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    frozen = torch.zeros(1000, dtype=torch.bool)
    frozen[:100] = True
    masks = perturbed_magnitude_masks(magnitudes, frozen, 700, 5, torch.Generator().manual_seed(3))
    assert all(int(m.sum()) == 700 and bool(m[:100].all()) for m in masks)
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masks}) == 5
    again = perturbed_magnitude_masks(magnitudes, frozen, 700, 5, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))


def _cbs_prune(digits, seed, **options):
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner("cbs", {"num_grads": 32, "chunk_images": 16, "candidates": 5, **options})
    subsets = disjoint_subsets(len(digits.train), SubsetSizes(0, pruner.fisher_images(), 64), seed)
    ctx = PruneContext(device=torch.device("cpu"), seed=seed, train=digits.train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"])
    masks = pruner.prune(model, targets, 0.7, ctx)
    apply_masks(targets, masks)
    return model, targets, masks, ctx


def test_cbs_end_to_end_exact_zero_deterministic(digits):
    model, targets, masks, ctx = _cbs_prune(digits, 0)
    assert verify_masks(targets, masks, 0.7, model=model) == round(0.7 * targets.num_weights) / targets.num_weights
    notes = ctx.notes["cbs"]
    assert notes["objective_chosen"] <= notes["objective_start"] + 1e-9 and notes["loss_chosen"] <= notes["start_loss_best"] + 1e-12
    _, again_targets, again_masks, _ = _cbs_prune(digits, 0)
    assert all(torch.equal(masks[t.param_name], again_masks[t.param_name]) for t in targets)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(targets, again_targets))


def test_cbs_scores_candidates_in_eval_mode_whatever_mode_the_model_is_given_in(digits):
    """A model handed over in train mode: candidates are still scored with BN's running statistics (batch statistics
    would silently score another network), and the mode is given back."""
    _, targets, masks, ctx = _cbs_prune(digits, 0)
    torch.manual_seed(7)
    model = TinyBNNet().train()
    trained_targets = select_targets(model)
    pruner = make_pruner("cbs", {"num_grads": 32, "chunk_images": 16, "candidates": 5})
    in_train_mode = pruner.prune(
        model,
        trained_targets,
        0.7,
        PruneContext(device=torch.device("cpu"), seed=0, train=digits.train, fisher_indices=ctx.fisher_indices, heldout_indices=ctx.heldout_indices),
    )
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(masks[name], in_train_mode[name]) for name in masks)


def test_cbs_without_search_or_candidates_is_magnitude(digits):
    _, targets, masks, _ = _cbs_prune(digits, 0, candidates=0, max_iters=0, update="none")
    torch.manual_seed(7)
    reference = TinyBNNet().eval()
    mp = make_pruner("mp").prune(reference, select_targets(reference), 0.7, PruneContext(device=torch.device("cpu"), seed=0))
    assert all(torch.equal(masks[name], mp[name]) for name in masks)


def test_bad_cbs_options_are_refused_with_the_flag():
    from reflowbench.errors import ConfigError

    with pytest.raises(ConfigError, match="pruner cbs: CBS selects globally across layers: --cbs-scope must be global"):
        make_pruner("cbs", {"scope": "layer"})
    with pytest.raises(ConfigError, match="update must be one of"):
        make_pruner("cbs", {"update": "magic"})
    with pytest.raises(ConfigError, match="--cbs-window must be >= 1"):
        make_pruner("cbs", {"window": 0})
