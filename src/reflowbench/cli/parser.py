"""The ``reflowbench`` argument parser: every settings flag is generated from the dataclasses in
:mod:`reflowbench.config` (and from each registered pruner's Options, as ``--<pruner>-<option>``)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Dict

from reflowbench.cli import commands
from reflowbench.cli.flags import add_dataclass_arguments
from reflowbench.config import (
    PRESETS,
    SECTIONS,
    ExecutorSpec,
    PruneSpec,
    ReflowAblationSpec,
    SpeedSpec,
    SuiteCommandSpec,
    SweepSettings,
    TrainSpec,
    TuneSpec,
    describe_preset,
)
from reflowbench.errors import ConfigError


def _section_types() -> Dict[str, type]:
    import typing

    hints = typing.get_type_hints(SweepSettings)
    return {name: hints[name] for name in SECTIONS}


def _add_settings_arguments(parser: argparse.ArgumentParser, sections=SECTIONS, with_pruners: bool = True) -> None:
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


def _settings_command(
    subcommands: argparse._SubParsersAction, name: str, help_text: str, sections=SECTIONS, with_pruners: bool = True
) -> argparse.ArgumentParser:
    """A command that builds a sweep's settings: --preset, --config, one flag group per settings section and per pruner."""
    sub = subcommands.add_parser(name, help=help_text, description=help_text)
    presets = "; ".join(describe_preset(name) for name in PRESETS)
    sub.add_argument(
        "--preset",
        choices=[*PRESETS, "none"],
        default=None,
        help=f"a named bundle of settings, applied before --config and flags: {presets}; none: the defaults shown below. "
        "Without --preset: embedded when no --model, --dataset, --data, --checkpoint or --weights is given (flags or --config), else none",
    )
    sub.add_argument("--config", help="JSON file of settings ({section: {field: value}} or flat), applied after the preset")
    _add_settings_arguments(sub, sections, with_pruners)
    return sub


EXECUTOR_GROUP = "executor settings (in this process, or submitit jobs: a Slurm job array or local subprocesses)"


def _add_run(subcommands: argparse._SubParsersAction) -> None:
    """run: a sweep, or a named suite with --suite."""
    run = _settings_command(
        subcommands, "run", "run a sweep (one model: methods x sparsities x seeds), skipping finished runs, then write results.csv and the report"
    )
    run.add_argument("--no-report", action="store_true", help="skip the report (results.csv is still written)")
    run.add_argument("--suite", metavar="NAME", default=None, help="run a named comparison suite instead (the same as `reflowbench suite NAME`)")
    add_dataclass_arguments(run.add_argument_group(EXECUTOR_GROUP), ExecutorSpec, "executor__")
    run.set_defaults(handler=commands.cmd_run, interrupted="finished runs are saved; run the same command again to resume")


def _add_prune(subcommands: argparse._SubParsersAction) -> None:
    """prune: one method at one sparsity and seed."""
    prune = _settings_command(subcommands, "prune", "prune one model once, optionally REFLOW, and save the weights")
    add_dataclass_arguments(prune.add_argument_group("prune settings"), PruneSpec, "prune__")
    prune.set_defaults(handler=commands.cmd_prune, interrupted="nothing was saved")


def _add_report(subcommands: argparse._SubParsersAction) -> None:
    """report: the report of a results folder, anew."""
    report = subcommands.add_parser("report", help="(re)write results.csv, report.md, report.html and figures of a results folder")
    report.add_argument("out", help="the --out folder of a run")
    report.add_argument("--signal-sparsity", type=float, default=None, help="sparsity of the signal-collapse figure (default: the highest)")
    report.add_argument("--skip-unreadable", action="store_true", help=commands.SKIP_UNREADABLE_HELP)
    report.set_defaults(handler=commands.cmd_report)


def _add_compare(subcommands: argparse._SubParsersAction) -> None:
    """compare: the regression gate."""
    compare = subcommands.add_parser(
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
    compare.add_argument("--skip-unreadable", action="store_true", help=commands.SKIP_UNREADABLE_HELP)
    compare.add_argument(
        "--allow-missing",
        action="store_true",
        help="report the baseline's cells (or seeds) the candidate lacks without failing on them (the verdict line says how many)",
    )
    compare.set_defaults(handler=commands.cmd_compare)


def _add_suite(subcommands: argparse._SubParsersAction) -> None:
    """suite: a named set of sweeps."""
    from reflowbench.suites import SUITES

    suite = subcommands.add_parser(
        "suite",
        help="run a named comparison suite (every model, method, sparsity and seed; resumable) and write its combined report",
        description="Run every job of a suite as a resumable `run` into OUT/<folder>, then write OUT/<name>-suite/report.md. Suites: "
        + "; ".join(f"{n}: {s['description']}" for n, s in SUITES.items())
        + ". NAME may also be a suite JSON file.",
    )
    suite.add_argument("name", help=f"suite name ({', '.join(SUITES)}) or a suite JSON file")
    add_dataclass_arguments(suite.add_argument_group("suite settings"), SuiteCommandSpec, "suite__")
    add_dataclass_arguments(suite.add_argument_group(EXECUTOR_GROUP), ExecutorSpec, "executor__")
    suite.set_defaults(handler=commands.cmd_suite, interrupted="finished runs are saved; run the same command again to resume")


def _add_one_method_commands(subcommands: argparse._SubParsersAction) -> None:
    """tune and ablate-reflow: one method, its own settings section."""
    one_method_commands = (
        (
            "tune",
            "fair settings: search a Hessian pruner's settings grid on the held-out training loss (never the test split); "
            "resumable; writes tuning/<model>_<method>.md and a --config file with the chosen options into --out",
            TuneSpec,
            "tune__",
            commands.cmd_tune,
            "finished cells are saved; run the same command again to resume",
        ),
        (
            "ablate-reflow",
            "REFLOW ablation: prune once per seed, then REFLOW with each number of calibration batches and each batch size "
            "(or, with --layers, of only the first k, the last k or the k-th BN layer), evaluating each; resumable; writes "
            "reflow-ablation.md and its figures into --out",
            ReflowAblationSpec,
            "ablation__",
            commands.cmd_ablate_reflow,
            "finished REFLOW cells are saved; run the same command again to resume",
        ),
    )
    for name, help_text, spec_cls, dest_prefix, handler, interrupted in one_method_commands:
        sub = _settings_command(subcommands, name, help_text)
        add_dataclass_arguments(sub.add_argument_group(f"{name} settings"), spec_cls, dest_prefix)
        sub.set_defaults(handler=handler, interrupted=interrupted)


def _add_train(subcommands: argparse._SubParsersAction) -> None:
    """train: a dense checkpoint."""
    train = _settings_command(
        subcommands, "train", "train a dense model (SGD Nesterov, one-cycle) and save its state_dict", sections=("model", "data"), with_pruners=False
    )
    train.add_argument("--device", dest="sweep__device", metavar="DEVICE", default=argparse.SUPPRESS, help="auto, cpu, cuda or cuda:N (default: auto)")
    train.add_argument("--threads", dest="sweep__threads", metavar="INT", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's)")
    add_dataclass_arguments(train.add_argument_group("training recipe"), TrainSpec, "train__")
    train.add_argument("--save", required=True, help="where to write the state_dict (.pt)")
    train.set_defaults(handler=commands.cmd_train, interrupted="nothing was saved")


def _add_speed(subcommands: argparse._SubParsersAction) -> None:
    """speed: measured latency of pruned models against the dense one."""
    speed = _settings_command(
        subcommands,
        "speed",
        "measure inference latency and throughput of pruned models (prune --save) against the dense --checkpoint, with parameter and FLOP counts",
        sections=("model", "data"),
        with_pruners=False,
    )
    speed.add_argument("--device", dest="sweep__device", metavar="DEVICE", default=argparse.SUPPRESS, help="auto, cpu, cuda or cuda:N (default: auto)")
    speed.add_argument("--threads", dest="sweep__threads", metavar="INT", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's)")
    add_dataclass_arguments(speed.add_argument_group("speed settings"), SpeedSpec, "speed__")
    speed.set_defaults(handler=commands.cmd_speed, interrupted="nothing was saved")


def _add_list(subcommands: argparse._SubParsersAction) -> None:
    """list: the registries."""
    listing = subcommands.add_parser("list", help="list pruners, models, datasets and presets")
    listing.set_defaults(handler=commands.cmd_list)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each command's handler (in :mod:`.commands`) is set as ``handler``."""
    parser = argparse.ArgumentParser(prog="reflowbench", description="Benchmark one-shot pruners with and without BN recalibration (REFLOW).")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_prune, _add_report, _add_compare, _add_suite, _add_one_method_commands, _add_train, _add_speed, _add_list):
        add(subcommands)
    return parser
