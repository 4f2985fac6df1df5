"""The ``reflowbench`` command: run, prune, report, train, list.

Every flag of ``run``/``prune``/``train`` is generated from the dataclasses in ``config.py`` (and
from each registered pruner's Options, as ``--<pruner>-<option>``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from reflowbench.config import (
    MODEL_OR_DATA_FIELDS,
    PRESETS,
    SECTIONS,
    ExecutorSpec,
    SuiteSpec,
    describe_preset,
    merge_into,
    names_model_or_data,
    preset,
    spec_summary,
    validate_spec,
)
from reflowbench.errors import ConfigError, ReflowbenchError
from reflowbench.utils.cli_args import add_dataclass_arguments, build_dataclass, given
from reflowbench.utils.cost import format_duration
from reflowbench.utils.io import atomic_write_json


def _section_types() -> Dict[str, type]:
    import typing

    hints = typing.get_type_hints(SuiteSpec)
    return {name: hints[name] for name in SECTIONS}


def _add_suite_arguments(parser: argparse.ArgumentParser, sections=SECTIONS, with_pruners: bool = True) -> None:
    from reflowbench.pruners import PRUNERS

    types = _section_types()
    for section in sections:
        add_dataclass_arguments(parser.add_argument_group(f"{section} settings"), types[section], f"{section}__")
    for name, cls in sorted(PRUNERS.items() if with_pruners else []):
        if fields(cls.Options):
            group = parser.add_argument_group(f"pruner {name} options ({cls.description})")
            try:
                add_dataclass_arguments(group, cls.Options, f"opt__{name}__", flag_prefix=f"{name}_")
            except argparse.ArgumentError as exc:
                raise ConfigError(
                    f"pruner {name!r} ({cls.__module__}): an option flag collides with one of reflowbench's own ({exc}): rename the option or the pruner"
                ) from None


def _read_config_file(path_text: str) -> Any:
    path = Path(path_text)
    from reflowbench.utils.io import DuplicateKeyError, loads_settings

    try:
        return loads_settings(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read the file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--config {path}: {exc}" if isinstance(exc, DuplicateKeyError) else f"--config {path}: not valid JSON ({exc})") from None


def _choose_preset(args: argparse.Namespace, file_overrides: Any) -> Optional[str]:
    """The preset to start from: --preset when given ('none' = no preset); else 'embedded' when neither
    the flags nor the config file name a model or data, else none."""
    if args.preset is not None:
        return None if args.preset == "none" else args.preset
    named = isinstance(file_overrides, dict) and names_model_or_data(file_overrides)
    named = named or any(name in given(args, f"{section}__") for section, name in MODEL_OR_DATA_FIELDS)
    if named:
        return None
    _log(f"no --model, --dataset, --data, --checkpoint or --weights given: using --preset {describe_preset('embedded')}")
    return "embedded"


def _spec_from_args(args: argparse.Namespace) -> SuiteSpec:
    """Defaults < preset < --config file < explicit flags; type-checked here, range-checked by ``plan_suite``."""
    file_overrides = _read_config_file(args.config) if args.config else None
    spec = preset(_choose_preset(args, file_overrides))
    if file_overrides is not None:
        merge_into(spec, file_overrides, f"--config {args.config}")
    for section in SECTIONS:
        for key, value in given(args, f"{section}__").items():
            setattr(getattr(spec, section), key, value)
    for dest, value in vars(args).items():
        if dest.startswith("opt__"):
            _, method, option = dest.split("__", 2)
            spec.method_options.setdefault(method, {})[option] = value
    return spec


_QUIET = False  # ranks other than 0 under torchrun print nothing


def _log(message: str) -> None:
    if not _QUIET:
        print(message, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from reflowbench.harness import plan_suite, run_suite

    if args.suite is not None:
        return _run_named_suite(args)
    executor = build_dataclass(ExecutorSpec, given(args, "executor__"), "executor settings")
    executor.validate()
    plan = plan_suite(_spec_from_args(args))
    for line in spec_summary(plan.spec):
        _log(line)
    if executor.executor == "submitit":
        return _submit(plan, executor)
    counts = run_suite(plan, log=_log, report=not args.no_report)
    failed = f" ({counts['failed']} of them failed: listed above and in the report)" if counts["failed"] else ""
    _log(f"done: {counts['done']} runs now{failed}, {counts['skipped']} skipped as already finished, {counts['total']} in the suite")
    return 0


def _submit(plan: Any, executor: Any) -> int:
    from reflowbench.errors import JobsFailed
    from reflowbench.harness.executor import submit_suite

    result = submit_suite(plan, executor, log=_log)
    if not executor.wait:
        _log(f"submitted {len(result['jobs'])} jobs; `reflowbench report {plan.spec.sweep.out}` collects what has finished")
        return 0
    if result["failed"]:
        raise JobsFailed(f"{len(result['failed'])} of {len(result['jobs'])} jobs failed (listed above); run the same command again to re-run their runs")
    _log(
        f"done: {result['runs']} runs in {len(result['jobs'])} jobs, {result['total'] - result['runs']} skipped as already complete, {result['total']} in the suite"
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
    from reflowbench.harness.comparison import run_comparison
    from reflowbench.suites import SuiteCommandSpec

    sweep, data = given(args, "sweep__"), given(args, "data__")
    taken = {"out", "seeds", "sparsities", "device", "threads", "progress", "skip_unreadable"}
    ignored = sorted(set(sweep) - taken) + sorted(set(data) - {"data", "download"}) + sorted(given(args, "model__"))
    if ignored:
        raise ConfigError(
            f"--suite runs the suite's own models and methods; it takes --out, --data, --download, --seeds, --sparsities, --device, --threads, not {ignored}"
        )
    command = SuiteCommandSpec(**{k: v for k, v in sweep.items() if k in taken}, **{k: v for k, v in data.items() if k in ("data", "download")})
    counts = run_comparison(args.suite, command, log=_log)
    _log(_suite_summary(args.suite, counts, "ran"))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from reflowbench.harness import SuiteState, plan_suite, prune_and_measure
    from reflowbench.harness.distributed import is_main_rank
    from reflowbench.harness.plan import check_output_file

    spec = _spec_from_args(args)
    spec.sweep.methods, spec.sweep.sparsities, spec.sweep.seeds = [args.method], [args.sparsity], [args.seed]
    check_output_file(args.save, "--save")
    check_output_file(args.record, "--record")
    plan = plan_suite(spec, check_out=False)
    state = SuiteState(plan, _log)
    pruner = plan.pruners[0]
    key = state.run_key(pruner, args.sparsity, args.seed)
    record, model, reflow_handle = prune_and_measure(state, pruner, args.sparsity, args.seed, key)
    if args.no_reflow:
        reflow_handle.undo()  # back to the BN statistics right after pruning
    _log(f"{args.method} at sparsity {args.sparsity:g}: top-1 {record['pruned']['top1']:.2f}% after pruning, {record['reflow']['top1']:.2f}% after REFLOW")
    if not is_main_rank():
        return 0  # under torchrun: every rank pruned the same model; rank 0 writes
    if args.save:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.save)
        _log(f"saved the {'' if args.no_reflow else 'REFLOW-recalibrated '}pruned weights to {args.save}")
    if args.record:
        atomic_write_json(Path(args.record), record)
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
    from reflowbench.reports.aggregate import markdown_table
    from reflowbench.reports.compare import compare_results, comparison_table, failed_points, nothing_to_compare, settings_mismatch, verdict_summary
    from reflowbench.schema.results import load_finished_runs

    if not 0 <= args.tolerance < 100:
        raise ReflowbenchError(f"--tolerance must be in [0, 100) percentage points, got {args.tolerance}")
    against = args.against or args.method
    runs, failed_runs = {}, {}
    for side, folder in (("candidate", args.candidate), ("baseline", args.baseline)):
        runs[side], failed_runs[side] = load_finished_runs(Path(folder), args.skip_unreadable)
        if not runs[side] and not (side == "candidate" and failed_runs[side]):  # a candidate whose every run failed is judged: it fails
            raise ReflowbenchError(f"no complete runs under {folder}/runs (the {side} folder): pass the --out folder of a `reflowbench run`")
    cells = compare_results(runs["candidate"], runs["baseline"], args.method, against, args.tolerance, args.allow_missing)
    failed = failed_points(failed_runs["candidate"], runs["baseline"], args.method, against)
    if not any(c.candidate[2] for c in cells) and not failed:
        sides = [(f"candidate ({args.candidate})", args.method, runs["candidate"]), (f"baseline ({args.baseline})", against, runs["baseline"])]
        raise ReflowbenchError(nothing_to_compare(sides))
    differing = settings_mismatch(runs["candidate"] + failed_runs["candidate"], runs["baseline"], args.method, against)
    if differing:
        raise ReflowbenchError(
            f"the candidate and the baseline were run with other settings, so their accuracies do not compare: {'; '.join(differing)}; "
            "run both with the same settings (only the method and its options may differ)"
        )
    print(markdown_table(*comparison_table(cells, args.method, against)))
    for record in failed:
        print(f"REGRESSION: {args.method} failed on {record['model']} at sparsity {record['sparsity']:g}, seed {record['seed']}: {record['error']}")
    print("\n" + verdict_summary(cells, len(failed), args.method, against, args.tolerance, args.allow_missing))
    return 1 if failed or any(c.fails for c in cells) else 0


def _refuse_sweep_flags(args: argparse.Namespace, instead: str) -> None:
    """A one-method command given --methods or --sparsities: a ConfigError saying ``instead`` and naming the flag."""
    for flag, dest in (("--methods", "methods"), ("--sparsities", "sparsities")):
        if dest in given(args, "sweep__"):
            raise ConfigError(f"{instead} instead of {flag}")


def cmd_ablate_reflow(args: argparse.Namespace) -> int:
    from reflowbench.config import ReflowAblationSpec
    from reflowbench.harness import plan_suite
    from reflowbench.harness.ablation import ablation_spec, run_reflow_ablation
    from reflowbench.reports.ablation import write_ablation_report
    from reflowbench.utils.cli_args import build_dataclass

    _refuse_sweep_flags(args, "ablate-reflow prunes with one method at one sparsity: use --method and --sparsity")
    ablation = build_dataclass(ReflowAblationSpec, given(args, "ablation__"), "ablation settings")
    plan = plan_suite(ablation_spec(_spec_from_args(args), ablation))
    for line in spec_summary(plan.spec)[:1]:
        _log(line)
    reflow = plan.spec.reflow
    cells = ablation.cells(reflow.calib_batches, reflow.calib_batch_size)
    _log(f"REFLOW ablation: {ablation.method} at {ablation.sparsity:g}, seeds {','.join(map(str, plan.spec.sweep.seeds))}, {len(cells)} REFLOW settings each")
    run_reflow_ablation(plan, ablation, log=_log)
    paths = write_ablation_report(Path(plan.spec.sweep.out))
    _log(f"report: {paths['markdown']} and {paths['figure']}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from reflowbench.harness.comparison import run_comparison
    from reflowbench.suites import SuiteCommandSpec
    from reflowbench.utils.cli_args import build_dataclass

    command = build_dataclass(SuiteCommandSpec, given(args, "suite__"), "suite settings")
    counts = run_comparison(args.name, command, log=_log)
    if not command.report_only:
        _log(_suite_summary(args.name, counts, "would run" if command.dry_run else "ran"))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from reflowbench.config import TuneSpec
    from reflowbench.harness.tuning import run_tuning, tune_plan
    from reflowbench.utils.cli_args import build_dataclass

    _refuse_sweep_flags(args, "tune searches one method's settings: use --method and --at-sparsities")
    tune = build_dataclass(TuneSpec, given(args, "tune__"), "tune settings")
    plan, cells = tune_plan(_spec_from_args(args), tune)
    _log(spec_summary(plan.spec)[0])
    _log(
        f"tuning {tune.method}: {len(cells)} settings x sparsities {','.join(f'{s:g}' for s in tune.at_sparsities)} x seeds {','.join(map(str, plan.spec.sweep.seeds))}"
    )
    paths = run_tuning(plan, cells, tune, log=_log)
    _log(f"chosen {tune.method} settings{' (partial search)' if paths['partial'] else ''}: {json.dumps(paths['chosen'], sort_keys=True)}")
    _log(f"table: {paths['markdown']}; run the tuned row with --config {paths['config']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from reflowbench.datasets import load_dataset
    from reflowbench.harness.evaluate import evaluate
    from reflowbench.harness.plan import check_output_file, resolve_dataset
    from reflowbench.harness.train import TrainSpec, train_dense
    from reflowbench.models import build_model
    from reflowbench.utils.env import resolve_device, use_deterministic

    spec = validate_spec(_spec_from_args(args))
    recipe = build_dataclass(TrainSpec, given(args, "train__"), "train settings").validate()
    check_output_file(args.save, "--save")
    use_deterministic(spec.sweep.deterministic)
    device = resolve_device(spec.sweep.device)
    if spec.sweep.threads:
        torch.set_num_threads(spec.sweep.threads)
    dataset = resolve_dataset(spec)
    data = load_dataset(dataset, spec.data.data, spec.data.norm, spec.data.download, spec.data.workers, spec.data.partial_data)
    model = build_model(
        spec.model.model,
        spec.model.num_classes or data.num_classes,
        Path(spec.model.checkpoint) if spec.model.checkpoint else None,
        spec.model.shortcut if spec.model.shortcut != "auto" else "A",
    )
    train_dense(model, data.train, recipe, device, log=_log)
    metrics = evaluate(model, data.test.batches(None, spec.data.eval_batch_size), device)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.save)
    _log(f"dense {spec.model.model} on {dataset}: top-1 {metrics['top1']:.2f}%; saved to {args.save}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from reflowbench.config import PRESETS
    from reflowbench.datasets import DATASETS
    from reflowbench.models import BUILTIN_MODELS, torchvision_names
    from reflowbench.pruners import PRUNERS

    _log("pruners:")
    for name, cls in sorted(PRUNERS.items()):
        options = ", ".join(f"{f.name}={getattr(cls.Options(), f.name)!r}" for f in fields(cls.Options))
        _log(f"  {name:<14} {cls.description}" + (f"  [{options}]" if options else ""))
    _log("models (built-in):")
    for name, entry in BUILTIN_MODELS.items():
        _log(f"  {name:<14} {entry.description} (data: {entry.dataset})")
    _log(f"models (torchvision, ImageNet): {', '.join(torchvision_names())}")
    _log("datasets:")
    for name, text in DATASETS.items():
        _log(f"  {name:<14} {text}")
    _log(f"presets: {', '.join(sorted(PRESETS))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from reflowbench.harness.train import TrainSpec

    parser = argparse.ArgumentParser(prog="reflowbench", description="Benchmark one-shot pruners with and without BN recalibration (REFLOW).")
    commands = parser.add_subparsers(dest="command", required=True)

    def suite_command(name: str, help_text: str, sections=SECTIONS, with_pruners: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        presets = "; ".join(describe_preset(name) for name in PRESETS)
        sub.add_argument(
            "--preset",
            choices=[*PRESETS, "none"],
            default=None,
            help=f"a named bundle of settings, applied before --config and flags: {presets}; none: the defaults shown below. "
            "Without --preset: embedded when no --model, --dataset, --data, --checkpoint or --weights is given (flags or --config), else none",
        )
        sub.add_argument("--config", help="JSON file of settings ({section: {field: value}} or flat), applied after the preset")
        _add_suite_arguments(sub, sections, with_pruners)
        return sub

    run = suite_command("run", "run a suite (methods x sparsities x seeds), skipping finished runs, then write results.csv and the report")
    run.add_argument("--no-report", action="store_true", help="skip the report (results.csv is still written)")
    run.add_argument("--suite", metavar="NAME", default=None, help="run a named comparison suite instead (the same as `reflowbench suite NAME`)")
    add_dataclass_arguments(
        run.add_argument_group("executor settings (in this process, or submitit jobs: a Slurm job array or local subprocesses)"), ExecutorSpec, "executor__"
    )
    run.set_defaults(handler=cmd_run, interrupted="finished runs are saved; run the same command again to resume")

    prune = suite_command("prune", "prune one model once, optionally REFLOW, and save the weights")
    prune.add_argument("--method", default="mp", help="pruner name (see `reflowbench list`)")
    prune.add_argument("--sparsity", type=float, required=True, help="fraction of target weights to remove, in [0, 1)")
    prune.add_argument("--seed", type=int, default=0, help="selects the calibration, Fisher and held-out images (default: 0)")
    prune.add_argument("--no-reflow", action="store_true", help="save the weights right after pruning, without BN recalibration")
    prune.add_argument("--save", help="write the pruned state_dict here")
    prune.add_argument("--record", help="write the run record (JSON) here")
    prune.set_defaults(handler=cmd_prune, interrupted="nothing was saved")

    report = commands.add_parser("report", help="(re)write results.csv, report.md, report.html and figures of a results folder")
    report.add_argument("out", help="the --out folder of a run")
    report.add_argument("--signal-sparsity", type=float, default=None, help="sparsity of the signal-collapse figure (default: the highest)")
    report.add_argument("--skip-unreadable", action="store_true", help=SKIP_UNREADABLE_HELP)
    report.set_defaults(handler=cmd_report)

    compare = commands.add_parser(
        "compare",
        help="the regression gate: a method in a results folder against baseline results; any non-zero exit fails",
        description="Per model and sparsity of BASELINE, top-1 after pruning and after REFLOW of --method in CANDIDATE against "
        "--against (default: the same method). The allowed drop is --tolerance points plus the baseline's seed standard deviation "
        "(never the candidate's); where the candidate has the baseline's seeds they are paired. A cell fails as REGRESSION (lower "
        "than allowed), UNSTABLE (the candidate's seeds spread more than the baseline's plus the tolerance), MISSING (a cell or seed "
        "the baseline has and the candidate lacks; --allow-missing reports it instead) or NOT FINITE; a failed candidate run fails "
        "too. Both folders must hold runs of the same settings (all but the method and its options), else the gate refuses. "
        "Exit status: 0 pass; 1 fail (a regression of any kind); 2 the gate could not judge (bad input, nothing to compare, "
        "settings that differ). In CI, fail the step on any non-zero exit, not only on 1.",
    )
    compare.add_argument("candidate", help="the --out folder of the runs to check")
    compare.add_argument("baseline", help="the --out folder of the baseline runs (e.g. reports/embedded-default)")
    compare.add_argument("--method", required=True, help="the method (or report label, e.g. 'cbs [options.update=none]') to check")
    compare.add_argument("--against", default=None, help="the baseline method or label (default: --method)")
    compare.add_argument("--tolerance", type=float, default=1.0, help="points of top-1 a cell may drop beyond the baseline's seed spread (default: 1.0)")
    compare.add_argument("--skip-unreadable", action="store_true", help=SKIP_UNREADABLE_HELP)
    compare.add_argument(
        "--allow-missing",
        action="store_true",
        help="report the baseline's cells (or seeds) the candidate lacks without failing on them (the verdict line says how many)",
    )
    compare.set_defaults(handler=cmd_compare)

    from reflowbench.suites import SUITES, SuiteCommandSpec

    suite = commands.add_parser(
        "suite",
        help="run a named comparison suite (every model, method, sparsity and seed; resumable) and write its combined report",
        description="Run every job of a suite as a resumable `run` into OUT/<folder>, then write OUT/<name>-suite/report.md. Suites: "
        + "; ".join(f"{n}: {s['description']}" for n, s in SUITES.items())
        + ". NAME may also be a suite JSON file.",
    )
    suite.add_argument("name", help=f"suite name ({', '.join(SUITES)}) or a suite JSON file")
    add_dataclass_arguments(suite.add_argument_group("suite settings"), SuiteCommandSpec, "suite__")
    suite.set_defaults(handler=cmd_suite, interrupted="finished runs are saved; run the same command again to resume")

    from reflowbench.config import ReflowAblationSpec, TuneSpec

    one_method_commands = (
        (
            "tune",
            "fair settings: search a Hessian pruner's settings grid on the held-out training loss (never the test split); "
            "resumable; writes tuning/<model>_<method>.md and a --config file with the chosen options into --out",
            TuneSpec,
            "tune__",
            cmd_tune,
            "finished cells are saved; run the same command again to resume",
        ),
        (
            "ablate-reflow",
            "REFLOW ablation: prune once per seed, then REFLOW with each number of calibration batches and each batch size, "
            "evaluating each; resumable; writes reflow-ablation.md and figures/reflow_ablation.png into --out",
            ReflowAblationSpec,
            "ablation__",
            cmd_ablate_reflow,
            "finished REFLOW cells are saved; run the same command again to resume",
        ),
    )
    for name, help_text, spec_cls, dest_prefix, handler, interrupted in one_method_commands:
        sub = suite_command(name, help_text)
        add_dataclass_arguments(sub.add_argument_group(f"{name} settings"), spec_cls, dest_prefix)
        sub.set_defaults(handler=handler, interrupted=interrupted)

    train = suite_command("train", "train a dense model (SGD Nesterov, one-cycle) and save its state_dict", sections=("model", "data"), with_pruners=False)
    train.add_argument("--device", dest="sweep__device", metavar="DEVICE", default=argparse.SUPPRESS, help="auto, cpu, cuda or cuda:N (default: auto)")
    train.add_argument("--threads", dest="sweep__threads", metavar="INT", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's)")
    add_dataclass_arguments(train.add_argument_group("training recipe"), TrainSpec, "train__")
    train.add_argument("--save", required=True, help="where to write the state_dict (.pt)")
    train.set_defaults(handler=cmd_train, interrupted="nothing was saved")

    listing = commands.add_parser("list", help="list pruners, models, datasets and presets")
    listing.set_defaults(handler=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from reflowbench.pruners.base import load_plugins

    try:
        load_plugins()
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "prune") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from reflowbench.harness.distributed import init_from_env, is_main_rank

            init_from_env()
            if not is_main_rank():
                global _QUIET
                _QUIET = True
                os.environ["TQDM_DISABLE"] = "1"  # progress bars on rank 0 only
        return args.handler(args)
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reflowbench: interrupted; {getattr(args, 'interrupted', 'nothing was saved')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(
            f"reflowbench: error: no space left on the disk{where} ({exc.strerror}); {getattr(args, 'interrupted', 'nothing was saved')}. "
            "Every file is written whole or not at all: free some space and run the same command again to go on",
            file=sys.stderr,
        )
        return 2
