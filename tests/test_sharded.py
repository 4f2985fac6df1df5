"""Gradients sharded across torch.distributed ranks (gloo, 2 CPU processes): the single-process masks and weights."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TinyBNNet
from reflowbench.errors import ConfigError
from reflowbench.hessian.distributed_fisher import assign_layers, row_shares

CASES = [
    ("woodfisher", {"block_size": 10}),  # saliencies gathered for the global selection, summed OBS update
    ("mp-hessian", {"block_size": 0}),  # joint update (restricted solves) on each owner
    ("chita", {"solver": "block-backsolve", "block_size": 16}),
]
OPTIONS = {"num_grads": 24, "minibatch": 2, "chunk_images": 16, "grad_engine": "vmap"}


def _prune(name: str, options: dict):
    from reflowbench.datasets import load_dataset
    from reflowbench.pruners import PruneContext, make_pruner, select_targets

    digits = load_dataset("digits")
    torch.manual_seed(7)
    model = TinyBNNet().eval()
    targets = select_targets(model)
    pruner = make_pruner(name, {**OPTIONS, **options})
    ctx = PruneContext(device=torch.device("cpu"), seed=0, train=digits.train, fisher_indices=np.arange(pruner.fisher_images()))
    masks = pruner.prune(model, targets, 0.6, ctx)
    return {k: v.clone() for k, v in masks.items()}, {t.param_name: t.weight.detach().clone() for t in targets}, ctx.notes


def _product_problem():
    """Gradients of three layers (the same on every rank), their sizes and ranks' layer owners, and three vectors."""
    from reflowbench.hessian import GradientMatrix

    generator = torch.Generator().manual_seed(3)
    rows = {name: torch.randn(6, d, generator=generator, dtype=torch.float64) for name, d in (("a", 9), ("b", 5), ("c", 7))}
    vectors = torch.randn(3, 21, generator=generator, dtype=torch.float64)
    return GradientMatrix(rows, 6, 1), vectors


def _batched_products(fisher):
    _, vectors = _product_problem()
    return {"products": fisher.fisher_products(vectors), "quadratics": fisher.quadratic_products(vectors)}


def _product_spec():
    from reflowbench.hessian import FisherSpec

    return FisherSpec(damp=0.05, block_size=4, compute_dtype="float64")


def _sharded_fisher(rank: int):
    from reflowbench.hessian import GradientMatrix
    from reflowbench.hessian.distributed_fisher import build_sharded

    gradients, _ = _product_problem()
    sizes = {name: rows.shape[1] for name, rows in gradients.rows.items()}
    owner = assign_layers(sizes, 2)
    owned = GradientMatrix({n: r for n, r in gradients.rows.items() if owner[n] == rank}, gradients.num_grads, 1)
    return build_sharded(list(sizes), list(sizes.values()), owned, owner, _product_spec(), torch.device("cpu"))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback, whatever the host name resolves to on the CI machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, options in CASES:
            masks, weights, notes = _prune(name, options)
            torch.save({"masks": masks, "weights": weights, "ranks": notes.get("sharded_ranks")}, os.path.join(out_dir, f"{name}-{rank}.pt"))
        try:  # fewer gradient rows than ranks: refused by name on every rank
            _prune("woodfisher", {"num_grads": 1, "minibatch": 1})
            refusal = ""
        except ConfigError as exc:
            refusal = str(exc)
        with open(os.path.join(out_dir, f"refusal-{rank}.txt"), "w") as handle:
            handle.write(refusal)
        torch.save(_batched_products(_sharded_fisher(rank)), os.path.join(out_dir, f"products-{rank}.pt"))
        dist.barrier()  # no rank closes its sockets while the other still reads from them
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    """The two ranks' results. A rank killed by a signal (gloo aborting on a socket the other rank closed, seen once on
    a loaded CI machine) is retried once in a fresh folder; a Python exception in a rank, or a second abort, fails."""
    for attempt in (0, 1):
        out = tmp_path_factory.mktemp(f"sharded{attempt}")
        try:
            mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
            return out
        except mp.ProcessExitedException as exc:
            if attempt == 1 or exc.signal_name is None:
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name, options", CASES)
def test_two_gloo_ranks_give_the_single_process_masks_and_weights(sharded_results, name, options):
    masks, weights, _ = _prune(name, options)
    for rank in (0, 1):
        result = torch.load(sharded_results / f"{name}-{rank}.pt")
        assert result["ranks"] == 2  # the sharded path ran
        for key in masks:
            assert torch.equal(result["masks"][key], masks[key]), (rank, key)
            assert torch.allclose(result["weights"][key], weights[key], atol=1e-6, rtol=1e-5), (rank, key)


def test_batched_products_summed_across_ranks_match_one_process(sharded_results):
    """fisher_products / quadratic_products with each layer on its owning rank: the single-process block Fisher's, on every rank."""
    from reflowbench.hessian import BlockFisher

    gradients, _ = _product_problem()
    expected = _batched_products(BlockFisher(gradients, _product_spec(), torch.device("cpu")))
    for rank in (0, 1):
        result = torch.load(sharded_results / f"products-{rank}.pt")
        for key in ("products", "quadratics"):
            assert torch.allclose(result[key], expected[key], rtol=1e-12, atol=1e-12), (rank, key)


def test_fewer_gradient_rows_than_ranks_is_refused_by_name(sharded_results):
    for rank in (0, 1):
        assert "--woodfisher-num-grads 1 is fewer than the 2 ranks" in (sharded_results / f"refusal-{rank}.txt").read_text()


def test_rows_and_layers_are_split_evenly():
    assert [len(r) for r in row_shares(10, 3)] == [4, 3, 3] and row_shares(10, 3)[1].start == 4
    owner = assign_layers({"a": 100, "b": 60, "c": 50, "d": 10}, 2)
    assert owner == {"a": 0, "b": 1, "c": 1, "d": 0}
