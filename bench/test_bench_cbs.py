"""CBS on ResNet-20 at sparsity 0.9 with the published defaults: N = 1000 per-sample gradients, whole-layer
blocks, lam = 1e-5, 50 perturbed starts and the local search scored on 1,000 held-out training images,
the exact joint OBS update. Target (issue 8): the whole prune within 3 minutes and 4 GB on a 2-core CPU.
"""

from conftest import benchmark_prune
from reflowbench.pruners import make_pruner


def test_cbs_resnet20_full_prune(benchmark, resnet20, cifar_train):
    benchmark_prune(benchmark, make_pruner("cbs"), resnet20, cifar_train, 0.9, "cbs")
