"""Every file the suite reads is read or refused loudly: run files, settings files, sparsity spellings."""

import json

import pytest

from reflowbench.cli import main
from reflowbench.schema.results import read_run_file

QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--no-progress"]


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "--sparsities", "0.5,0.9", "--seeds", "0,1", "--out", str(out), *QUICK]) == 0
    return out


def _truncate(path):
    path.write_text(path.read_text()[:200])


def test_a_truncated_run_file_stops_report_and_compare_with_its_name_unless_skipped(folder, capsys):
    (victim,) = sorted((folder / "runs").glob("mp_s0.9_seed1_*.json"))
    _truncate(victim)
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert victim.name in line and "is not valid JSON" in line and "--skip-unreadable" in line
    assert main(["compare", str(folder), str(folder), "--method", "mp"]) == 2
    assert victim.name in capsys.readouterr().err
    assert main(["report", str(folder), "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert f"left out: {victim}" in out
    rows = [line for line in (folder / "report.md").read_text().splitlines() if line.startswith("| smallcnn | mp") and "| 0.9 |" in line]
    assert rows and all("| 1 |" in row for row in rows)  # one seed left at 0.9, and the report said why


def test_run_names_an_unreadable_run_file_and_makes_that_run_again(folder, capsys):
    (victim,) = sorted((folder / "runs").glob("mp_s0.5_seed0_*.json"))
    _truncate(victim)
    capsys.readouterr()
    assert main(["run", "--sparsities", "0.5,0.9", "--seeds", "0,1", "--out", str(folder), *QUICK]) == 0
    out = capsys.readouterr().out
    assert f"warning: {victim} is not valid JSON" in out and "its run is made again" in out
    record, why = read_run_file(victim)
    assert why is None and record["status"] == "complete"


def test_a_foreign_file_under_runs_is_named_by_run_and_refused_by_the_report(folder, capsys):
    stray = folder / "runs" / "notes.json"
    stray.write_text(json.dumps({"hello": 1}))
    capsys.readouterr()
    assert main(["run", "--sparsities", "0.5,0.9", "--seeds", "0,1", "--out", str(folder), *QUICK]) == 2
    captured = capsys.readouterr()
    assert f"warning: {stray} has schema None" in captured.out and "it is no run of this sweep" in captured.out
    assert "notes.json has schema None" in captured.err


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda r: {**r, "schema": 99}, "has schema 99"),
        (lambda r: {**r, "status": "running"}, "has status 'running'"),
        (lambda r: {k: v for k, v in r.items() if k != "reflow"}, "lacks reflow"),
        (lambda r: [r], "not a JSON object"),
    ],
)
def test_read_run_file_says_why_a_record_is_not_one(folder, change, why):
    (path,) = sorted((folder / "runs").glob("mp_s0.5_seed0_*.json"))
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    record, reason = read_run_file(path)
    assert record is None and why in reason


def test_spellings_of_one_sparsity_name_one_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--sparsities", "0.7", "--seeds", "0", "--out", str(out), *QUICK, "--no-report"]) == 0
    config = tmp_path / "c.json"
    config.write_text('{"sweep": {"sparsities": [0.7000000000000001]}}')  # what 1 - 0.3 gives
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--seeds", "0", "--out", str(out), *QUICK, "--no-report"]) == 0
    assert "1 already complete" in capsys.readouterr().out
    assert main(["run", "--sparsities", "7e-1", "--seeds", "0", "--out", str(out), *QUICK, "--no-report"]) == 0
    assert len(list((out / "runs").glob("*.json"))) == 1


@pytest.mark.parametrize("where", ["config", "grid", "suite"])
def test_a_settings_file_with_a_repeated_key_is_refused(tmp_path, capsys, where):
    path = tmp_path / f"{where}.json"
    if where == "config":
        path.write_text('{"sweep": {"sparsities": [0.5], "sparsities": [0.9]}}')
        args = ["run", "--config", str(path), "--out", str(tmp_path / "o"), *QUICK]
    elif where == "grid":
        path.write_text('{"damping": [{"damp": 1e-5, "damp": 1e-3}]}')
        args = ["tune", "--grid", str(path), "--out", str(tmp_path / "o"), *QUICK]
    else:
        path.write_text('{"jobs": [{"folder": "a", "folder": "b", "settings": {}}]}')
        args = ["suite", str(path), "--out", str(tmp_path / "o"), "--dry-run"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "appears twice" in line and "Traceback" not in line
    assert not (tmp_path / "o" / "runs").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_in_an_imagefolder_tree_is_named(tmp_path, workers):
    from PIL import Image
    from torchvision import transforms

    from reflowbench.datasets.imagesets import FolderImageSet
    from reflowbench.errors import DatasetError

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 10, 200)).save(tmp_path / cls / f"{i}.png")
    bad = tmp_path / "b" / "2.png"
    bad.write_bytes(b"not an image at all")
    images = FolderImageSet(str(tmp_path), transforms.ToTensor(), transforms.ToTensor(), workers=workers)
    with pytest.raises(DatasetError) as caught:
        list(images.batches(None, 2))
    message = str(caught.value)
    assert message.startswith(f"image {bad} cannot be decoded (") and "\n" not in message and "replace or remove it" in message


def test_a_folder_edited_in_place_to_the_same_size_is_a_new_data_identity(tmp_path):
    import os

    from reflowbench.utils.io import content_sha256

    (tmp_path / "train").mkdir()
    image = tmp_path / "train" / "x.jpg"
    image.write_bytes(b"a" * 100)
    first = content_sha256(tmp_path)
    image.write_bytes(b"b" * 100)  # same name, same size, other bytes
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000_000))
    assert content_sha256(tmp_path) != first


def test_a_full_disk_mid_sweep_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    import errno

    import reflowbench.harness.sweep as sweep

    out = tmp_path / "out"
    real, calls = sweep.write_run, []

    def full_after_one(path, record):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")
        real(path, record)

    monkeypatch.setattr(sweep, "write_run", full_after_one)
    assert main(["run", "--sparsities", "0.5,0.9", "--seeds", "0", "--out", str(out), *QUICK]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no space left on the disk while writing" in line and "finished runs are saved" in line and "run the same command again" in line
    saved = list((out / "runs").glob("*.json"))
    assert len(saved) == 1 and read_run_file(saved[0])[1] is None  # the run finished before the disk filled is whole
    monkeypatch.setattr(sweep, "write_run", real)
    capsys.readouterr()
    assert main(["run", "--sparsities", "0.5,0.9", "--seeds", "0", "--out", str(out), *QUICK]) == 0
    assert "1 already complete" in capsys.readouterr().out and len(list((out / "runs").glob("*.json"))) == 2
