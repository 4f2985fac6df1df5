"""``reflowbench prune``: one method at one sparsity and seed, measured like a sweep's run; the weights and the run
record saved where asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import torch

from reflowbench.config import PruneSpec, SweepSettings, resolve_prune_sparsity
from reflowbench.harness.distributed import is_main_rank
from reflowbench.harness.plan import check_output_file, plan_sweep
from reflowbench.harness.run import SweepState, prune_and_measure
from reflowbench.harness.sweep import run_line
from reflowbench.models.pruned_shapes import module_shapes
from reflowbench.utils.io import atomic_write_json


def prune_once(spec: SweepSettings, prune: PruneSpec, log: Callable[[str], None]) -> Dict[str, Any]:
    """Prune, evaluate, REFLOW, evaluate (``spec``'s sweep already narrowed to ``prune``'s method, sparsity and seed);
    save the weights (after REFLOW when ``prune.reflow``) and the record where ``prune`` says; the record.
    ``prune`` is validated (:meth:`PruneSpec.validate`, before the sweep was narrowed to it)."""
    resolve_prune_sparsity(prune, spec)
    check_output_file(prune.save, "--save")
    check_output_file(prune.record, "--record")
    plan = plan_sweep(spec, check_out=False)
    state = SweepState(plan, log)
    pruner = plan.pruners[0]
    key = state.run_key(pruner, prune.sparsity, prune.seed)
    record, model, reflow_handle = prune_and_measure(state, pruner, prune.sparsity, prune.seed, key)
    if not prune.reflow and reflow_handle is not None:
        reflow_handle.undo()  # back to the BN statistics right after pruning
    log(f"{prune.method} at sparsity {prune.sparsity:g}, seed {prune.seed}: {run_line(record)}")
    if not is_main_rank():
        return record  # under torchrun: every rank pruned the same model; rank 0 writes
    if prune.save:
        weights = {k: v.cpu() for k, v in model.state_dict().items()}
        # a channel-pruned network is smaller: its module sizes go beside the weights (models/pruned_shapes.py), no pickled code
        torch.save({"state_dict": weights, "pruned_shapes": module_shapes(model)} if state.channel_search is not None else weights, prune.save)
        log(f"saved the {'REFLOW-recalibrated ' if prune.reflow and reflow_handle is not None else ''}pruned weights to {prune.save}")
    if prune.record:
        atomic_write_json(Path(prune.record), record)
    return record
