"""A broken plug-in pruner is one line naming it and the fix, never a traceback, for every command (`list` included)."""

import sys

import pytest

from reflowbench.cli import main
from reflowbench.pruners import PRUNERS

HEAD = "from dataclasses import dataclass\nfrom reflowbench.pruners import Pruner, register_pruner, masks_from_scores\n"
MAGNITUDE = "        return masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, sparsity)\n"
QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress", "--seeds", "0", "--sparsities", "0.5"]

PLUGINS = {
    "raises": (HEAD + "x = 1 / 0\n", ["ZeroDivisionError: division by zero at plugin_raises.py:3 while being imported"]),
    "taken": (
        HEAD + "@register_pruner('mp', 'a second mp')\nclass P(Pruner):\n    def prune(self, model, targets, sparsity, ctx):\n" + MAGNITUDE,
        ["a pruner named 'mp' is already registered (reflowbench.pruners.magnitude.MagnitudePruner)", "register P under another name"],
    ),
    "unsafe": (
        HEAD + "@register_pruner('../escape', 'a path')\nclass P(Pruner):\n    def prune(self, model, targets, sparsity, ctx):\n" + MAGNITUDE,
        ["pruner name '../escape' (class P) is not a safe name"],
    ),
    "flags": (
        HEAD
        + "@dataclass\nclass O:\n    solver: str = 'x'\n"
        + "@register_pruner('chita++-x', 'hi')\nclass P(Pruner):\n    Options = O\n    def prune(self, model, targets, sparsity, ctx):\n"
        + MAGNITUDE
        + "@dataclass\nclass O2:\n    x_solver: str = 'y'\n"
        + "@register_pruner('chita++', 'clash')\nclass Q(Pruner):\n    Options = O2\n    def prune(self, model, targets, sparsity, ctx):\n"
        + MAGNITUDE,
        ["a pruner named 'chita++' is already registered"],
    ),
    "clash": (
        HEAD
        + "@dataclass\nclass O:\n    grads: int = 1\n"
        + "@register_pruner('woodfisher-num', 'clash')\nclass P(Pruner):\n    Options = O\n    def prune(self, model, targets, sparsity, ctx):\n"
        + MAGNITUDE,
        ["option flag --woodfisher-num-grads is also pruner 'woodfisher''s flag: rename the option or the pruner"],
    ),
    "cliflag": (
        HEAD
        + "@dataclass\nclass O:\n    batches: int = 1\n"
        + "@register_pruner('calib', 'collides with --calib-batches')\nclass P(Pruner):\n    Options = O\n    def prune(self, model, targets, sparsity, ctx):\n"
        + MAGNITUDE,
        ["pruner 'calib'", "an option flag collides with one of reflowbench's own", "--calib-batches"],
    ),
}


@pytest.mark.parametrize("case", sorted(PLUGINS))
@pytest.mark.parametrize("command", [["list"], ["run", "--help"]])
def test_a_broken_plugin_is_one_line_for_every_command(tmp_path, monkeypatch, capsys, case, command):
    source, expected = PLUGINS[case]
    module = f"plugin_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", module)
    before = dict(PRUNERS)
    try:
        code = main(command)
    except SystemExit as exit_:  # --help exits 0 when nothing is wrong: a broken plugin must stop before it
        code = exit_.code
    finally:
        PRUNERS.clear()
        PRUNERS.update(before)
        sys.modules.pop(module, None)  # imported afresh by the next case
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0] and all(part in err[0] for part in expected), err[0]


CRASHING = {
    "omits": (
        "@register_pruner('omits-mask', 'no mask for the first target')\nclass P(Pruner):\n    def prune(self, model, targets, sparsity, ctx):\n"
        "        masks = masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, sparsity)\n"
        "        masks.pop(next(iter(masks)))\n        return masks\n",
        ["omits-mask at sparsity 0.5, seed 0: the pruner returned no mask for"],
    ),
    "raises": (
        "@register_pruner('raises-inside', 'a bug')\nclass P(Pruner):\n    def prune(self, model, targets, sparsity, ctx):\n"
        "        raise RuntimeError('shape mismatch in my code')\n",
        ["raises-inside at sparsity 0.5, seed 0: the pruner raised RuntimeError: shape mismatch in my code at", "REFLOWBENCH_DEBUG=1"],
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHING))
def test_a_pruner_that_omits_a_mask_or_raises_is_one_line(tmp_path, monkeypatch, capsys, case):
    source, expected = CRASHING[case]
    module = f"crashing_{case}"
    (tmp_path / f"{module}.py").write_text(HEAD + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REFLOWBENCH_PLUGINS", module)
    name = source.split("'")[1]
    try:
        code = main(["run", "--methods", name, "--out", str(tmp_path / "o"), *QUICK])
    finally:
        PRUNERS.pop(name, None)
        sys.modules.pop(module, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert all(part in err[0] for part in expected), err[0]
