import json
import shutil

import pytest

from reflowbench.cli import main


def _quick_args(out):
    return ["--out", str(out), "--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--seeds", "0", "--no-progress"]


def test_list_shows_pruners_models_datasets(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for word in ("mp", "mp-layer", "woodfisher", "resnet20", "resnet110", "mobilenetv1", "smallcnn", "resnet50", "digits", "cifar10", "imagenet"):
        assert word in text


@pytest.mark.parametrize("sparsities", ["1.0", "-0.2", "1.5"])
def test_bad_sparsity_is_a_clear_error(tmp_path, capsys, sparsities):
    assert main(["run", "--sparsities", sparsities, *_quick_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sparsity must be in [0, 1)" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_unknown_method_and_bad_checkpoint(tmp_path, capsys):
    assert main(["run", "--methods", "obs-magic", *_quick_args(tmp_path)]) == 2
    assert "unknown pruner 'obs-magic'" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"xx")
    assert main(["run", "--model", "resnet20", "--checkpoint", str(bad), "--dataset", "digits", *_quick_args(tmp_path)]) == 2
    assert "cannot be loaded" in capsys.readouterr().err


def test_builtin_model_without_checkpoint_says_how_to_get_one(tmp_path, capsys):
    assert main(["run", "--model", "resnet20", "--dataset", "digits", *_quick_args(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_model_without_batchnorm_is_refused(tmp_path, capsys):
    import torch
    import torchvision

    model = torchvision.models.get_model("squeezenet1_1", num_classes=10)  # no BatchNorm
    torch.save(model.state_dict(), tmp_path / "vgg.pt")
    code = main(["run", "--model", "squeezenet1_1", "--checkpoint", str(tmp_path / "vgg.pt"), "--dataset", "digits", *_quick_args(tmp_path)])
    assert code == 2 and "BatchNorm" in capsys.readouterr().err


def test_report_on_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no complete runs" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "suite.json"
    config.write_text(json.dumps({"sweep": {"sparsities": [0.5]}, "method_options": {"mp": {"scope": "layer"}}}))
    assert main(["run", "--config", str(config), "--no-report", *_quick_args(tmp_path / "o")]) == 0
    record = json.loads(next((tmp_path / "o" / "runs").glob("*.json")).read_text())
    assert record["sparsity"] == 0.5 and record["options"] == {"scope": "layer", "channel_norm": "l1"}


def test_prune_command_saves_weights(tmp_path, capsys):
    import torch

    save = tmp_path / "pruned.pt"
    assert (
        main(
            [
                "prune",
                "--method",
                "mp",
                "--sparsity",
                "0.5",
                "--save",
                str(save),
                "--calib-batches",
                "2",
                "--calib-batch-size",
                "32",
                "--diag-images",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    state = torch.load(save, weights_only=True)
    conv = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    zeros = sum(int((v == 0).sum()) for v in conv)
    assert zeros > 0


def test_train_command(tmp_path, capsys):
    assert main(["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "1", "--save", str(tmp_path / "d.pt")]) == 0
    assert (tmp_path / "d.pt").exists() and "top-1" in capsys.readouterr().out


def test_prune_command_bad_input_writes_nothing(tmp_path, capsys):
    save = tmp_path / "pruned.pt"
    assert (
        main(
            [
                "prune",
                "--method",
                "mp",
                "--sparsity",
                "1.2",
                "--save",
                str(save),
                "--calib-batches",
                "2",
                "--calib-batch-size",
                "32",
                "--diag-images",
                "64",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err and not save.exists()
    assert main(["prune", "--method", "nope", "--sparsity", "0.5", "--save", str(save)]) == 2
    assert "unknown pruner 'nope'" in capsys.readouterr().err and not save.exists()


def test_train_command_bad_input(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--model",
                "resnet20",
                "--dataset",
                "cifar10",
                "--data",
                str(tmp_path / "missing.tar.gz"),
                "--epochs",
                "1",
                "--save",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert main(["train", "--model", "nosuchnet", "--dataset", "digits", "--epochs", "1", "--save", str(tmp_path / "x.pt")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_output_piped_into_head_stops_quietly():
    """`reflowbench list | head -1`: the closed pipe ends the command without a traceback."""
    import subprocess
    import sys

    result = subprocess.run(f"{sys.executable} -m reflowbench list | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("pruners (patterns:") and "Traceback" not in result.stderr


def test_compare_flags_regressions_and_exits_non_zero(tmp_path, capsys):
    """`reflowbench compare`: a method against another (or itself) per sparsity, +- REFLOW; exit 1 on a regression."""
    out = tmp_path / "suite"
    assert main(["run", "--methods", "mp,mp-layer", "--sparsities", "0.5,0.9", *_quick_args(out)]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(out), "--method", "mp"]) == 0  # against itself: every cell the same
    text = capsys.readouterr().out
    assert "0 regressions" in text and "| mp (%) |" in text
    status = main(["compare", str(out), str(out), "--method", "mp-layer", "--against", "mp", "--tolerance", "0"])
    text = capsys.readouterr().out
    layer = [json.loads(p.read_text()) for p in (out / "runs").glob("mp-layer_s0.9*.json")][0]
    flat = [json.loads(p.read_text()) for p in (out / "runs").glob("mp_s0.9*.json")][0]
    worse = layer["reflow"]["top1"] < flat["reflow"]["top1"] or layer["pruned"]["top1"] < flat["pruned"]["top1"]
    assert status == (1 if worse else 0) and ("REGRESSION" in text) == worse
    assert main(["compare", str(out), str(out), "--method", "woodfisher"]) == 2
    assert (
        "nothing to compare: the candidate (" in (err := capsys.readouterr().err) and "has no runs of woodfisher; its report labels are 'mp', 'mp-layer'" in err
    )
    candidate = tmp_path / "candidate"  # the candidate's run at 0.9 diverged: a regression, though no cell compares it
    shutil.copytree(out, candidate)
    (diverged,) = (candidate / "runs").glob("mp_s0.9*.json")
    diverged.write_text(json.dumps({**json.loads(diverged.read_text()), "status": "failed", "error": "mp: step 2 of 2 failed: overflow"}))
    assert main(["compare", str(candidate), str(out), "--method", "mp"]) == 1
    text = capsys.readouterr().out
    assert "REGRESSION: mp failed on" in text and "at sparsity 0.9, seed 0: mp: step 2 of 2 failed: overflow" in text and "1 failed runs" in text


def test_compare_and_objective_bad_input_are_clear_errors(tmp_path, capsys):
    """Wrong input to the new entry points: exit 2, one line naming the problem and the fix, nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(empty), str(tmp_path / "missing"), "--method", "mp"]) == 2
    err = capsys.readouterr().err
    assert "no complete runs under" in err and "the candidate folder" in err and "Traceback" not in err
    assert main(["compare", str(empty), str(empty), "--method", "mp", "--tolerance", "-1"]) == 2
    assert "--tolerance must be in [0, 100)" in capsys.readouterr().err
    out = tmp_path / "objective"
    assert main(["run", "--objective-grads", "-3", *_quick_args(out)]) == 2
    err = capsys.readouterr().err
    assert "--objective-grads" in err and "Traceback" not in err
    assert main(["run", "--objective-damp", "0", *_quick_args(out)]) == 2
    assert "--objective-damp must be a positive number" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_a_percent_sign_in_an_options_comment_does_not_break_help():
    """argparse formats help text with %: a pruner option commented "1 %" (the layer-wise damping) must print."""
    import argparse
    from dataclasses import dataclass

    from reflowbench.cli.flags import add_dataclass_arguments

    @dataclass
    class Options:
        damp: float = 0.01  # 1 % of the mean diagonal

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Options, "o_", "x-")
    assert "1 % of the mean diagonal" in parser.format_help()
