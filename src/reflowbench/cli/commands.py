"""The commands' bodies: each builds its settings from the parsed flags (:func:`~reflowbench.config.build_settings`),
hands them to the harness or the reports, and prints what they return."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

from reflowbench.cli.flags import build_dataclass, given
from reflowbench.config import (
    SECTIONS,
    ExecutorSpec,
    GateSpec,
    PruneSpec,
    ReflowAblationSpec,
    SettingsLayers,
    SpeedSpec,
    SuiteCommandSpec,
    SweepNarrowing,
    SweepSettings,
    TrainSpec,
    TuneSpec,
    build_settings,
    describe_preset,
    spec_summary,
    suite_command_from_flags,
)
from reflowbench.errors import ConfigError
from reflowbench.utils.cost import format_duration
from reflowbench.utils.io import read_settings_file


def _method_flags(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The pruner options given as flags: {pruner: {option: value}}."""
    options: Dict[str, Dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("opt__"):
            _, method, option = dest.split("__", 2)
            options.setdefault(method, {})[option] = value
    return options


def _section_flags(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The settings given as flags: {section: {field: value}}."""
    return {section: given(args, f"{section}__") for section in SECTIONS}


def _spec_from_args(args: argparse.Namespace, narrowing: Optional[SweepNarrowing] = None) -> SweepSettings:
    """The sweep's settings from this command's --preset, --config and flags (:func:`~reflowbench.config.build_settings`)."""
    file = read_settings_file(args.config, "--config") if args.config else None
    layers = SettingsLayers(preset=args.preset, file=file, file_source=f"--config {args.config}", flags=_section_flags(args), method_flags=_method_flags(args))
    built = build_settings(layers, narrowing)
    if built.preset_implied:
        _log(f"no --model, --dataset, --data, --checkpoint or --weights given: using --preset {describe_preset('embedded')}")
    return built.spec


_QUIET = False  # ranks other than 0 under torchrun print nothing


def quiet() -> None:
    """Print nothing from now on (a torchrun rank other than 0)."""
    global _QUIET
    _QUIET = True


def _log(message: str) -> None:
    if not _QUIET:
        print(message, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from reflowbench.harness import plan_sweep, run_sweep

    if args.suite is not None:
        return _run_named_suite(args)
    executor = _executor_from_args(args)
    plan = plan_sweep(_spec_from_args(args))
    for line in spec_summary(plan.spec):
        _log(line)
    if executor.executor == "submitit":
        return _submit(plan, executor)
    counts = run_sweep(plan, log=_log, report=not args.no_report)
    failed = f" ({counts['failed']} of them failed: listed above and in the report)" if counts["failed"] else ""
    _log(f"done: {counts['done']} runs now{failed}, {counts['skipped']} skipped as already finished, {counts['total']} in the sweep")
    return 0


def _submit(plan: Any, executor: Any) -> int:
    from reflowbench.errors import JobsFailed
    from reflowbench.harness.executor import submit_sweep

    result = submit_sweep(plan, executor, log=_log)
    if not executor.wait:
        _log(f"submitted {len(result['jobs'])} jobs; `reflowbench report {plan.spec.sweep.out}` collects what has finished")
        return 0
    if result["failed"]:
        raise JobsFailed(f"{len(result['failed'])} of {len(result['jobs'])} jobs failed (listed above); run the same command again to re-run their runs")
    _log(
        f"done: {result['runs']} runs in {len(result['jobs'])} jobs, {result['total'] - result['runs']} skipped as already complete, {result['total']} in the sweep"
    )
    return 0


def _suite_summary(name: str, counts: Dict[str, int], verb: str) -> str:
    failed = f" ({counts['failed']} failed: their pruner diverged, see the reports)" if counts.get("failed") else ""
    estimate = ""
    if counts.get("estimate_s"):
        unestimated = f", not counting {counts['unestimated']} with nothing to estimate from" if counts.get("unestimated") else ""
        estimate = f" (about {format_duration(counts['estimate_s'])} of runs and open settings searches with their tuned rows{unestimated})"
    return f"suite {name}: {counts['total']} runs, {counts['skipped']} already finished, {verb} {counts['total'] - counts['skipped']}{failed}{estimate}"


def _run_named_suite(args: argparse.Namespace) -> int:
    """``run --suite NAME``: the same as ``reflowbench suite NAME`` with the run flags a suite takes."""
    command = suite_command_from_flags(_section_flags(args), _method_flags(args))
    return _suite(args.suite, command, _executor_from_args(args))


def _executor_from_args(args: argparse.Namespace) -> ExecutorSpec:
    """The executor flags, validated before any plan (a bad flag is named before any checkpoint or data path)."""
    executor = build_dataclass(ExecutorSpec, given(args, "executor__"), "executor settings")
    executor.validate()
    return executor


def _suite(name: str, command: SuiteCommandSpec, executor: ExecutorSpec) -> int:
    """Run, list or submit suite ``name`` and print what happened."""
    from reflowbench.harness.suite import plan_jobs, run_named_suite

    if executor.executor == "submitit" and not (command.dry_run or command.report_only):
        return _submit_suite(name, command, executor)
    planned = plan_jobs(name, command)
    counts = run_named_suite(name, command, log=_log, planned=planned)
    if not command.report_only:
        _log(_suite_summary(name, counts, "would run" if command.dry_run else "ran"))
    if command.dry_run and executor.executor == "submitit":
        from reflowbench.harness.suite_submit import describe_submission

        _log(describe_submission(planned, executor))
    return 0


def _submit_suite(name: str, command: SuiteCommandSpec, executor: ExecutorSpec) -> int:
    from reflowbench.errors import JobsFailed
    from reflowbench.harness.suite_submit import submit_suite

    result = submit_suite(name, command, executor, log=_log)
    if not executor.wait:
        _log(
            f"submitted {result['jobs']} jobs; once they are done, the same command again submits what is left (tuned rows after their searches) "
            "and writes the reports"
        )
        return 0
    if result["failed"]:
        raise JobsFailed(f"{len(result['failed'])} of {result['jobs']} jobs failed (listed above); run the same command again to re-run their runs")
    waiting = f"; {result['waiting']} settings searches still open (run the same command again)" if result["waiting"] else ""
    _log(f"suite {name}: {result['runs']} runs in {result['jobs']} submitit jobs, {result['total'] - result['runs']} already finished{waiting}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from reflowbench.harness.prune_once import prune_once

    prune = build_dataclass(PruneSpec, given(args, "prune__"), "prune settings").validate()
    prune_once(_spec_from_args(args, prune.narrowing()), prune, log=_log)
    return 0


SKIP_UNREADABLE_HELP = "leave files under runs/ that are not readable run records out (each named); without it they stop the command"


def cmd_report(args: argparse.Namespace) -> int:
    from reflowbench.harness.sweep import write_results

    out = Path(args.out)
    if not out.is_dir():
        raise ConfigError(f"results folder {out} does not exist: pass the --out folder of a `reflowbench run`")
    write_results(out, _log, signal_sparsity=args.signal_sparsity, skip_unreadable=args.skip_unreadable)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from reflowbench.reports.compare import run_gate

    gate = GateSpec(args.candidate, args.baseline, args.method, args.against, args.tolerance, args.allow_missing, args.skip_unreadable)
    verdict = run_gate(gate)
    for line in verdict.lines:
        print(line)
    return 1 if verdict.failed else 0


def cmd_ablate_reflow(args: argparse.Namespace) -> int:
    from reflowbench.harness import plan_sweep
    from reflowbench.harness.ablation import run_reflow_ablation
    from reflowbench.reports.ablation import write_ablation_report

    ablation = build_dataclass(ReflowAblationSpec, given(args, "ablation__"), "ablation settings").validate()
    plan = plan_sweep(_spec_from_args(args, ablation.narrowing()))
    for line in spec_summary(plan.spec)[:1]:
        _log(line)
    reflow = plan.spec.reflow
    cells = ablation.cells(reflow.calib_batches, reflow.calib_batch_size)
    what = f"REFLOW of BN layer subsets ({', '.join(ablation.layers)})" if ablation.layers else f"{len(cells)} REFLOW settings each"
    _log(f"REFLOW ablation: {ablation.method} at {ablation.sparsity:g}, seeds {','.join(map(str, plan.spec.sweep.seeds))}, {what}")
    run_reflow_ablation(plan, ablation, log=_log)
    paths = write_ablation_report(Path(plan.spec.sweep.out))
    _log(f"report: {paths['markdown']} and {paths['figure']}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    executor = _executor_from_args(args)
    return _suite(args.name, build_dataclass(SuiteCommandSpec, given(args, "suite__"), "suite settings"), executor)


def cmd_tune(args: argparse.Namespace) -> int:
    from reflowbench.harness.tuning import run_tuning, tune_plan

    tune = build_dataclass(TuneSpec, given(args, "tune__"), "tune settings").validate()
    plan, cells = tune_plan(_spec_from_args(args, tune.narrowing()), tune)
    _log(spec_summary(plan.spec)[0])
    _log(
        f"tuning {tune.method}: {len(cells)} settings x sparsities {','.join(f'{s:g}' for s in tune.at_sparsities)} x seeds {','.join(map(str, plan.spec.sweep.seeds))}"
    )
    paths = run_tuning(plan, cells, tune, log=_log)
    _log(f"chosen {tune.method} settings{' (partial search)' if paths['partial'] else ''}: {json.dumps(paths['chosen'], sort_keys=True)}")
    _log(f"table: {paths['markdown']}; run the tuned row with --config {paths['config']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from reflowbench.harness.train import train_checkpoint

    recipe = build_dataclass(TrainSpec, given(args, "train__"), "train settings")
    train_checkpoint(_spec_from_args(args), recipe, args.save, log=_log)
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from reflowbench.harness.speed import measure_speed

    speed = build_dataclass(SpeedSpec, given(args, "speed__"), "speed settings").validate()
    measure_speed(_spec_from_args(args), speed, log=_log)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from reflowbench.harness.catalog import catalog_lines

    for line in catalog_lines():
        _log(line)
    return 0
