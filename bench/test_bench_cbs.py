"""CBS on ResNet-20 at sparsity 0.9 with the published defaults: N = 1000 per-sample gradients, whole-layer
blocks, lam = 1e-5, 50 perturbed starts and the local search scored on 1,000 held-out training images,
the exact joint OBS update. Target (issue 8): the whole prune within 3 minutes and 4 GB on a 2-core CPU.
"""

import torch

from conftest import fresh_model_setup, phase_info
from reflowbench.datasets import SubsetSizes, disjoint_subsets
from reflowbench.pruners import PruneContext, apply_masks, make_pruner, select_targets, verify_masks


def test_cbs_resnet20_full_prune(benchmark, resnet20, cifar_train):
    pruner = make_pruner("cbs")
    ledgers, notes = [], []

    setup = fresh_model_setup(resnet20, ledgers)

    def prune(model, ledger):
        targets = select_targets(model)
        subsets = disjoint_subsets(len(cifar_train), SubsetSizes(6400, pruner.fisher_images(), 1000), seed=0)
        ctx = PruneContext(
            device=torch.device("cpu"), seed=0, ledger=ledger, train=cifar_train, fisher_indices=subsets["fisher"], heldout_indices=subsets["heldout"]
        )
        with ledger.phase("prune"):
            masks = pruner.prune(model, targets, 0.9, ctx)
            apply_masks(targets, masks)
        verify_masks(targets, masks, 0.9, model=model)
        notes.append(ctx.notes["cbs"])

    benchmark.pedantic(prune, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(phase_info(ledgers[-1]))
    benchmark.extra_info.update({f"cbs_{k}": v for k, v in notes[-1].items()})
