"""The verdict of an A/B benchmark comparison (``bench/ab_compare.sh``): pytest-benchmark JSON files of a base
revision and of the working tree, measured in alternating rounds on one machine, judged per benchmark on each
side's **best round**.

One A/B round on a shared machine can be 10-20 % off (the machine drifts between the two sides); several rounds,
alternated base-work, work-base, ..., with each side's best kept, leave the code's difference and not the
machine's moods. The threshold has pytest-benchmark's ``--benchmark-compare-fail`` form: ``[FIELD:]PERCENT%``
(slower by more than PERCENT %) or ``[FIELD:]SECONDS`` (slower by more than SECONDS); FIELD is a statistic of
pytest-benchmark (``min``, the default, ``mean``, ``median``, ...).

Run as ``python bench/bench_ab.py STORAGE --fail min:25%``: STORAGE is the pytest-benchmark storage
folder holding ``*_base.json`` and ``*_work.json`` saves; exit 1 ("Performance has regressed") when a benchmark is
slower beyond the threshold, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from reflowbench.errors import ConfigError

FIELDS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3")


@dataclass(frozen=True)
class Threshold:
    """How much slower a benchmark may get: ``percent`` (of the base) or ``seconds``, on the statistic ``field``."""

    field: str
    percent: Optional[float] = None
    seconds: Optional[float] = None

    def exceeded(self, base_s: float, work_s: float) -> bool:
        if self.percent is not None:  # work over base by more than percent of base (no division: a 0 s base is judged too)
            return work_s - base_s > base_s * self.percent / 100.0
        return work_s - base_s > float(self.seconds or 0.0)

    def __str__(self) -> str:
        return f"{self.field}:{self.percent:g}%" if self.percent is not None else f"{self.field}:{self.seconds:g}s"


def parse_threshold(text: str) -> Threshold:
    """``"min:25%"`` -> Threshold("min", percent=25); ``"mean:0.5"`` -> Threshold("mean", seconds=0.5); a bare
    ``"25%"`` means ``min``. Raises ConfigError naming the accepted forms."""
    field, _, amount = text.rpartition(":")
    field = field or "min"
    usage = f"threshold {text!r}: give [FIELD:]PERCENT% or [FIELD:]SECONDS, FIELD one of {', '.join(FIELDS)} (e.g. min:25%)"
    if field not in FIELDS:
        raise ConfigError(usage)
    try:
        value = float(amount.rstrip("%"))
    except ValueError:
        raise ConfigError(usage) from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(usage)
    return Threshold(field, percent=value) if amount.endswith("%") else Threshold(field, seconds=value)


def best_of_rounds(paths: Sequence[Path], field: str) -> Dict[str, float]:
    """{benchmark full name: the lowest ``field`` (seconds) any of the saves in ``paths`` measured}."""
    best: Dict[str, float] = {}
    for path in paths:
        try:
            measured = {benchmark["fullname"]: float(benchmark["stats"][field]) for benchmark in json.loads(path.read_text())["benchmarks"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a pytest-benchmark save with {field!r} for every benchmark ({error!r}): run the benchmarks again") from None
        for name, seconds in measured.items():
            best[name] = min(best.get(name, math.inf), seconds)
    return best


class Verdict(NamedTuple):
    """One benchmark's A/B result: each side's best round of the threshold's statistic, in seconds."""

    name: str
    base_s: float
    work_s: float
    regressed: bool

    @property
    def ratio(self) -> float:
        return self.work_s / self.base_s if self.base_s > 0 else math.inf


def judge(base: Dict[str, float], work: Dict[str, float], threshold: Threshold) -> List[Verdict]:
    """A verdict per benchmark measured on both sides, in name order (benchmarks on one side only are left out)."""
    names = sorted(set(base) & set(work))
    return [Verdict(name, base[name], work[name], threshold.exceeded(base[name], work[name])) for name in names]


def format_verdicts(verdicts: List[Verdict], threshold: Threshold, rounds: Dict[str, int], one_sided: List[str]) -> str:
    """A plain-text table of the verdicts, then the one-line outcome."""
    width = max([len(v.name) for v in verdicts] + [9])
    lines = [
        f"A/B on each side's best of {rounds['base']} base and {rounds['work']} working-tree rounds, statistic {threshold.field!r}, fail above {threshold}",
        f"{'benchmark':<{width}}  {'base s':>10}  {'work s':>10}  {'work/base':>9}",
    ]
    for verdict in verdicts:
        flag = "  REGRESSED" if verdict.regressed else ""
        lines.append(f"{verdict.name:<{width}}  {verdict.base_s:>10.4f}  {verdict.work_s:>10.4f}  {verdict.ratio:>8.2f}x{flag}")
    lines += [f"(measured on one side only, not compared: {name})" for name in one_sided]
    regressed = [v.name for v in verdicts if v.regressed]
    lines.append(f"Performance has regressed: {', '.join(regressed)}" if regressed else f"No benchmark slower beyond {threshold}.")
    return "\n".join(lines)


def saves(storage: Path, side: str) -> List[Path]:
    """The pytest-benchmark saves of one side (``*_<side>.json`` in the storage's machine folders), oldest first."""
    return sorted(storage.glob(f"*/*_{side}.json"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bench_ab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("storage", type=Path, nargs="?", help="pytest-benchmark storage folder with *_base.json and *_work.json saves")
    parser.add_argument("--fail", default="min:25%", help="[FIELD:]PERCENT%% or [FIELD:]SECONDS (default min:25%%)")
    parser.add_argument("--check", action="store_true", help="only check the --fail threshold (exit 2 naming the problem)")
    args = parser.parse_args(argv)
    try:
        threshold = parse_threshold(args.fail)
        if args.check:
            return 0
        if args.storage is None:
            raise ConfigError("give the pytest-benchmark storage folder to judge")
        base_paths, work_paths = saves(args.storage, "base"), saves(args.storage, "work")
        if not base_paths or not work_paths:
            raise ConfigError(f"{args.storage} holds no *_base.json and *_work.json pytest-benchmark saves: run bench/ab_compare.sh")
        base, work = best_of_rounds(base_paths, threshold.field), best_of_rounds(work_paths, threshold.field)
        verdicts = judge(base, work, threshold)
        if not verdicts:
            raise ConfigError("no benchmark was measured on both sides (did -k select none?)")
    except ConfigError as error:
        print(f"bench_ab: {error}", file=sys.stderr)
        return 2
    one_sided = sorted(set(base) ^ set(work))
    print(format_verdicts(verdicts, threshold, {"base": len(base_paths), "work": len(work_paths)}, one_sided))
    return 1 if any(v.regressed for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
