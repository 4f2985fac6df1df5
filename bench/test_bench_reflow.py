"""REFLOW and magnitude pruning on ResNet-20: the cheap end of the comparison, and REFLOW's overhead
over a plain no-grad forward pass over the same images (target: at most 1.2x)."""

import time

import torch

from reflowbench.pruners import PruneContext, make_pruner, select_targets
from reflowbench.reflow import recalibrate_bn
from reflowbench.utils.memory_format import as_channels_last, channels_last_weights

REFLOW_OVER_FORWARD_TARGET = 1.2


def _calibration_indices(count: int):
    return torch.randperm(50_000, generator=torch.Generator().manual_seed(0))[:count].numpy()


def test_reflow_resnet20_50_batches_of_128(benchmark, resnet20, cifar_train):
    indices = _calibration_indices(6400) % len(cifar_train)
    benchmark.pedantic(lambda: recalibrate_bn(resnet20, cifar_train.batches(indices, 128), num_batches=50), rounds=2, iterations=1)


def _best_of(rounds: int, work) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def test_reflow_overhead_over_a_forward_pass(benchmark, resnet20, cifar_train):
    """REFLOW on 50 batches of 128 images held in memory vs a no-grad eval-mode forward over the same batches
    (both without data loading, which would add the same seconds to each), the forward timed in NCHW and in
    channels-last and the faster taken: the ratio is REFLOW's own overhead (BN batch statistics and updates)."""
    indices = _calibration_indices(6400) % len(cifar_train)
    batches = [(x.contiguous(), y) for x, y in cifar_train.batches(indices, 128)][:50]
    model = resnet20.eval()

    def forward(memory_format):
        with torch.no_grad(), channels_last_weights(model, enabled=memory_format == "channels_last"):
            for x, _ in batches:
                model(as_channels_last(x, memory_format == "channels_last"))

    forward_s = {}
    for memory_format in ("nchw", "channels_last"):  # the plain pass in either layout; the faster one is the reference
        forward(memory_format)  # warm-up (allocator, kernels)
        forward_s[memory_format] = _best_of(3, lambda fmt=memory_format: forward(fmt))

    def reflow():
        recalibrate_bn(model, batches, num_batches=50)

    benchmark.pedantic(reflow, rounds=3, iterations=1, warmup_rounds=1)
    # under --benchmark-disable (a smoke run) pytest-benchmark keeps no stats: time the same rounds here
    reflow_s = benchmark.stats.stats.min if benchmark.stats is not None else _best_of(3, reflow)
    ratio = reflow_s / min(forward_s.values())
    benchmark.extra_info.update(
        forward_nchw_s=round(forward_s["nchw"], 3),
        forward_channels_last_s=round(forward_s["channels_last"], 3),
        reflow_s=round(reflow_s, 3),
        reflow_over_forward=round(ratio, 3),
        target=REFLOW_OVER_FORWARD_TARGET,
    )
    assert ratio <= REFLOW_OVER_FORWARD_TARGET, f"REFLOW takes {ratio:.2f}x a no-grad forward pass over the same images (target {REFLOW_OVER_FORWARD_TARGET}x)"


def test_magnitude_global_resnet20(benchmark, resnet20):
    targets = select_targets(resnet20)
    pruner = make_pruner("mp")
    benchmark(lambda: pruner.prune(resnet20, targets, 0.9, PruneContext(device=torch.device("cpu"), seed=0)))
