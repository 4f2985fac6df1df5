import tarfile

import numpy as np
import pytest
import torch

from conftest import write_jpeg_tree
from reflowbench.datasets import SubsetSizes, disjoint_subsets, load_dataset
from reflowbench.datasets.cifar10 import CLASSES, load_cifar10_arrays
from reflowbench.errors import DatasetError


def test_digits_embedded_split(digits):
    assert len(digits.train) + len(digits.test) == 1797 and len(digits.test) == 450
    x, y = next(digits.test.batches(None, 64))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.2  # normalised


def test_subsets_are_disjoint_seeded_and_prefix_stable():
    a = disjoint_subsets(1000, SubsetSizes(100, 200, 50), seed=0)
    b = disjoint_subsets(1000, SubsetSizes(100, 300, 50), seed=0)
    c = disjoint_subsets(1000, SubsetSizes(100, 200, 50), seed=1)
    union = np.concatenate([a["calibration"], a["fisher"], a["heldout"]])
    assert len(np.unique(union)) == len(union) == 350
    # calibration and held-out images do not depend on how many Fisher images a pruner asks for
    assert np.array_equal(a["calibration"], b["calibration"]) and np.array_equal(a["heldout"], b["heldout"])
    assert np.array_equal(a["fisher"], b["fisher"][:200])
    assert not np.array_equal(a["calibration"], c["calibration"])


def test_subsets_too_large_names_the_knobs():
    with pytest.raises(DatasetError, match="calib-batches"):
        disjoint_subsets(100, SubsetSizes(80, 30, 10), seed=0)


def test_cifar_tarball_decodes_and_caches(tmp_path, monkeypatch):
    tree = write_jpeg_tree(tmp_path / "tree" / "cifar10", CLASSES, per_class=2)
    tarball = tmp_path / "mini.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname="cifar10")
    arrays = load_cifar10_arrays(tarball)
    assert arrays["train_x"].shape == (20, 32, 32, 3) and arrays["train_x"].dtype == np.uint8
    assert sorted(arrays["test_y"].tolist()) == sorted(list(range(10)) * 2)
    # the second load comes from the cache: decoding is not called again
    import reflowbench.datasets.cifar10 as cifar

    monkeypatch.setattr(cifar, "_read_tarball", lambda path: pytest.fail("cache was not used"))
    again = load_cifar10_arrays(tarball)
    assert np.array_equal(again["train_x"], arrays["train_x"])
    # an extracted tree gives the same arrays
    from_tree = load_cifar10_arrays(tree)
    assert np.array_equal(from_tree["train_x"], arrays["train_x"])


def test_cifar_sets_normalise_and_augment(tmp_path):
    tree = write_jpeg_tree(tmp_path / "c", CLASSES, per_class=1)
    bundle = load_dataset("cifar10", tree, partial=True)
    x, y = next(bundle.train.batches(None, 10, shuffle=True, augment=True, seed=3))
    assert x.shape == (10, 3, 32, 32) and bundle.num_classes == 10
    x2, _ = next(bundle.train.batches(None, 10, shuffle=True, augment=True, seed=3))
    assert torch.equal(x, x2)  # seeded augmentation


def test_corrupt_tarball_and_missing_path(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(DatasetError, match="not a readable .tar.gz"):
        load_cifar10_arrays(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10_arrays(tmp_path / "missing.tar.gz")


def test_corrupt_jpeg_is_named(tmp_path):
    tree = write_jpeg_tree(tmp_path / "c", CLASSES, per_class=1)
    (tree / "train" / "cat" / "0000.jpg").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="train/cat/0000.jpg cannot be decoded"):
        load_cifar10_arrays(tree)


def test_torchvision_cifar_download_path(tmp_path, monkeypatch):
    """The torchvision route (used by real users with internet) on a local stand-in for CIFAR10."""
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 20 if train else 10
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    bundle = load_dataset("cifar10", tmp_path, download=True, partial=True)
    assert len(bundle.train) == 20 and len(bundle.test) == 10
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


def test_torchvision_cifar_without_network_explains_fix(tmp_path):
    with pytest.raises(DatasetError, match="--download"):
        load_dataset("cifar10", tmp_path, download=False)


def test_imagefolder_with_imagenet_transforms(tmp_path):
    root = write_jpeg_tree(tmp_path / "inet", ["n01", "n02"], per_class=2, size=40, splits=("train", "val"))
    bundle = load_dataset("imagenet", root, workers=0)
    x, y = next(bundle.test.batches(None, 4))
    assert x.shape == (4, 3, 224, 224) and bundle.num_classes == 2
    x, _ = next(bundle.train.batches(np.array([0, 1]), 2, augment=True))
    assert x.shape == (2, 3, 224, 224)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs --data"):
        load_dataset("imagenet", None)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no val/ or test/"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist")


def test_truncated_cifar_archive_is_refused(tmp_path):
    """An archive that stops at a file boundary reads without error; the class counts catch it."""
    import tarfile

    tree = write_jpeg_tree(tmp_path / "c", CLASSES, per_class=2)
    archive = tmp_path / "cut.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(tree.rglob("*.jpg")):
            relative = path.relative_to(tree)
            if relative.parts[0] == "test" and relative.parts[1] in CLASSES[6:]:
                continue  # the copy stopped before the last four test classes
            tar.add(path, arcname=str(relative))
    with pytest.raises(DatasetError, match="test has no images of ship, truck|test has no images of horse, ship, truck|incomplete"):
        load_dataset("cifar10", archive, partial=True)
    full = tmp_path / "full"
    write_jpeg_tree(full, CLASSES, per_class=2)
    with pytest.raises(DatasetError, match="should hold 5,000 images per class.*--partial-data"):
        load_dataset("cifar10", full)
