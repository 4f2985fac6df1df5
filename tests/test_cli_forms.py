"""Every command form the README and ``--help`` document, on small CIFAR-shaped and ImageFolder-shaped
fixtures, with and without ``--preset``. The fixtures are smaller than the real datasets, so each form
adds ``--partial-data`` (CIFAR) and the SMALL_SUBSETS sizes; nothing else is added to what the README writes."""

import csv
import json

import pytest
import torch

from conftest import SMALL_SUBSETS
from reflowbench.cli import main

WOODFISHER_SMALL = ["--woodfisher-num-grads", "16", "--woodfisher-chunk-images", "16"]


def _rows(out):
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_run_without_arguments_is_the_embedded_demo(tmp_path, monkeypatch, capsys):
    """`reflowbench run`, as the README's first command writes it (here into a temporary working folder)."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "using --preset embedded" in out and "REFLOW 8 x 64" in out
    rows = _rows(tmp_path / "reflowbench-out")
    assert len(rows) == 7 * 3 * 2 and {r["dataset"] for r in rows} == {"digits"}
    assert (tmp_path / "reflowbench-out" / "report.html").exists()


def test_cifar_model_and_archive_infer_the_dataset(tmp_path, cifar_like, capsys):
    """The issue's first command: a CIFAR model and a CIFAR archive just work, no --dataset/--preset needed."""
    base = ["run", "--model", "resnet20", "--checkpoint", str(cifar_like["checkpoint"]), "--data", str(cifar_like["archive"]), "--partial-data"]
    assert main([*base, "--methods", "mp", "--sparsities", "0.7", "--seeds", "0", "--out", str(tmp_path), *SMALL_SUBSETS]) == 0
    out = capsys.readouterr().out
    assert "dataset: cifar10 (from --data" in out and "REFLOW 2 x 16" in out
    rows = _rows(tmp_path)
    assert {r["dataset"] for r in rows} == {"cifar10"} and len(rows) == 2
    # the same settings through --preset cifar10 are the same runs (same key): nothing runs again
    assert main([*base, "--preset", "cifar10", "--methods", "mp", "--sparsities", "0.7", "--seeds", "0", "--out", str(tmp_path), *SMALL_SUBSETS]) == 0
    assert "1 already complete" in capsys.readouterr().out


def test_readme_cifar_forms_with_woodfisher_tree_and_download_root(tmp_path, cifar_like, capsys):
    """README: --preset cifar10 ... --methods mp,woodfisher --device auto; an extracted tree; --dataset cifar10."""
    mp_only = ["--model", "resnet20", "--checkpoint", str(cifar_like["checkpoint"]), "--partial-data", *SMALL_SUBSETS]
    common = [*mp_only, *WOODFISHER_SMALL]
    assert (
        main(
            [
                "run",
                "--preset",
                "cifar10",
                *common,
                "--data",
                str(cifar_like["archive"]),
                "--methods",
                "mp,woodfisher",
                "--sparsities",
                "0.5,0.8",
                "--seeds",
                "0",
                "--device",
                "auto",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert {r["method"] for r in _rows(tmp_path / "a")} == {"mp", "woodfisher"}
    assert main(["run", *common, "--data", str(cifar_like["tree"]), "--methods", "mp,woodfisher", "--sparsities", "0.5", "--out", str(tmp_path / "b")]) == 0
    # woodfisher's options without woodfisher: refused (they would change nothing)
    assert main(["run", *common, "--dataset", "cifar10", "--data", str(cifar_like["tree"]), "--sparsities", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "--woodfisher-chunk-images sets an option of woodfisher, which this command does not run (--methods mp)" in capsys.readouterr().err
    assert main(["run", *mp_only, "--dataset", "cifar10", "--data", str(cifar_like["tree"]), "--sparsities", "0.5", "--out", str(tmp_path / "c")]) == 0
    assert {r["dataset"] for r in _rows(tmp_path / "c")} == {"cifar10"}


def test_torchvision_model_on_imagefolder_tree(tmp_path, imagefolder_like, capsys):
    """`reflowbench run --model resnet18 --data TREE`: the ImageFolder tree is recognised, no --dataset needed."""
    args = ["run", "--model", "resnet18", "--data", str(imagefolder_like), "--workers", "0", "--sparsities", "0.5", *SMALL_SUBSETS]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "dataset: imagefolder" in capsys.readouterr().out
    rows = _rows(tmp_path / "a")
    assert {r["dataset"] for r in rows} == {"imagefolder"} and {r["model"] for r in rows} == {"resnet18"}
    assert main([*args, "--dataset", "imagenet", "--out", str(tmp_path / "b")]) == 0


def test_prune_command_as_the_readme_writes_it(tmp_path, cifar_like, capsys):
    save, record = tmp_path / "resnet20-90.pt", tmp_path / "record.json"
    assert (
        main(
            [
                "prune",
                "--model",
                "resnet20",
                "--checkpoint",
                str(cifar_like["checkpoint"]),
                "--dataset",
                "cifar10",
                "--data",
                str(cifar_like["archive"]),
                "--method",
                "woodfisher",
                "--sparsity",
                "0.9",
                "--save",
                str(save),
                "--record",
                str(record),
                "--partial-data",
                *SMALL_SUBSETS,
                *WOODFISHER_SMALL,
            ]
        )
        == 0
    )
    state = torch.load(save, weights_only=True)
    conv = torch.cat([v.flatten() for k, v in state.items() if k.endswith("weight") and v.dim() == 4] + [state["fc.weight"].flatten()])
    assert abs(float((conv == 0).float().mean()) - 0.9) < 1e-3
    assert json.loads(record.read_text())["method"] == "woodfisher"


def test_report_list_config_and_train_forms(tmp_path, cifar_like, capsys):
    config = tmp_path / "suite.json"
    config.write_text(json.dumps({"sweep": {"sparsities": [0.5]}, "method_options": {"woodfisher": {"num_grads": 16, "chunk_images": 16}}}))
    out = tmp_path / "o"
    assert (
        main(
            [
                "run",
                "--config",
                str(config),
                "--model",
                "resnet20",
                "--checkpoint",
                str(cifar_like["checkpoint"]),
                "--data",
                str(cifar_like["archive"]),
                "--partial-data",
                "--methods",
                "woodfisher",
                "--out",
                str(out),
                *SMALL_SUBSETS,
            ]
        )
        == 0
    )
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["options"]["num_grads"] == 16 and record["sparsity"] == 0.5
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").exists()
    assert main(["list"]) == 0
    assert (
        main(["train", "--model", "resnet20", "--data", str(cifar_like["archive"]), "--partial-data", "--epochs", "1", "--save", str(tmp_path / "r20.pt")]) == 0
    )
    assert main(["train", "--epochs", "1", "--save", str(tmp_path / "digits.pt")]) == 0  # the embedded model on digits


def test_help_shows_the_defaults_a_run_uses(capsys):
    """Without a preset, the REFLOW settings used are those --help shows (50 x 128)."""
    from reflowbench.config import ReflowSpec, preset

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50)" in text and "(default: 128)" in text and "embedded (model=smallcnn" in text
    assert (preset(None).reflow.calib_batches, preset(None).reflow.calib_batch_size) == (ReflowSpec().calib_batches, ReflowSpec().calib_batch_size) == (50, 128)


def test_download_form_with_a_local_stand_in_for_torchvision(tmp_path, cifar_like, monkeypatch, capsys):
    """README: `reflowbench run --preset cifar10 --model resnet56 --checkpoint my_resnet56.pt --data ~/data/cifar --download`
    (ResNet-20 here, and torchvision's CIFAR10 replaced by a local stand-in: no network in tests)."""
    import numpy as np
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append(download)
            n = 120 if train else 20
            self.data = np.random.default_rng(int(train)).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    root = tmp_path / "cifar"  # does not exist yet: torchvision creates it when downloading
    assert (
        main(
            [
                "run",
                "--preset",
                "cifar10",
                "--model",
                "resnet20",
                "--checkpoint",
                str(cifar_like["checkpoint"]),
                "--data",
                str(root),
                "--download",
                "--partial-data",
                "--sparsities",
                "0.5",
                "--seeds",
                "0",
                "--out",
                str(tmp_path / "o"),
                *SMALL_SUBSETS,
            ]
        )
        == 0
    )
    assert calls == [True, True] and {r["dataset"] for r in _rows(tmp_path / "o")} == {"cifar10"}
