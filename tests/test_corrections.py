"""The corrections registry: every correction's contract, each one checked against what it claims, the harness's rows
and checks, and the clear errors where a correction cannot apply."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from reflowbench.config import CorrectionSpec, merge_into, preset
from reflowbench.corrections import CORRECTIONS, Correction, CorrectionContext, CorrectionCost, make_correction, refuse_inapplicable, register_correction
from reflowbench.corrections.variance_match import shrunk_log_scales
from reflowbench.errors import ConfigError, MaskError, NoBatchNormError
from reflowbench.models import build_model
from reflowbench.models.fold_bn import fold_batchnorm
from reflowbench.pruners import apply_masks, masks_from_scores, select_targets
from reflowbench.reflow import recalibrate_bn
from reflowbench.reflow.moments import collect_moments, norm_layers


def _batches(count: int = 6, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = [(torch.randn(size, 1, 8, 8, generator=generator), torch.zeros(size, dtype=torch.long)) for _ in range(count)]
    return lambda: iter(data)


def _dense(kind: str) -> nn.Module:
    """A small CNN (8 conv layers) with random weights and, for BN, random running statistics; folded for ``folded``."""
    torch.manual_seed(0)
    model = build_model({"bn": "smallcnn", "gn": "smallcnn-gn", "ln": "smallcnn-ln", "folded": "smallcnn"}[kind])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, nn.BatchNorm2d):  # statistics of the data the tests feed, as a trained network's are
                module.running_var.fill_(1.0)
    if kind in ("bn", "folded"):
        recalibrate_bn(model, _batches(seed=9)(), 6)
    return fold_batchnorm(model, "smallcnn") if kind == "folded" else model.eval()


def _pruned(dense: nn.Module, sparsity: float = 0.8):
    model = copy.deepcopy(dense)
    targets = select_targets(model)
    masks = masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, sparsity)
    apply_masks(targets, masks)
    return model, targets


def _context(dense: nn.Module, targets, batches=None) -> CorrectionContext:
    batches = batches or _batches()
    return CorrectionContext(
        dense=dense,
        calibration=batches,
        recalibrate=lambda model: recalibrate_bn(model, batches(), 6),
        layers=list(dict.fromkeys(t.module_name for t in targets)),
        device=torch.device("cpu"),
    )


KINDS = ("bn", "gn", "ln", "folded")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CORRECTIONS))
def test_every_correction_keeps_the_zeros_and_finite_weights_or_refuses_in_one_line(name, kind):
    dense = _dense(kind)
    model, targets = _pruned(dense)
    zeros = {t.param_name: t.weight.detach() == 0 for t in targets}
    correction = make_correction(name)
    why = correction.cannot_apply(model)
    expected_refusals = {("reflow", "gn"), ("reflow", "ln"), ("reflow", "folded"), ("statcorr", "folded")}
    assert (why is not None) == ((name, kind) in expected_refusals), why
    if why is not None:
        with pytest.raises(NoBatchNormError) as refusal:
            refuse_inapplicable(correction, model, f"smallcnn ({kind})")
        line = str(refusal.value)
        assert "\n" not in line and f"--corrections {name} cannot apply" in line and "choose among those that do: --corrections none," in line
        assert name not in line.split("choose among those that do")[1].split(",")  # the fix never offers the refused one
        return
    cost = correction.apply(model, _context(dense, targets))
    assert isinstance(cost, CorrectionCost) and cost.images == 6 * 32 and cost.passes >= 1
    for t in targets:
        weight = model.get_parameter(t.param_name).detach()
        assert torch.isfinite(weight).all() and not weight[zeros[t.param_name]].any(), t.param_name
    assert all(torch.isfinite(p).all() for p in model.parameters()) and all(torch.isfinite(b).all() for b in model.buffers())
    assert torch.isfinite(model(torch.randn(4, 1, 8, 8))).all()
    assert not model.training


def _channel_stats(model, names, batches):
    modules = dict(model.named_modules())
    moments, _, _ = collect_moments(model, batches(), {n: modules[n] for n in names})
    return {n: (m.mean, m.std()) for n, m in moments.items()}


@pytest.mark.parametrize("kind", ["bn", "gn", "ln"])
def test_statcorr_gives_every_normalisation_layer_the_dense_mean_and_std_on_the_calibration_images(kind):
    dense = _dense(kind)
    model, targets = _pruned(dense, 0.85)
    names = [n for n, _ in norm_layers(model)]
    before = _channel_stats(model, names, _batches())
    make_correction("statcorr").apply(model, _context(dense, targets))
    want, got = _channel_stats(dense, names, _batches()), _channel_stats(model, names, _batches())
    assert any(not torch.allclose(before[n][1], want[n][1], rtol=0.05) for n in names)  # pruning moved them
    for n in names:
        assert torch.allclose(got[n][0], want[n][0], atol=1e-4) and torch.allclose(got[n][1], want[n][1], rtol=1e-3), n


@pytest.mark.parametrize("kind", ["folded", "gn", "bn"])
def test_repair_gives_every_pruned_layer_the_dense_mean_and_std_on_the_calibration_images(kind):
    dense = _dense(kind)
    model, targets = _pruned(dense, 0.85)
    names = list(dict.fromkeys(t.module_name for t in targets))
    make_correction("repair").apply(model, _context(dense, targets))
    want, got = _channel_stats(dense, names, _batches()), _channel_stats(model, names, _batches())
    for n in names:
        live = got[n][1] > 0  # a channel the pruning killed (no spread left) keeps scale 1: only its mean moves
        assert torch.allclose(got[n][0], want[n][0], atol=1e-4), n
        assert torch.allclose(got[n][1][live], want[n][1][live], rtol=1e-3) and live.any(), n
    other = _batches(seed=5)  # images it never saw: closer to the dense outputs than the pruned network was
    assert (model(next(other())[0]) - dense(next(other())[0])).abs().mean() < (_pruned(dense, 0.85)[0](next(other())[0]) - dense(next(other())[0])).abs().mean()


def test_naive_variance_match_gives_every_pruned_layer_the_dense_spread_and_keeps_its_mean_direction():
    dense = _dense("folded")
    model, targets = _pruned(dense, 0.85)
    names = list(dict.fromkeys(t.module_name for t in targets))
    correction = make_correction("variance-match", CorrectionSpec(corrections=["variance-match"], variance_match_shrinkage="none"))
    cost = correction.apply(model, _context(dense, targets))
    assert cost.details["shrink_factors"] == {name: 1.0 for name in names}
    want, got = _channel_stats(dense, names, _batches()), _channel_stats(model, names, _batches())
    for n in names:
        live = got[n][1] > 0
        assert torch.allclose(got[n][1][live], want[n][1][live], rtol=1e-3), n


def test_split_half_shrinkage_keeps_reliable_differences_and_drops_noise():
    generator = torch.Generator().manual_seed(0)
    signal = torch.linspace(-1, 1, 64, dtype=torch.float64)
    small_noise = 0.01 * torch.randn(2, 64, generator=generator, dtype=torch.float64)
    scales, shrink = shrunk_log_scales(signal, signal + small_noise[0], signal + small_noise[1])
    assert shrink > 0.99 and torch.allclose(scales, signal, atol=0.01)
    noise = torch.randn(2, 64, generator=generator, dtype=torch.float64)
    pure = (noise[0] + noise[1]) / 2 + 0.3  # the channels differ by nothing but sampling noise around a common 0.3
    scales, shrink = shrunk_log_scales(pure, 0.3 + noise[0], 0.3 + noise[1])
    assert shrink < 0.2 and (scales - pure.mean()).abs().max() < 0.2 * (pure - pure.mean()).abs().max()  # pulled to the common factor
    dead = signal.clone()
    dead[3] = float("nan")
    scales, _ = shrunk_log_scales(dead, dead, dead, "none")
    assert scales[3] == 0 and torch.equal(scales[:3], signal[:3])


def test_variance_match_before_reflow_is_cancelled_where_a_layer_has_its_own_batchnorm():
    """What its docstring says follows from the algebra: a rescaled conv feeding its own recalibrated BN changes nothing."""
    dense = _dense("bn")
    model, targets = _pruned(dense, 0.8)
    reflowed = copy.deepcopy(model)
    recalibrate_bn(reflowed, _batches()(), 6)
    ctx = _context(dense, targets)
    ctx.layers = [n for n in ctx.layers if n != "fc"]  # every layer but the classifier feeds its own BN
    make_correction("variance-match").apply(model, ctx)
    x = next(_batches(seed=3)())[0]
    assert torch.allclose(model(x), reflowed(x), atol=1e-3)


def test_fold_bn_computes_the_same_function_and_leaves_no_batchnorm():
    for name, shape in (("smallcnn", (3, 1, 8, 8)), ("resnet20", (3, 3, 32, 32)), ("mobilenetv1", (3, 3, 32, 32))):
        model = randomize_batchnorm(build_model(name), mean=1.0)
        folded = fold_batchnorm(model, name)
        x = torch.randn(*shape)
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert [t.module_name for t in select_targets(folded)] == [t.module_name for t in select_targets(model)]

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ConfigError, match="--fold-bn: torch.fx cannot trace odd.*without --fold-bn"):
        fold_batchnorm(Untraceable(), "odd")


def test_correction_settings_enter_the_run_key_only_away_from_reflow_alone():
    assert CorrectionSpec().key_fields() is None
    assert CorrectionSpec(corrections=["none", "reflow"]).key_fields() is None  # naming the pruned row changes nothing
    assert CorrectionSpec(corrections=["statcorr", "reflow"]).key_fields() == {"corrections": ["reflow", "statcorr"]}
    assert CorrectionSpec(corrections=["none"]).key_fields() == {"corrections": []}
    assert CorrectionSpec(corrections=["variance-match"]).key_fields() == {"corrections": ["variance-match"], "variance_match_shrinkage": "split-half"}
    with pytest.raises(ConfigError, match="--corrections"):
        CorrectionSpec(corrections=["reflow", "reflow"]).validate()
    with pytest.raises(ConfigError, match="variance-match-shrinkage"):
        CorrectionSpec(variance_match_shrinkage="median").validate()
    with pytest.raises(ConfigError, match="unknown correction 'statcor' in --corrections: choose among none, reflow"):
        make_correction("statcor")


def _spec(out, corrections, model="smallcnn", **model_settings):
    spec = preset("embedded")
    merge_into(
        spec,
        {
            "model": {"model": model, **model_settings},
            "reflow": {"calib_batches": 4, "calib_batch_size": 64, "diag_images": 128},
            "corrections": {"corrections": corrections},
            "sweep": {"sparsities": [0.8], "seeds": [0], "out": str(out), "progress": False},
        },
        "test",
    )
    return spec


def test_a_sweep_evaluates_every_correction_from_the_same_pruned_weights(tmp_path):
    from reflowbench.harness import plan_sweep, run_sweep

    run_sweep(plan_sweep(_spec(tmp_path / "all", ["none", "reflow", "statcorr", "variance-match", "repair"])), log=lambda m: None)
    run_sweep(plan_sweep(_spec(tmp_path / "default", ["reflow"])), log=lambda m: None)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "all" / "runs").glob("*.json")]
    (default,) = [json.loads(p.read_text()) for p in (tmp_path / "default" / "runs").glob("*.json")]
    assert "corrections" not in default and "corrections" not in default["settings"]  # the default's records as before
    assert record["key"] != default["key"] and record["settings"]["corrections"]["corrections"] == ["reflow", "repair", "statcorr", "variance-match"]
    assert record["pruned"] == default["pruned"] and record["reflow"]["top1"] == default["reflow"]["top1"]  # REFLOW unchanged by the others
    assert set(record["corrections"]) == {"statcorr", "variance-match", "repair"}
    for name, entry in record["corrections"].items():
        assert entry["images"] == 256 and entry["passes"] > 1 and entry["seconds"] > 0 and len(entry["ratio"]) == len(record["variance"]["layers"])
        assert {f"correct_{name}", f"eval_{name}"} <= set(record["cost"])
    shrink = record["corrections"]["variance-match"]["details"]["shrink_factors"]  # one per pruned layer, in [0, 1]
    assert len(shrink) == record["targets"]["num_layers"] and all(0.0 <= f <= 1.0 for f in shrink.values())
    assert "details" not in record["corrections"]["statcorr"]
    with open(tmp_path / "all" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["correction"], r["reflow"]) for r in rows] == [("none", "0"), ("reflow", "1"), ("repair", ""), ("statcorr", ""), ("variance-match", "")]
    report = (tmp_path / "all" / "report.md").read_text()
    assert "## Corrections table" in report and "figures/corrections.png" in report and "| smallcnn | mp | 0.8 | statcorr | 1 |" in report


def test_networks_without_batchnorm_run_with_the_corrections_that_apply_and_refuse_reflow(tmp_path, capsys):
    from reflowbench.cli import main
    from reflowbench.harness import plan_sweep, run_sweep

    checkpoint = tmp_path / "gn.pt"  # untrained weights: the test is about what runs, not how well (training one takes minutes)
    torch.save(build_model("smallcnn-gn").state_dict(), checkpoint)
    run_sweep(plan_sweep(_spec(tmp_path / "gn", ["none", "statcorr", "repair"], model="smallcnn-gn", checkpoint=str(checkpoint))), log=lambda m: None)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "gn" / "runs").glob("*.json")]
    assert "reflow" not in record and set(record["corrections"]) == {"statcorr", "repair"}
    assert record["variance"]["layers"][0] == "features.1" and "reflow_ratio" not in record["variance"]  # GroupNorm outputs are the signal points
    assert "## Corrections table" in (tmp_path / "gn" / "report.md").read_text()
    run_sweep(plan_sweep(_spec(tmp_path / "folded", ["none", "repair"], fold_bn=True)), log=lambda m: None)
    (folded,) = [json.loads(p.read_text()) for p in (tmp_path / "folded" / "runs").glob("*.json")]
    assert folded["settings"]["model"]["fold_bn"] is True and folded["variance"]["layers"][0] == "features.0"  # the folded convs
    assert abs(folded["dense"]["top1"] - json.loads(next((tmp_path / "gn" / "runs").glob("*.json")).read_text())["dense"]["top1"]) < 100  # evaluated
    base = ["run", "--preset", "embedded", "--out", str(tmp_path / "x"), "--sparsities", "0.8", "--seeds", "0", "--no-progress"]
    for extra, expected in (
        (
            ["--model", "smallcnn-gn", "--checkpoint", str(checkpoint)],
            "--corrections reflow cannot apply to smallcnn-gn: it re-estimates BatchNorm running statistics and its normalisation (GroupNorm) keeps none",
        ),
        (["--fold-bn", "--corrections", "statcorr"], "--corrections statcorr cannot apply to smallcnn with --fold-bn"),
        (["--corrections", "reflow,bogus"], "bogus"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err


def test_a_correction_that_revives_a_pruned_weight_or_breaks_the_network_is_caught(tmp_path):
    from reflowbench.errors import BrokenModelError
    from reflowbench.harness import plan_sweep
    from reflowbench.harness.run import SweepState, prune_and_measure

    @register_correction("test-revive")
    class Revive(Correction):
        description = "writes 1 into every weight"

        def apply(self, model, ctx):
            with torch.no_grad():
                for name in ctx.layers:
                    dict(model.named_modules())[name].weight.fill_(1.0)
            return CorrectionCost(images=0, batches=0, passes=0)

    @register_correction("test-nan")
    class NotFinite(Correction):
        description = "writes NaN into a BN weight"

        def apply(self, model, ctx):
            with torch.no_grad():
                norm_layers(model)[0][1].weight.fill_(float("nan"))
            return CorrectionCost(images=0, batches=0, passes=0)

    try:
        for name, error, message in (
            (("test-revive"), MaskError, "test-revive: .* pruned weights of .* are not zero any more"),
            ("test-nan", BrokenModelError, "after test-nan"),
        ):
            plan = plan_sweep(_spec(tmp_path / name, ["reflow", name]))
            state = SweepState(plan, log=lambda m: None)
            pruner = plan.pruners[0]
            with pytest.raises(error, match=message):
                prune_and_measure(state, pruner, 0.8, 0, state.run_key(pruner, 0.8, 0))
    finally:
        CORRECTIONS.pop("test-revive", None)
        CORRECTIONS.pop("test-nan", None)


@pytest.mark.parametrize("name, kind", [("statcorr", "gn"), ("repair", "folded"), ("variance-match", "bn")])
def test_the_dense_moments_are_measured_once_per_shared_cache_and_give_the_same_correction(name, kind):
    """The sweep keeps one moments cache per seed: a second run (or correction) of the seed reuses the dense pass,
    with the same corrected weights, and its cost says one pass fewer."""
    dense = _dense(kind)
    cache: dict = {}
    results = []
    for _ in range(2):
        model, targets = _pruned(dense)
        context = _context(dense, targets)
        context.moments_cache = cache
        cost = make_correction(name).apply(model, context)
        results.append((cost, {k: v.clone() for k, v in model.state_dict().items()}))
    (first, first_state), (second, second_state) = results
    assert second.passes == first.passes - 1 and (second.images, second.batches) == (first.images, first.batches)
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state) and len(cache) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["statcorr", "repair", "variance-match"])
def test_a_layer_by_layer_correction_in_stages_gives_the_pass_per_layer_weights(name, kind, monkeypatch):
    """The one staged pass (reflow/staged.py) and a pass per layer, cut short after it, correct the same pruned
    network to the same parameters and statistics, bit for bit, and say how many passes they made."""
    import reflowbench.corrections.base as base

    dense = _dense(kind)
    if make_correction(name).cannot_apply(dense) is not None:
        return
    results = {}
    for staged in (True, False):
        if not staged:
            monkeypatch.setattr(base, "staged_layer_moments", lambda *args, **kwargs: None)
        model, targets = _pruned(dense)
        context = _context(dense, targets)
        cost = make_correction(name).apply(model, context)
        results[staged] = (model.state_dict(), cost.passes)
    (staged_state, staged_passes), (per_layer_state, per_layer_passes) = results[True], results[False]
    assert staged_state.keys() == per_layer_state.keys() and all(torch.equal(staged_state[k], per_layer_state[k]) for k in staged_state)
    assert staged_passes < per_layer_passes


def test_the_staged_run_declines_what_it_cannot_stage():
    from reflowbench.reflow.staged import staged_layer_moments

    model = _dense("bn")
    names = [n for n, _ in norm_layers(model)]
    cpu = torch.device("cpu")
    assert staged_layer_moments(model, _batches(), names, 1, cpu) is not None
    assert staged_layer_moments(model, _batches(), names[::-1], 1, cpu) is None  # out of forward order
    assert staged_layer_moments(model, _batches(), ["no.such.layer"], 1, cpu) is None
    assert staged_layer_moments(model, _batches(), names, 1, cpu, cache_bytes=1) is None  # the frontier would not fit

    class Branches(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.norm(x) if x.sum() > 0 else x

    assert staged_layer_moments(Branches().eval(), _batches(), ["norm"], 1, cpu) is None
