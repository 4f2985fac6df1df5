"""The regression gate (`reflowbench compare`) cannot be fooled: every way a broken pruner used to pass is rebuilt here
with a plugin pruner on the embedded default, and each must exit non-zero, while a magnitude clone still passes."""

import json
import math
import shutil

import pytest

from reflowbench.cli import main
from reflowbench.pruners import PRUNERS
from reflowbench.reports.compare import Cell

PLUGIN = """
import numpy as np
import torch
from reflowbench.pruners import Pruner, register_pruner, masks_from_scores


def _magnitude(targets):
    return {t.param_name: t.weight.detach().abs() for t in targets}


def _random(targets, seed):
    generator = torch.Generator().manual_seed(1234 + seed)
    return {t.param_name: torch.rand(t.weight.shape, generator=generator) for t in targets}


@register_pruner("gate-clone", "magnitude, as mp (must pass the gate)")
class Clone(Pruner):
    def prune(self, model, targets, sparsity, ctx):
        return masks_from_scores(targets, _magnitude(targets), sparsity)


@register_pruner("gate-random", "random masks (must fail)")
class Random(Pruner):
    def prune(self, model, targets, sparsity, ctx):
        return masks_from_scores(targets, _random(targets, ctx.seed), sparsity)


@register_pruner("gate-flaky", "magnitude on seeds 0 and 1, random on seed 2 (must fail: unstable)")
class Flaky(Pruner):
    def prune(self, model, targets, sparsity, ctx):
        scores = _random(targets, ctx.seed) if ctx.seed == 2 else _magnitude(targets)
        return masks_from_scores(targets, scores, sparsity)
"""

QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress", "--no-report"]
SPARSITIES = "0.5,0.7,0.9"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The baseline (mp) and one candidate folder per plugin, all on the same settings, seeds 0-2."""
    root = tmp_path_factory.mktemp("gate")
    (root / "gate_plugin.py").write_text(PLUGIN)
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(root))
    patch.setenv("REFLOWBENCH_PLUGINS", "gate_plugin")
    made = {}
    try:
        for name, methods, sparsities, extra in (
            ("baseline", "mp", SPARSITIES, []),
            ("clone", "gate-clone", SPARSITIES, []),
            ("random", "gate-random", SPARSITIES, []),
            ("flaky", "gate-flaky", SPARSITIES, []),
            ("partial", "gate-clone", "0.5", []),
            ("other-settings", "gate-clone", SPARSITIES, ["--calib-batches", "3"]),
            ("other-pattern", "mp", "0.5", ["--pattern", "2:4"]),
            ("other-corrections", "gate-clone", "0.5", ["--corrections", "none,reflow,statcorr"]),
        ):
            out = root / name
            args = ["run", "--methods", methods, "--sparsities", sparsities, "--seeds", "0,1,2", "--out", str(out), *QUICK, *extra]
            assert main(args) == 0
            made[name] = out
        nan = root / "nan"
        shutil.copytree(made["clone"], nan)
        record_path = sorted((nan / "runs").glob("gate-clone_s0.7_seed1_*.json"))[0]
        record = json.loads(record_path.read_text())
        record["reflow"]["top1"] = float("nan")
        record_path.write_text(json.dumps(record))
        made["nan"] = nan
        yield made
    finally:
        patch.undo()
        for name in ("gate-clone", "gate-random", "gate-flaky"):
            PRUNERS.pop(name, None)


def _gate(folders, candidate, method, capsys, *extra):
    capsys.readouterr()
    code = main(["compare", str(folders[candidate]), str(folders["baseline"]), "--method", method, "--against", "mp", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_magnitude_clone_passes(folders, capsys):
    code, out, _ = _gate(folders, "clone", "gate-clone", capsys)
    assert code == 0 and "Verdict: PASS" in out and "(paired)" in out and "0 regressions" in out


def test_a_random_pruner_fails(folders, capsys):
    code, out, _ = _gate(folders, "random", "gate-random", capsys)
    assert code == 1 and "Verdict: FAIL" in out and "REGRESSION" in out


def test_a_pruner_random_on_one_seed_is_unstable_and_fails(folders, capsys):
    """Magnitude on two seeds, random on the third: its own spread used to widen its tolerance until it passed."""
    code, out, _ = _gate(folders, "flaky", "gate-flaky", capsys)
    assert code == 1 and "UNSTABLE" in out and "Verdict: FAIL" in out


def test_missing_cells_fail_unless_allowed_and_then_are_said(folders, capsys):
    code, out, _ = _gate(folders, "partial", "gate-clone", capsys)
    assert code == 1 and out.count("| MISSING |") == 4 and "4 missing" in out  # 0.7 and 0.9, pruned and + REFLOW
    code, out, _ = _gate(folders, "partial", "gate-clone", capsys, "--allow-missing")
    assert code == 0 and "4 missing cells allowed by --allow-missing" in out and "Verdict: PASS" in out


def test_other_settings_are_refused_with_what_differs(folders, capsys):
    code, out, err = _gate(folders, "other-settings", "gate-clone", capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "other settings" in line and "reflow.calib_batches (candidate 3, baseline 2)" in line and "Traceback" not in line


@pytest.mark.parametrize(
    "candidate,method,differs",
    [("other-pattern", "mp", 'targets.pattern (candidate "2:4", baseline "unstructured")'), ("other-corrections", "gate-clone", "corrections.corrections")],
)
def test_another_pattern_or_other_corrections_are_refused(folders, capsys, candidate, method, differs):
    """A 2:4 candidate against an unstructured baseline, or one corrected otherwise, is not a comparison of pruners."""
    code, out, err = _gate(folders, candidate, method, capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "other settings" in line and differs in line and "Traceback" not in line, line


def test_a_non_finite_accuracy_fails(folders, capsys):
    code, out, _ = _gate(folders, "nan", "gate-clone", capsys)
    assert code == 1 and "NOT FINITE" in out and "Verdict: FAIL" in out


def test_the_allowed_drop_is_never_widened_by_the_candidate():
    """The old rule (tolerance + the larger of the two spreads) passed a 10.7-point drop whose own spread was 14.8."""
    noisy = Cell("m", 0.3, "top-1", (80.0, 14.8, 3), (90.7, 0.1, 3), 1.0)
    assert noisy.allowed_drop == pytest.approx(1.1) and noisy.verdict == "UNSTABLE"
    steady_drop = Cell("m", 0.3, "top-1", (88.0, 0.1, 3), (90.7, 0.1, 3), 1.0)
    assert steady_drop.verdict == "REGRESSION"
    paired = Cell("m", 0.3, "top-1", (90.6, 0.3, 3), (90.7, 0.3, 3), 1.0, paired=(-0.1, -0.1, -0.1))
    assert paired.verdict == "same" and paired.difference == pytest.approx(-0.1)
    assert Cell("m", 0.3, "top-1", (math.nan, math.nan, 3), (90.7, 0.1, 3), 1.0, finite=False).verdict == "NOT FINITE"
    assert Cell("m", 0.3, "top-1", (math.nan, math.nan, 0), (90.7, 0.1, 3), 1.0, missing_seeds=(0, 1, 2)).verdict == "MISSING"


def test_compare_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 pass; 1 fail" in text and "2 the gate could not judge" in text and "any non-zero exit" in text
