"""Bad input, probe by probe: exit status 2, one line naming the problem (and the fix), no traceback,
nothing written under --out, and no work done first (the dense model is never evaluated)."""

import json
import os

import pytest
import torch

from conftest import SMALL_SUBSETS
from reflowbench.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, cifar_like):
    """Broken inputs built once: checkpoints with NaN, code, text; a file where a folder belongs; configs."""
    root = tmp_path_factory.mktemp("probes")
    state = torch.load(cifar_like["checkpoint"], weights_only=True)
    nan_bn = dict(state)
    nan_bn["bn1.running_var"] = state["bn1.running_var"].clone()
    nan_bn["bn1.running_var"][3] = float("nan")
    torch.save(nan_bn, root / "nan_bn.pt")
    inf_w = dict(state)
    inf_w["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"].clone()
    inf_w["layer2.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(inf_w, root / "inf_weight.pt")

    class Code:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Code()}, root / "code.pt")
    (root / "text.pt").write_text("not a checkpoint\n")
    from reflowbench.models import build_model

    torch.save(build_model("smallcnn", num_classes=10).state_dict(), root / "smallcnn.pt")
    (root / "a_file").write_text("x")
    (root / "ckpt_dir").mkdir()
    (root / "empty_dir").mkdir()
    (root / "list.json").write_text("[1, 2]")
    (root / "seeds_str.json").write_text(json.dumps({"sweep": {"seeds": "0"}}))
    (root / "nested_wrong.json").write_text(json.dumps({"model": {"calib_batches": 2}}))
    (root / "broken.json").write_text("{ nope")
    return {"root": root, **cifar_like}


def _cifar(files, checkpoint=None):
    return ["--model", "resnet20", "--checkpoint", str(checkpoint or files["checkpoint"]), "--data", str(files["archive"]), "--partial-data"]


PROBES = {
    # silently wrong before: now refused
    "nan in a BN tensor": (lambda f: ["run", *_cifar(f, f["root"] / "nan_bn.pt")], "NaN or Inf values in 1 tensor(s): bn1.running_var"),
    "inf in a weight": (lambda f: ["run", *_cifar(f, f["root"] / "inf_weight.pt")], "layer2.0.conv1.weight (1 of"),
    "diag images 0": (lambda f: ["run", *_cifar(f), "--diag-images", "0"], "--diag-images must be an integer >= 1"),
    "ema momentum 0": (lambda f: ["run", *_cifar(f), "--reflow-mode", "ema", "--reflow-momentum", "0"], "--reflow-momentum must be in (0, 1]"),
    "ema momentum 1.5": (lambda f: ["run", *_cifar(f), "--reflow-momentum", "1.5"], "--reflow-momentum must be in (0, 1]"),
    "nan memory budget": (lambda f: ["run", *_cifar(f), "--memory-budget-gb", "nan"], "--memory-budget-gb must be a positive number"),
    "duplicate sparsities": (lambda f: ["run", *_cifar(f), "--sparsities", "0.5,0.5"], "--sparsities lists 0.5 twice"),
    "duplicate seeds": (lambda f: ["run", *_cifar(f), "--seeds", "1,1"], "--seeds lists 1 twice"),
    # tracebacks before
    "missing checkpoint": (lambda f: ["run", *_cifar(f, f["root"] / "missing.pt")], "does not exist: pass --checkpoint PATH"),
    "checkpoint is a folder": (lambda f: ["run", *_cifar(f, f["root"] / "ckpt_dir")], "is not a file: pass --checkpoint PATH"),
    "text file as checkpoint": (lambda f: ["run", *_cifar(f, f["root"] / "text.pt")], "cannot be loaded with weights_only=True"),
    "pickled code": (lambda f: ["run", *_cifar(f, f["root"] / "code.pt")], "it pickles code (posix.system), which is never run"),
    "--out is a file": (lambda f: ["run", *_cifar(f), "--out", str(f["root"] / "a_file")], "is a file, not a folder"),
    "--out under a file": (lambda f: ["run", *_cifar(f), "--out", str(f["root"] / "a_file" / "sub")], "which is a file, not a folder"),
    "--save into a missing folder": (
        lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--save", str(f["root"] / "nope" / "x.pt")],
        "does not exist; create it first",
    ),
    "--record into a missing folder": (
        lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--record", str(f["root"] / "nope" / "r.json")],
        "does not exist; create it first",
    ),
    "config is a list": (lambda f: ["run", "--config", str(f["root"] / "list.json")], "settings must be a JSON object"),
    "config value of the wrong type": (lambda f: ["run", "--config", str(f["root"] / "seeds_str.json")], "setting 'seeds' must be a list of an integer"),
    "config field in the wrong section": (
        lambda f: ["run", "--config", str(f["root"] / "nested_wrong.json")],
        "section 'model' has no setting 'calib_batches'",
    ),
    "config is not JSON": (lambda f: ["run", "--config", str(f["root"] / "broken.json")], "not valid JSON"),
    "calib batch size 0": (lambda f: ["run", *_cifar(f), "--calib-batch-size", "0"], "--calib-batch-size must be an integer >= 1"),
    "eval batch size -1": (lambda f: ["run", *_cifar(f), "--eval-batch-size", "-1"], "--eval-batch-size must be an integer >= 1"),
    "threads -1": (lambda f: ["run", *_cifar(f), "--threads", "-1"], "--threads must be >= 0"),
    "large negative seed": (lambda f: ["run", *_cifar(f), "--seeds", "-99999999999"], "seeds must be in [0, 2147483647]"),
    "prune seed negative": (lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--seed", "-5"], "seeds must be in [0, 2147483647]"),
    # late before: now before any model is loaded
    "woodfisher damp 0": (
        lambda f: ["run", *_cifar(f), "--methods", "mp,woodfisher", "--woodfisher-damp", "0"],
        "pruner woodfisher: --woodfisher-damp must be a positive number",
    ),
    "woodfisher dtype": (lambda f: ["run", *_cifar(f), "--methods", "woodfisher", "--woodfisher-dtype", "int8"], "--woodfisher-dtype must be one of"),
    "woodfisher schedule": (lambda f: ["run", *_cifar(f), "--methods", "woodfisher", "--woodfisher-schedule", "fast"], "--woodfisher-schedule must be one of"),
    "calib batches 0": (lambda f: ["run", *_cifar(f), "--calib-batches", "0"], "--calib-batches must be an integer >= 1"),
    # misleading messages before
    "empty sparsity list": (lambda f: ["run", *_cifar(f), "--sparsities", ","], "--sparsities is empty"),
    "too few training images": (
        lambda f: ["run", *_cifar(f), "--diag-images", "500"],
        "heldout needs 500 images but its 20% share holds 24 (lower --diag-images)",
    ),
    "too few Fisher images": (
        lambda f: ["run", *_cifar(f), "--methods", "mp,chita++"],
        "fisher needs 8000 images but its 40% share holds 48 (lower --chita++-num-grads or --chita++-minibatch)",
    ),
    "sparsity 1": (lambda f: ["run", *_cifar(f), "--sparsities", "1.0"], "sparsity must be in [0, 1)"),
    "report sparsity 2": (lambda f: ["run", *_cifar(f), "--report-sparsity", "2"], "sparsity must be in [0, 1)"),
    "prune sparsity -0.1": (lambda f: ["prune", *_cifar(f), "--sparsity", "-0.1"], "got -0.1 in --sparsity;"),  # its own flag named, not --sparsities
    "prune without a sparsity": (lambda f: ["prune", *_cifar(f)], "prune needs --sparsity"),
    # a one-method command refuses the sweep flags its own flags replace, all three alike
    "prune given --sparsities": (lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--sparsities", "0.5,0.6"], "use --sparsity instead of --sparsities"),
    "prune given --methods": (lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--methods", "mp,cbs"], "use --method instead of --methods"),
    "prune given --seeds": (lambda f: ["prune", *_cifar(f), "--sparsity", "0.5", "--seeds", "0,1"], "use --seed instead of --seeds"),
    "tune given --sparsities": (lambda f: ["tune", *_cifar(f), "--sparsities", "0.5"], "use --at-sparsities instead of --sparsities"),
    "ablate-reflow given --methods": (lambda f: ["ablate-reflow", *_cifar(f), "--methods", "mp"], "use --method instead of --methods"),
    # dataset / model mismatches, caught by the tool and not by a conv layer
    "digits model on CIFAR": (
        lambda f: ["run", "--model", "smallcnn", "--checkpoint", str(f["root"] / "smallcnn.pt"), "--data", str(f["archive"]), "--partial-data"],
        "takes 1-channel images but dataset cifar10 has 3-channel",
    ),
    "10-class checkpoint on 3 classes": (
        lambda f: [
            "run",
            "--model",
            "resnet20",
            "--checkpoint",
            str(f["checkpoint"]),
            "--dataset",
            "imagefolder",
            "--data",
            str(f["tree_3"]),
            "--workers",
            "0",
        ],
        "has a classifier for 10 classes but the model was built for 3",
    ),
    "--num-classes against the data": (
        lambda f: ["run", "--model", "resnet18", "--num-classes", "5", "--data", str(f["tree_3"]), "--workers", "0"],
        "outputs (5,) logits per image but dataset imagefolder has 3 classes",
    ),
    "CIFAR model without data": (lambda f: ["run", "--model", "resnet20", "--checkpoint", str(f["checkpoint"])], "is a CIFAR-10 model and no --data was given"),
    "data of unknown kind": (
        lambda f: ["run", "--model", "resnet20", "--checkpoint", str(f["checkpoint"]), "--data", str(f["root"] / "empty_dir")],
        "cannot tell which dataset --data",
    ),
    "missing data": (lambda f: ["run", *_cifar(f)[:4], "--data", str(f["root"] / "gone.tar.gz")], "does not exist: pass --data PATH"),
    "unknown dataset": (lambda f: ["run", *_cifar(f), "--dataset", "mnist"], "unknown dataset 'mnist'"),
    "unknown model": (lambda f: ["run", "--model", "resnet21", "--data", str(f["archive"])], "unknown model 'resnet21'"),
    "no cuda": (lambda f: ["run", *_cifar(f), "--device", "cuda"], "CUDA is not available here"),
    "bad norm": (lambda f: ["run", *_cifar(f), "--norm", "imagenet"], "unknown CIFAR-10 normalisation"),
    "unknown reflow mode": (lambda f: ["run", *_cifar(f), "--reflow-mode", "median"], "--reflow-mode must be one of"),
}


@pytest.fixture(scope="module")
def probe_files(files, imagefolder_like):
    return {**files, "tree_3": imagefolder_like}


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_is_a_clear_error(name, probe_files, tmp_path, capsys):
    build, expected = PROBES[name]
    argv = build(probe_files)
    if "--out" not in argv and argv[0] == "run":
        argv += ["--out", str(tmp_path / "out")]
    assert main([argv[0], *SMALL_SUBSETS, *argv[1:]]) == 2  # the probe's own flags come last and win
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert expected in err, err
    assert err.startswith("reflowbench: error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "dense " not in captured.out  # refused before any evaluation
    assert not (tmp_path / "out").exists()  # not even an empty runs/ folder


def test_prune_interrupt_message_promises_nothing(monkeypatch, capsys, files):
    import reflowbench.cli.commands as commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_prune", interrupted)
    assert main(["prune", *_cifar(files), "--sparsity", "0.5"]) == 130
    assert "nothing was saved" in capsys.readouterr().err
