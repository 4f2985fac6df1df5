import pytest
import torch

from reflowbench.errors import CheckpointError, ConfigError
from reflowbench.models import BUILTIN_MODELS, build_model, detect_shortcut, list_models, read_state_dict
from reflowbench.models.cifar_resnet import CifarResNet
from reflowbench.pruners import select_targets


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_models_forward(name):
    model = build_model(name, num_classes=10)
    x = torch.randn(2, 1, 8, 8) if name.startswith("smallcnn") else torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_resnet20_weight_counts_match_shared_readme():
    # ../shared/models/README.md: 268,336 (option A), 270,896 (option B: + 2,560 in 1x1 downsample convs)
    assert select_targets(CifarResNet(20, shortcut="A")).num_weights == 268_336
    assert select_targets(CifarResNet(20, shortcut="B")).num_weights == 270_896
    assert select_targets(CifarResNet(56, shortcut="A")).num_weights == 848_944


def test_option_a_shortcut_pads_channels():
    block = CifarResNet(20).layer2[0]
    out = block.shortcut(torch.ones(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 8:24].min() == 1 and out[:, 24:].abs().sum() == 0


def test_plain_state_dict_roundtrip(tmp_path):
    model = build_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "a.pt")
    loaded = build_model("resnet20", checkpoint=tmp_path / "a.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_distiller_style_dict_with_module_prefix_and_option_b_detection(tmp_path):
    source = CifarResNet(20, shortcut="B")
    wrapped = {"epoch": 3, "arch": "resnet20_cifar", "state_dict": {"module." + k: v for k, v in source.state_dict().items()}, "best_top1": 91.0}
    torch.save(wrapped, tmp_path / "d.pth.tar")
    state = read_state_dict(tmp_path / "d.pth.tar")
    assert detect_shortcut(state) == "B"
    loaded = build_model("resnet20", checkpoint=tmp_path / "d.pth.tar")
    assert hasattr(loaded.layer2[0], "downsample")
    assert torch.equal(loaded.layer2[0].downsample[0].weight, source.layer2[0].downsample[0].weight)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    model = build_model("mobilenetv1")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    loaded = build_model("mobilenetv1", checkpoint=tmp_path / "m.safetensors")
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    state = build_model("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        build_model("resnet20", checkpoint=tmp_path / "bad.pt")
    message = str(info.value)
    assert "missing keys (1): fc.bias" in message and "unexpected keys (1): extra.weight" in message


def test_wrong_depth_reports_shape_or_key_mismatch(tmp_path):
    torch.save(build_model("resnet20", num_classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match="has a classifier for 100 classes but the model was built for 10"):
        build_model("resnet20", checkpoint=tmp_path / "c100.pt")


def test_corrupt_and_missing_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        build_model("resnet20", checkpoint=tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("resnet20", checkpoint=tmp_path / "nope.pt")


def test_torchvision_model_by_name_and_weight_enum_errors():
    model = build_model("resnet18", num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_model("resnet18", weights="NO_SUCH_WEIGHTS")
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet21")
    assert "resnet50" in list_models() and "resnet110" in list_models()
