"""REFLOW and magnitude pruning on ResNet-20: the cheap end of the comparison."""

import torch

from reflowbench.pruners import PruneContext, make_pruner, select_targets
from reflowbench.reflow import recalibrate_bn


def test_reflow_resnet20_50_batches_of_128(benchmark, resnet20, cifar_train):
    indices = torch.randperm(len(cifar_train), generator=torch.Generator().manual_seed(0))[:6400].numpy()
    benchmark.pedantic(lambda: recalibrate_bn(resnet20, cifar_train.batches(indices, 128), num_batches=50), rounds=2, iterations=1)


def test_magnitude_global_resnet20(benchmark, resnet20):
    targets = select_targets(resnet20)
    pruner = make_pruner("mp")
    benchmark(lambda: pruner.prune(resnet20, targets, 0.9, PruneContext(device=torch.device("cpu"), seed=0)))
