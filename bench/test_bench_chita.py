"""CHITA on ResNet-20 at sparsity 0.9 with the published settings: N = 500 gradients, each the mean over a
mini-batch of 16 images (8,000 images, collected in batches, not one mini-batch at a time), lam = 1e-4.

- ``block-backsolve`` (the published code's default): global magnitude support, exact ridge solve per block
  of 500. Target (issue 9): at most half the published code's 29 s on this machine, within its 2.3 GB. Three
  rounds: one round's wall time on this machine varies by +-15 % from run to run (12.9 to 17.4 s measured on one
  day, idle), so the target is read from the median.
- ``iht`` (the default here): IHT with line search on the whole-network Fisher, then the backsolve on the
  chosen support through the N x N dual system. Target: within 2 minutes.
"""

import pytest

from conftest import benchmark_prune
from reflowbench.pruners import make_pruner


@pytest.mark.parametrize("solver", ["block-backsolve", "iht"])
def test_chita_resnet20_full_prune(benchmark, resnet20, cifar_train, solver):
    rounds = 3 if solver == "block-backsolve" else 1
    benchmark_prune(benchmark, make_pruner("chita", {"solver": solver}), resnet20, cifar_train, 0.9, "chita", rounds=rounds)
