"""WoodFisher on ResNet-20: N = 1000 per-sample gradients, whole-layer blocks, lam = 1e-5, sparsity 0.9.

Target (issue 3): the whole prune within 60 s and 3 GB peak RSS on a 2-core CPU with default settings.
"""

import torch

from conftest import fresh_model_setup, phase_info
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.hessian import BlockFisher, FisherSpec, GradientSpec, collect_gradients
from reflowbench.pruners import PruneContext, apply_masks, make_pruner, select_targets, verify_masks


def _context(train, pruner, ledger, device=torch.device("cpu")):
    subsets = disjoint_subsets(len(train), SubsetSizes(6400, pruner.fisher_images(), 0), seed=0)
    return PruneContext(device=device, seed=0, ledger=ledger, train=train, fisher_indices=subsets["fisher"], memory_budget_gb=8.0)


def test_woodfisher_resnet20_full_prune(benchmark, resnet20, cifar_train):
    pruner = make_pruner("woodfisher")  # the defaults: N=1000, m=1, whole-layer blocks, lam=1e-5, global
    ledgers = []

    setup = fresh_model_setup(resnet20, ledgers)

    def prune(model, ledger):
        targets = select_targets(model)
        with ledger.phase("prune"):
            masks = pruner.prune(model, targets, 0.9, _context(cifar_train, pruner, ledger))
            apply_masks(targets, masks)
        verify_masks(targets, masks, 0.9)

    benchmark.pedantic(prune, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(phase_info(ledgers[-1]))


def test_woodfisher_resnet20_curvature_only(benchmark, resnet20, cifar_train):
    """The backend alone: factorise 20 whole-layer blocks with N=1000 and take diag(F^-1)."""
    targets = select_targets(resnet20)
    subsets = disjoint_subsets(len(cifar_train), SubsetSizes(0, 1000, 0), seed=0)
    gradients = collect_gradients(resnet20, targets, cifar_train.batches(subsets["fisher"], 256), GradientSpec(num_grads=1000))

    def curvature():
        fisher = BlockFisher(gradients, FisherSpec(), torch.device("cpu"))
        return [layer.diag_inverse() for layer in fisher]

    benchmark.pedantic(curvature, rounds=1, iterations=1)
