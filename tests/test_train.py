"""Dense training resumes from its last finished epoch, and refuses another training's progress file."""

import pytest
import torch

from reflowbench.config import TrainSpec
from reflowbench.datasets import load_dataset
from reflowbench.errors import CheckpointError
from reflowbench.harness.train import train_dense
from reflowbench.models import build_model


class _Stop(Exception):
    pass


def _stop_at(line: str):
    def log(message: str) -> None:
        if message.startswith(line):
            raise _Stop

    return log


@pytest.mark.parametrize("name", ["smallcnn-gn", "smallcnn-ln"])
def test_an_interrupted_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float kernels in both trainings; restored for the tests after this one
    try:
        _resume_matches(tmp_path, name)
    finally:
        torch.set_num_threads(threads)


def _resume_matches(tmp_path, name):
    digits = load_dataset("digits")
    recipe = TrainSpec(epochs=3, batch_size=128, lr=0.05, seed=0, augment=False)
    identity = {"model": name}
    torch.manual_seed(0)
    straight = train_dense(build_model(name), digits.train, recipe, torch.device("cpu"))
    progress = tmp_path / "m.pt.progress.pt"
    torch.manual_seed(0)
    with pytest.raises(_Stop):  # killed while logging epoch 3: epochs 1 and 2 are saved
        train_dense(build_model(name), digits.train, recipe, torch.device("cpu"), log=_stop_at("epoch 3/3"), progress=progress, identity=identity)
    assert torch.load(progress, weights_only=True)["epoch"] == 2
    lines = []
    resumed = train_dense(build_model(name), digits.train, recipe, torch.device("cpu"), log=lines.append, progress=progress, identity=identity)
    assert lines[0].startswith("resuming from") and "2 of 3 epochs done" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 3/3"]
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_a_progress_file_of_another_recipe_or_model_is_refused(tmp_path):
    digits = load_dataset("digits")
    recipe = TrainSpec(epochs=2, batch_size=256, lr=0.05, seed=0, augment=False)
    progress = tmp_path / "m.pt.progress.pt"
    with pytest.raises(_Stop):
        train_dense(
            build_model("smallcnn"), digits.train, recipe, torch.device("cpu"), log=_stop_at("epoch 2/2"), progress=progress, identity={"model": "smallcnn"}
        )
    other = TrainSpec(epochs=2, batch_size=256, lr=0.1, seed=0, augment=False)
    with pytest.raises(CheckpointError, match="belongs to another training.*delete it"):
        train_dense(build_model("smallcnn"), digits.train, other, torch.device("cpu"), progress=progress, identity={"model": "smallcnn"})
    with pytest.raises(CheckpointError, match="belongs to another training"):
        train_dense(build_model("smallcnn-gn"), digits.train, recipe, torch.device("cpu"), progress=progress, identity={"model": "smallcnn-gn"})
    progress.write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="cannot be read.*delete it"):
        train_dense(build_model("smallcnn"), digits.train, recipe, torch.device("cpu"), progress=progress, identity={"model": "smallcnn"})
