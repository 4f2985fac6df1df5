"""N:M sparsity: the exact pattern for every pruner that declares it, checked on the saved weights; refusals in one line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from reflowbench.cli import main
from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError, MaskError
from reflowbench.models import build_model
from reflowbench.pruners import PRUNERS, select_targets
from reflowbench.pruners.nm import dense_layers, keep_top_n, nm_masks_from_scores, verify_nm


def test_keep_top_n_keeps_the_best_n_of_every_group_as_brute_force_does():
    generator = torch.Generator().manual_seed(0)
    for n, m in ((1, 4), (2, 4), (4, 8), (3, 5)):
        scores = torch.randn(3, 4 * m, generator=generator)
        keep = keep_top_n(scores, n, m)
        for row, group in itertools.product(range(3), range(4)):
            values = scores[row, group * m : (group + 1) * m]
            best = max(itertools.combinations(range(m), n), key=lambda subset: float(values[list(subset)].sum()))
            assert set(keep[row, group * m : (group + 1) * m].nonzero().flatten().tolist()) == set(best)


def test_pattern_parsing_and_its_sparsity():
    assert SparsityPattern.parse("2:4").sparsity() == 0.5 and str(SparsityPattern.parse("1:4")) == "1:4"
    assert SparsityPattern.parse("unstructured").sparsity() is None
    for bad in ("4:2", "0:4", "2:4:8", "two:four", "2:128"):
        with pytest.raises(ConfigError, match="--pattern must be unstructured, channels or N:M"):
            SparsityPattern.parse(bad)
    assert SparsityPattern.parse("channels").sparsity() is None and str(SparsityPattern.parse("channels")) == "channels"


def test_layers_that_cannot_hold_the_pattern_stay_dense_and_broken_masks_are_caught():
    model = build_model("resnet20")
    targets = select_targets(model)
    pattern = SparsityPattern.parse("2:4")
    assert dense_layers(targets, pattern) == ["conv1.weight"]  # 3 x 3 x 3 = 27 columns
    masks = nm_masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, pattern)
    pruned, total = verify_nm(targets, masks, pattern)
    assert total == targets.num_weights and pruned == (targets.num_weights - 432) // 2
    broken = dict(masks)
    broken["layer1.0.conv1.weight"] = masks["layer1.0.conv1.weight"].clone()
    broken["layer1.0.conv1.weight"].view(-1)[:4] = True  # a group keeps 4
    with pytest.raises(MaskError, match="layer1.0.conv1.weight: 1 groups of 4 do not keep exactly 2"):
        verify_nm(targets, broken, pattern)
    broken = dict(masks, **{"conv1.weight": torch.zeros_like(masks["conv1.weight"])})
    with pytest.raises(MaskError, match="conv1.weight cannot hold --pattern 2:4 .* must stay dense"):
        verify_nm(targets, broken, pattern)


NM_PRUNERS = sorted(name for name, cls in PRUNERS.items() if "n:m" in cls.PATTERNS)
# Small Fisher samples (the embedded data's Fisher share), one stage where a pruner reaches N:M in one stage only.
QUICK_OPTIONS = {
    "woodfisher": ["--woodfisher-num-grads", "64"],
    "cbs": ["--cbs-num-grads", "64", "--cbs-max-iters", "5", "--cbs-score-images", "64"],
    "mp-hessian": ["--mp-hessian-num-grads", "64"],
    "chita": ["--chita-num-grads", "32", "--chita-minibatch", "4"],
    "chita++": ["--chita++-num-grads", "32", "--chita++-minibatch", "4", "--chita++-recompute-steps", "1"],
}


def test_the_pruners_that_declare_nm_are_the_ones_built_for_it():
    assert NM_PRUNERS == ["cbs", "chita", "chita++", "mp", "mp-hessian", "mp-layer", "obc", "sparsegpt", "wanda", "woodfisher"]


@pytest.mark.parametrize(
    "name,text",
    [(name, "2:4") for name in NM_PRUNERS]
    + [
        ("mp", "1:4"),
        ("mp-layer", "4:8"),
        ("sparsegpt --sparsegpt-mask adaptive --no-sparsegpt-refit", "4:8"),
        ("obc --obc-max-columns 16", "2:4"),  # the wide layers through SparseGPT's N:M sweep
        ("chita --chita-solver iht --chita-iht-iters 5", "2:4"),
    ],
)
def test_every_pruner_that_declares_nm_holds_it_exactly_in_the_saved_weights(tmp_path, name, text):
    save, record = tmp_path / "w.pt", tmp_path / "r.json"
    name, *extra = name.split()
    args = ["prune", "--method", name, "--pattern", text, "--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", *extra]
    args += QUICK_OPTIONS.get(name, [])
    assert main([*args, "--save", str(save), "--record", str(record)]) == 0
    pattern = SparsityPattern.parse(text)
    weights = torch.load(save, weights_only=True)
    model = build_model("smallcnn")
    model.load_state_dict(weights)
    targets = select_targets(model)
    for t in targets:  # the pattern, read back from the file: at most N non-zero weights in every group (a re-fit may set a kept weight to 0:
        # the dense-outputs target gives exactly 0 to the inputs a dead channel never feeds)
        if t.param_name not in saved_dense_layers(record):
            nonzero = (t.weight.detach() != 0).reshape(t.weight.shape[0], -1, pattern.m).sum(dim=-1)
            assert int(nonzero.max()) <= pattern.n, t.param_name
    saved = json.loads(record.read_text())
    assert saved["sparsity"] == pattern.sparsity() and saved["settings"]["targets"]["pattern"] == text
    assert saved["notes"]["nm_dense_layers"] == ["features.0.weight"]  # 1 x 3 x 3 = 9 columns


def saved_dense_layers(record):
    return json.loads(record.read_text())["notes"]["nm_dense_layers"]


def test_nm_refusals_and_sparsities_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x")]
    for args, expected in (
        (
            ["run", "--pattern", "2:4", "--methods", "mp,bn-scale"],
            "--pattern 2:4: bn-scale removes whole channels only (--pattern channels); the pruners that can (some only with certain options): cbs, chita",
        ),
        (["run", "--pattern", "2:4", "--methods", "chita++"], "chita++ reaches N:M only with --chita++-solver backsolve, block-backsolve or iht in one stage"),
        (
            ["run", "--pattern", "2:4", "--methods", "chita", "--chita-solver", "active-set"],
            "chita reaches N:M only with --chita-solver backsolve, block-backsolve or iht",
        ),
        (["run", "--pattern", "2:4", "--sparsities", "0.5,0.7"], "--pattern 2:4 fixes the sparsity at 0.5, but --sparsities has 0.7"),
        (["run", "--pattern", "3"], "--pattern must be unstructured, channels or N:M"),
        (["prune"], "prune needs --sparsity"),
    ):
        assert main([*args, *out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err


def test_the_pattern_enters_the_key_only_away_from_unstructured(tmp_path):
    from reflowbench.config import merge_into, preset
    from reflowbench.harness import plan_sweep
    from reflowbench.harness.run import SweepState

    keys = {}
    for pattern in ("unstructured", "2:4"):
        spec = preset("embedded")
        merge_into(spec, {"targets": {"pattern": pattern}, "sweep": {"sparsities": [0.5], "progress": False}}, "test")
        plan = plan_sweep(spec, check_out=False)
        state = SweepState(plan, log=lambda m: None)
        keys[pattern] = (state.run_key(plan.pruners[0], 0.5, 0), state.settings["targets"])
    assert "pattern" not in keys["unstructured"][1] and keys["2:4"][1]["pattern"] == "2:4"
    assert keys["unstructured"][0] != keys["2:4"][0]


def test_joint_obs_choice_per_group_equals_brute_force_on_a_dense_inverse():
    from reflowbench.pruners.nm import joint_obs_keep

    generator = torch.Generator().manual_seed(1)
    for n, m in ((2, 4), (1, 4), (4, 8)):
        groups = 5
        a = torch.randn(groups, m, m, generator=generator, dtype=torch.float64)
        inverse = a @ a.transpose(1, 2) + 0.5 * torch.eye(m, dtype=torch.float64)  # SPD blocks of F^-1
        w = torch.randn(groups, m, generator=generator, dtype=torch.float64)
        keep = joint_obs_keep(w, inverse, n)
        assert (keep.sum(1) == n).all()
        for g in range(groups):
            best = min(
                itertools.combinations(range(m), m - n),
                key=lambda p: float(0.5 * w[g, list(p)] @ torch.linalg.solve(inverse[g][list(p)][:, list(p)], w[g, list(p)])),
            )
            assert set((~keep[g]).nonzero().flatten().tolist()) == set(best)


def test_the_fisher_inverse_group_blocks_equal_the_dense_inverse():
    from reflowbench.hessian.block_fisher import FisherSpec, LayerFisher

    generator = torch.Generator().manual_seed(2)
    for num_grads, numel, block in ((6, 16, 8), (40, 16, 8), (6, 24, 0), (50, 12, 0)):  # dual and primal forms
        grads = torch.randn(num_grads, numel, generator=generator)
        layer = LayerFisher("x", grads, FisherSpec(block_size=block, damp=0.1, damp_mode="absolute"), torch.device("cpu"))
        side = block or numel
        dense = torch.zeros(numel, numel, dtype=torch.float64)
        for start in range(0, numel, side):
            g = grads[:, start : start + side].double()
            dense[start : start + side, start : start + side] = 0.1 * torch.eye(side, dtype=torch.float64) + g.T @ g / num_grads
        inverse = torch.linalg.inv(dense)
        want = torch.stack([inverse[i : i + 4, i : i + 4] for i in range(0, numel, 4)])
        assert torch.allclose(layer.group_inverse(4), want, atol=1e-5), layer.form
    with pytest.raises(Exception, match="do not split into groups of 8"):
        LayerFisher("y", torch.randn(6, 12), FisherSpec(block_size=12, damp=0.1, damp_mode="absolute"), torch.device("cpu")).group_inverse(8)


def test_woodfisher_joint_nm_runs_and_holds_the_pattern(tmp_path):
    save = tmp_path / "w.pt"
    args = ["prune", "--method", "woodfisher", "--pattern", "2:4", "--woodfisher-nm-selection", "joint", "--woodfisher-num-grads", "64"]
    assert (
        main([*args, "--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--save", str(save), "--record", str(tmp_path / "r.json")]) == 0
    )
    model = build_model("smallcnn")
    model.load_state_dict(torch.load(save, weights_only=True))
    targets = select_targets(model)
    verify_nm(targets, {t.param_name: t.weight.detach() != 0 for t in targets}, SparsityPattern.parse("2:4"))
    assert json.loads((tmp_path / "r.json").read_text())["options"]["nm_selection"] == "joint"


def test_sparsegpt_nm_sweep_with_an_identity_hessian_keeps_the_largest_weights_unchanged():
    """With H = I no column compensates another: the adaptive N:M sweep keeps the N largest |w| of every group and leaves
    them as they were; the magnitude mask's re-fit on a general H equals each row's exact least squares on its support."""
    from reflowbench.pruners import make_pruner
    from reflowbench.reconstruction import InputHessian

    torch.manual_seed(0)
    rows = torch.randn(1, 3, 8, dtype=torch.float64)
    pattern = SparsityPattern.parse("2:4")
    pruner = make_pruner("sparsegpt", {"mask": "adaptive", "refit": False, "damp": 1e-12})
    identity = InputHessian.__new__(InputHessian)
    identity.matrix = lambda: torch.eye(8, dtype=torch.float64).unsqueeze(0)  # type: ignore[method-assign]
    new, keep = pruner.prune_layer_nm("layer", rows, identity, pattern)
    assert torch.equal(keep, keep_top_n(rows.abs().reshape(3, 8), 2, 4).view(1, 3, 8))
    assert torch.allclose(new, rows * keep)
    x = torch.randn(8, 40, dtype=torch.float64)
    general = InputHessian.__new__(InputHessian)
    general.matrix = lambda: (x @ x.T / 40).unsqueeze(0)  # type: ignore[method-assign]
    magnitude = make_pruner("sparsegpt", {"mask": "magnitude", "damp": 1e-12})
    fitted, support = magnitude.prune_layer_nm("layer", rows, general, pattern)
    for row in range(3):
        s = support[0, row]
        h = x @ x.T / 40
        exact = torch.linalg.solve(h[s][:, s], h[s] @ rows[0, row])  # argmin (v - w)^T H (v - w) with v zero off the support
        assert torch.allclose(fitted[0, row, s], exact, atol=1e-8)


def test_the_nm_projection_keeps_n_of_every_group_among_the_allowed_and_whole_layers_that_cannot_hold_it():
    from reflowbench.pruners.nm import nm_projection

    model = build_model("smallcnn")
    targets = select_targets(model)
    pattern = SparsityPattern.parse("2:4")
    project = nm_projection(targets, pattern, torch.device("cpu"))
    total = targets.num_weights
    scores = torch.rand(total, generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(total, dtype=torch.bool)
    allowed[100] = False  # in the first layer (9 columns: kept whole where allowed)
    allowed[500] = False  # in a grouped layer: never kept, its group keeps its 2 best allowed
    support = project(scores, allowed)
    first = targets.names.index("features.0.weight")
    assert first == 0 and bool(support[:288].sum() == 287) and not bool(support[100])  # 32 x 9 weights, all allowed ones kept
    offset = 288
    for t in list(targets)[1:]:
        part = support[offset : offset + t.numel]
        if (t.numel // t.weight.shape[0]) % 4 == 0:
            groups = part.view(-1, 4)
            assert bool((groups.sum(dim=1) == 2).all())
            expected = keep_top_n(torch.where(allowed[offset : offset + t.numel], scores[offset : offset + t.numel], torch.tensor(-1.0)).view(-1, 4), 2, 4)
            assert torch.equal(groups, expected)
        offset += t.numel
    assert not bool(support[500])
