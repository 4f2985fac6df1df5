"""A sweep: methods x sparsities x seeds; finished runs are skipped, so an interrupted sweep resumes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

from reflowbench.bench.harness import SuiteState, run_one
from reflowbench.bench.results import is_complete, run_path, write_csv, write_run
from reflowbench.config import SuiteSpec
from reflowbench.pruners import make_pruner, validate_sparsity
from reflowbench.utils.io import atomic_write_json


def run_suite(spec: SuiteSpec, log: Callable[[str], None] = print, report: bool = True) -> Dict[str, int]:
    """Run every (method, sparsity, seed) of ``spec`` not already in ``spec.sweep.out``; write CSV and report.

    Returns {"done": runs executed now, "skipped": runs found complete, "total": runs in the suite}.
    """
    sweep = spec.sweep
    sparsities = [validate_sparsity(s) for s in sweep.sparsities]
    pruners = [make_pruner(name, spec.method_options.get(name)) for name in sweep.methods]
    for name in spec.method_options:
        make_pruner(name, spec.method_options[name])  # unknown pruner/option names fail before any work
    out = Path(sweep.out)
    state = SuiteState(spec, pruners, log)
    log(f"targets: {state.targets_record['description']}: {state.targets_record['num_layers']} tensors, {state.targets_record['num_weights']:,} weights")
    atomic_write_json(out / "suite.json", {"spec": asdict(spec), "settings": state.settings(), "targets": state.targets_record})
    # seed-major: the dense gradients of a seed are collected once and shared by all its sparsities
    plan = [(p, s, seed) for seed in sweep.seeds for p in pruners for s in sparsities]
    todo = []
    for pruner, sparsity, seed in plan:
        key = state.run_key(pruner, sparsity, seed)
        path = run_path(out, pruner.name, sparsity, seed, key)
        if not is_complete(path, key):
            todo.append((pruner, sparsity, seed, path))
    log(f"{len(plan)} runs in the suite, {len(plan) - len(todo)} already complete in {out}, {len(todo)} to run")
    progress = _progress(len(todo), sweep.progress)
    for pruner, sparsity, seed, path in todo:
        progress.set_description(f"{pruner.name} s={sparsity:g} seed={seed}")
        record = run_one(state, pruner, sparsity, seed)
        write_run(path, record)
        progress.write(
            f"{pruner.name:>12} s={sparsity:<5g} seed={seed}: top-1 {record['pruned']['top1']:6.2f}% -> REFLOW {record['reflow']['top1']:6.2f}%"
            f"  (prune {record['cost']['prune']['seconds']:.1f}s, last-BN var ratio {record['variance']['pruned']['last']:.3g} -> {record['variance']['reflow']['last']:.3g})"
        )
        progress.update(1)
        write_csv(out)
    progress.close()
    csv_path = write_csv(out)
    log(f"results: {csv_path}")
    if report:
        from reflowbench.reports import write_report

        paths = write_report(out, signal_sparsity=sweep.report_sparsity)
        log(f"report: {paths['markdown']} and {paths['html']}")
    return {"done": len(todo), "skipped": len(plan) - len(todo), "total": len(plan)}


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="run", dynamic_ncols=True)
