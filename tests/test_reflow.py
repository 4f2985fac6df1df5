import copy

import pytest
import torch
from torch import nn

from reflowbench.errors import ConfigError, NoBatchNormError
from reflowbench.reflow import bn_output_variances, recalibrate_bn, variance_ratios


def _batches(n_batches=5, batch=16, shape=(1, 8, 8), scale=1.0):
    generator = torch.Generator().manual_seed(1)
    return [(scale * torch.randn(batch, *shape, generator=generator) + 0.3, torch.zeros(batch, dtype=torch.long)) for _ in range(n_batches)]


def test_cumulative_recalibration_equals_exact_batch_statistics_average(tiny_model):
    data = _batches()
    recalibrate_bn(tiny_model, data, num_batches=len(data))
    # expected: average over batches of each batch's mean and unbiased variance of bn1's input
    with torch.no_grad():
        inputs = [tiny_model.conv1(x) for x, _ in data]
    means = torch.stack([a.mean(dim=(0, 2, 3)) for a in inputs]).mean(0)
    variances = torch.stack([a.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True) for a in inputs]).mean(0)
    assert torch.allclose(tiny_model.bn1.running_mean, means, atol=1e-5)
    assert torch.allclose(tiny_model.bn1.running_var, variances, atol=1e-5)
    assert not tiny_model.training and not tiny_model.bn1.training
    assert tiny_model.bn1.momentum == 0.1  # restored


def test_undo_restores_statistics(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    handle = recalibrate_bn(tiny_model, _batches(), num_batches=3)
    assert handle.batches_seen == 3 and handle.images_seen == 48
    assert not torch.equal(before["bn1.running_var"], tiny_model.bn1.running_var)
    handle.undo()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_ema_mode_keeps_old_statistics_when_not_reset(tiny_model):
    old = tiny_model.bn1.running_mean.clone()
    recalibrate_bn(tiny_model, _batches(1), num_batches=1, mode="ema", momentum=0.1, reset=False)
    with torch.no_grad():
        batch_mean = tiny_model.conv1(_batches(1)[0][0]).mean(dim=(0, 2, 3))
    assert torch.allclose(tiny_model.bn1.running_mean, 0.9 * old + 0.1 * batch_mean, atol=1e-6)


def test_only_bn_layers_switch_to_train_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.9), nn.Linear(8, 2)).eval()
    seen = {}
    model[2].register_forward_hook(lambda m, i, o: seen.update(dropout_training=m.training))
    model[1].register_forward_hook(lambda m, i, o: seen.update(bn_training=m.training))
    recalibrate_bn(model, [(torch.randn(16, 4), None)], num_batches=1)
    assert seen == {"dropout_training": False, "bn_training": True}


@pytest.mark.parametrize(
    "bn, shape", [(nn.BatchNorm1d(3), (8, 3)), (nn.BatchNorm2d(3), (8, 3, 4, 4)), (nn.BatchNorm3d(3), (8, 3, 2, 2, 2)), (nn.SyncBatchNorm(3), (8, 3, 4, 4))]
)
def test_all_batchnorm_kinds(bn, shape):
    model = nn.Sequential(bn).eval()
    x = torch.randn(*shape) * 3 + 1
    recalibrate_bn(model, [(x, None)], num_batches=1)
    dims = [0] + list(range(2, len(shape)))
    assert torch.allclose(bn.running_mean, x.mean(dim=dims), atol=1e-5)


def test_model_without_batchnorm_is_a_clear_error():
    with pytest.raises(NoBatchNormError, match="no.*BatchNorm|has none"):
        recalibrate_bn(nn.Sequential(nn.Linear(2, 2)), [(torch.randn(2, 2), None)])
    with pytest.raises(NoBatchNormError):
        bn_output_variances(nn.Sequential(nn.Linear(2, 2)), [(torch.randn(2, 2), None)])


def test_bad_reflow_settings(tiny_model):
    with pytest.raises(ConfigError, match="mode"):
        recalibrate_bn(tiny_model, _batches(), mode="median")
    with pytest.raises(ConfigError, match="empty calibration"):
        recalibrate_bn(tiny_model, [], num_batches=2)
    with pytest.raises(ConfigError, match="reset"):
        recalibrate_bn(tiny_model, _batches(), reset=False)


def test_variance_ratio_is_one_for_the_dense_model_and_drops_when_weights_shrink(tiny_model):
    data = _batches()
    recalibrate_bn(tiny_model, data, num_batches=len(data))  # a dense model whose statistics fit the data
    dense = bn_output_variances(tiny_model, data)
    assert all(abs(r - 1) < 1e-9 for r in variance_ratios(bn_output_variances(tiny_model, data), dense).values())
    with torch.no_grad():
        tiny_model.conv1.weight.mul_(0.5)  # a crude "pruning": halves the pre-BN signal
    ratios = variance_ratios(bn_output_variances(tiny_model, data), dense)
    assert ratios["bn1"] < 0.5
    recalibrate_bn(tiny_model, data, num_batches=len(data))
    assert abs(variance_ratios(bn_output_variances(tiny_model, data), dense)["bn1"] - 1) < 0.05


def test_channels_last_calibration_matches_nchw_and_restores_the_weights():
    """On CPU REFLOW runs in channels-last; its statistics equal an NCHW pass to float rounding and every weight
    is back in its own memory format afterwards (a channels-last weight stays channels-last)."""
    from reflowbench.models import build_model
    from reflowbench.reflow.recalibrate import batchnorm_layers
    from reflowbench.utils.memory_format import channels_last_weights

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    first = next(p for p in model.parameters() if p.dim() == 4)
    first.data = first.data.contiguous(memory_format=torch.channels_last)  # a user's own channels-last weight
    batches = [(torch.randn(16, 3, 32, 32), None) for _ in range(3)]
    reference = copy.deepcopy(model)
    with channels_last_weights(reference, enabled=False):
        for _, m in batchnorm_layers(reference):
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x, _ in batches:
                reference(x)
    recalibrate_bn(model, batches, num_batches=3)
    for (_, ours), (_, theirs) in zip(batchnorm_layers(model), batchnorm_layers(reference)):
        assert torch.allclose(ours.running_mean, theirs.running_mean, rtol=1e-4, atol=1e-6)
        assert torch.allclose(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-6)
    assert first.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() == 4 and p is not first)


def test_bn_output_moments_merged_over_uneven_batches_equal_one_float64_pass():
    from reflowbench.reflow.moments import ChannelMoments

    generator = torch.Generator().manual_seed(0)
    batches = [5.0 + 0.1 * torch.randn(n, 3, 4, 4, generator=generator) for n in (7, 1, 32, 5)]  # offset mean: cancellation
    accumulator = ChannelMoments(nn.BatchNorm2d(3))
    for batch in batches:
        accumulator(None, None, batch)
    everything = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)
    assert torch.allclose(accumulator.variance(), everything.var(dim=1, unbiased=True), rtol=1e-5)
    assert torch.allclose(accumulator.mean, everything.mean(dim=1), rtol=1e-6)
    assert ChannelMoments(nn.BatchNorm2d(3)).variance().isnan().all()  # nan before any batch


def test_layernorm_moments_are_per_element_of_its_normalised_shape():
    from reflowbench.reflow.moments import ChannelMoments

    values = torch.randn(6, 5, 4) * torch.arange(1, 5)  # (batch, tokens, features): feature j has std j + 1
    accumulator = ChannelMoments(nn.LayerNorm(4))
    accumulator.add(values)
    assert torch.allclose(accumulator.variance(), values.reshape(-1, 4).double().var(dim=0), rtol=1e-5)
