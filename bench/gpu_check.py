"""One prepared GPU check (the same code as on CPU): run with `python bench/gpu_check.py --device cuda`.

1. the four pruners on ResNet-20 at their published defaults (MP; WoodFisher N=1000 per-sample, whole layers;
   CBS N=1000; CHITA IHT on the whole-network Fisher, N=500 x 16), sparsity 0.9; WoodFisher twice, to check that
   the masks of a fixed seed are the same on the device (``masks_repeat_identical``);
2. WoodFisher and CHITA block backsolve on torchvision ResNet-50 (random weights, synthetic 224x224 batches),
   N=400 x m=32, blocks of 2,000 (CHITA: 500);
3. PyTorch's 2:4 kernels (CUDA only): MobileNetV1 and ResNet-50 with every weight 2:4 by magnitude, float16, timed at
   batch 256 on dense kernels and with their 2:4 linear and 1x1 convolution weights as semi-structured sparse tensors
   (the path of ``reflowbench speed --semi-structured``), the outputs compared.
Prints one JSON line per check: seconds and peak memory per phase. ``--small`` shrinks all for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from reflowbench.config import SparsityPattern
from reflowbench.datasets.imagesets import TensorImageSet
from reflowbench.models import build_model
from reflowbench.pruners import PruneContext, apply_masks, make_pruner, select_targets, verify_masks
from reflowbench.utils.cost import CostLedger
from reflowbench.utils.env import use_deterministic
from reflowbench.utils.linalg import relative_output_error


def synthetic(n: int, size: int) -> TensorImageSet:
    rng = np.random.default_rng(0)
    return TensorImageSet(rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n), 10, (0.5,) * 3, (0.25,) * 3)


HELDOUT = 256  # held-out images at the end of each synthetic set


def check(name: str, model: torch.nn.Module, data: TensorImageSet, method: str, options: dict, device: torch.device, budget_gb: float) -> dict:
    model = model.to(device).eval()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    targets = select_targets(model)
    pruner = make_pruner(method, options)
    ledger = CostLedger()
    ctx = PruneContext(
        device=device, seed=0, ledger=ledger, train=data, fisher_indices=np.arange(pruner.fisher_images()), memory_budget_gb=budget_gb, progress=False,
        heldout_indices=np.arange(len(data) - HELDOUT, len(data)),  # CBS scores candidates on held-out images
    )  # fmt: skip
    start = time.perf_counter()
    with ledger.phase("prune", device):
        masks = pruner.prune(model, targets, 0.9, ctx)
        apply_masks(targets, masks)
    verify_masks(targets, masks, 0.9)
    result = {
        "check": f"{name}-{method}",
        "device": str(device),
        "weights": targets.num_weights,
        "options": options,
        "total_s": round(time.perf_counter() - start, 2),
        "phases": ledger.as_dict(),
    }
    if method == "woodfisher" and name == "resnet20":  # the same seed again: identical masks?
        model.load_state_dict(dense)
        again = pruner.prune(
            model, select_targets(model), 0.9, PruneContext(device=device, seed=0, train=data, fisher_indices=np.arange(pruner.fisher_images()))
        )
        result["masks_repeat_identical"] = all(torch.equal(again[k], masks[k]) for k in masks)
    return result


def sparse_kernels(name: str, model: torch.nn.Module, shape: tuple, device: torch.device, batch: int) -> dict:
    """Dense float16 against the 2:4 kernels for ``model`` with every target weight made 2:4 by magnitude. On a CPU (the
    smoke test) the same path runs in float32 with the identity in place of the conversion: the kernels need CUDA."""
    from reflowbench.harness.speed import latency
    from reflowbench.models.sparse_kernels import semi_structured_copy
    from reflowbench.pruners.nm import nm_masks_from_scores

    cuda = device.type == "cuda"
    model = model.to(device).eval()
    targets = select_targets(model)
    apply_masks(targets, nm_masks_from_scores(targets, {t.param_name: t.weight.detach().abs() for t in targets}, SparsityPattern.parse("2:4")))
    dtype = torch.float16 if cuda else torch.float32
    model = model.to(dtype)
    sparse, converted, dense = semi_structured_copy(model, torch.sparse.to_sparse_semi_structured if cuda else (lambda w: w.clone()))
    x = torch.randn(8, *shape, device=device, dtype=dtype)
    with torch.no_grad():
        difference = relative_output_error(model(x), sparse(x))
    on_dense, on_sparse = latency(model, shape, batch, device, 2.0 if cuda else 0.05), latency(sparse, shape, batch, device, 2.0 if cuda else 0.05)
    return {
        "check": f"{name}-2of4-kernels",
        "kernels": "semi-structured float16" if cuda else "CPU stand-in (identity conversion, float32): not the 2:4 kernels",
        "layers_on_2of4_kernels": len(converted),
        "layers_dense": len(dense),
        "relative_output_difference": difference,
        "dense_ms": round(on_dense["median_ms"], 3),
        "2of4_ms": round(on_sparse["median_ms"], 3),
        "speedup": round(on_dense["median_ms"] / on_sparse["median_ms"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (smoke test on CPU)")
    parser.add_argument("--budget-gb", type=float, default=100.0)
    parser.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (as reflowbench run --deterministic)")
    args = parser.parse_args()
    use_deterministic(args.deterministic)
    device = torch.device(args.device)
    n20, n50, m50, size50, chunk = (16, 2, 2, 32, 4) if args.small else (1000, 400, 32, 224, 64)
    chita20 = {"num_grads": 8, "minibatch": 2, "iht_iters": 5} if args.small else {}
    r20_data = synthetic(max(n20, 8000 if not args.small else 64) + HELDOUT, 32)
    for method, options in (("mp", {}), ("woodfisher", {"num_grads": n20}), ("cbs", {"num_grads": n20}), ("chita", chita20)):
        print(json.dumps(check("resnet20", build_model("resnet20"), r20_data, method, options, device, args.budget_gb)), flush=True)
    big = "resnet18" if args.small else "resnet50"
    big_data = synthetic(n50 * m50, size50)
    for method, options in (
        ("woodfisher", {"num_grads": n50, "minibatch": m50, "block_size": 2000, "chunk_images": chunk}),
        ("chita", {"num_grads": n50, "minibatch": m50, "block_size": 500, "solver": "block-backsolve", "chunk_images": chunk}),
    ):
        print(json.dumps(check(big, build_model(big, num_classes=10), big_data, method, options, device, args.budget_gb)), flush=True)
    for name, shape in (("mobilenetv1", (3, 32, 32)), (big, (3, size50, size50))):
        print(json.dumps(sparse_kernels(name, build_model(name, num_classes=10), shape, device, 8 if args.small else 256)), flush=True)


if __name__ == "__main__":
    main()
