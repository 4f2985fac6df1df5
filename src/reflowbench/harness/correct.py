"""Each correction applied to a copy of one pruned model, checked, evaluated and measured (see :mod:`reflowbench.corrections`)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from reflowbench.corrections import Correction, CorrectionContext
from reflowbench.errors import MaskError
from reflowbench.harness.evaluate import evaluate
from reflowbench.pruners import TargetSet
from reflowbench.reflow import bn_output_variances, summarize_ratios, variance_ratios
from reflowbench.utils.cost import CostLedger

Zeros = Dict[str, torch.Tensor]


def pruned_zeros(model: nn.Module, targets: TargetSet) -> Zeros:
    """Target parameter name -> bool tensor of its zero weights in the pruned ``model`` (on the weights' device)."""
    return {t.param_name: model.get_parameter(t.param_name).detach() == 0 for t in targets}


def check_zeros_kept(model: nn.Module, zeros: Zeros, where: str) -> None:
    """Raise :class:`MaskError` when a weight that was zero after pruning is not zero in ``model`` any more."""
    for name, zero in zeros.items():
        revived = int((model.get_parameter(name).detach()[zero] != 0).sum())
        if revived:
            raise MaskError(f"{where}: {revived} pruned weights of {name} are not zero any more (a correction must never revive a pruned weight)")


def correct_and_measure(
    pruned: nn.Module,
    correction: Correction,
    ctx: CorrectionContext,
    ledger: CostLedger,
    test_batches: Callable[[], Any],
    diagnostic_batches: Callable[[], Any],
    dense_variances: Dict[str, float],
    zeros: Zeros,
    check_state: Callable[[nn.Module, str], None],
    where: str,
) -> Dict[str, Any]:
    """Apply ``correction`` to a copy of ``pruned`` (phase ``correct_<name>``), check it (finite, no pruned weight
    revived), evaluate it on the test split (phase ``eval_<name>``) and measure its variance ratios (``diagnostics``).

    Returns the record's entry: test metrics, the calibration cost (images, batches, passes, seconds) and the ratios.
    """
    model = copy.deepcopy(pruned)
    phase = f"correct_{correction.name}"
    with ledger.phase(phase, ctx.device):
        cost = correction.apply(model, ctx)
    check_state(model, f"{where}: after {correction.name}")
    check_zeros_kept(model, zeros, f"{where}: {correction.name}")
    with ledger.phase(f"eval_{correction.name}", ctx.device):
        metrics = evaluate(model, test_batches(), ctx.device)
    with ledger.phase("diagnostics", ctx.device):
        ratios = variance_ratios(bn_output_variances(model, diagnostic_batches(), ctx.device), dense_variances)
    layers: List[str] = list(dense_variances)
    return {
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "loss": metrics["loss"],
        "images": cost.images,
        "batches": cost.batches,
        "passes": cost.passes,
        "seconds": ledger.as_dict()[phase]["seconds"],
        "ratio": [ratios.get(name, float("nan")) for name in layers],
        "ratios": summarize_ratios(ratios),
        **({"details": cost.details} if cost.details else {}),
    }
