"""The A/B verdict of bench/ab_compare.sh (bench/bench_ab.py, a developer script beside it) on hand-made pytest-benchmark saves."""

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Dict

import pytest

from reflowbench.errors import ConfigError

_SPEC = importlib.util.spec_from_file_location("bench_ab", Path(__file__).resolve().parents[1] / "bench" / "bench_ab.py")
bench_ab = sys.modules.setdefault("bench_ab", importlib.util.module_from_spec(_SPEC))  # registered first: its dataclasses look it up
_SPEC.loader.exec_module(bench_ab)
Threshold, best_of_rounds, judge, main, parse_threshold = bench_ab.Threshold, bench_ab.best_of_rounds, bench_ab.judge, bench_ab.main, bench_ab.parse_threshold


def _save(storage: Path, number: int, side: str, mins: Dict[str, float]) -> Path:
    """A pytest-benchmark save as bench/ab_compare.sh leaves it: <machine>/<NNNN>_<side>.json."""
    path = storage / "Linux-CPython-3.11-64bit" / f"{number:04d}_{side}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    benchmarks = [{"fullname": name, "stats": {"min": seconds, "mean": seconds * 1.5}} for name, seconds in mins.items()]
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min:25%", Threshold("min", percent=25.0)),
        ("25%", Threshold("min", percent=25.0)),
        ("mean:0.5", Threshold("mean", seconds=0.5)),
    ],
)
def test_thresholds_read_as_pytest_benchmark_writes_them(text, expected):
    assert parse_threshold(text) == expected


@pytest.mark.parametrize("text", ["fast:25%", "min:", "min:-5%", "min:nan", "min:lots%"])
def test_a_bad_threshold_names_the_accepted_forms(text):
    with pytest.raises(ConfigError, match=r"\[FIELD:\]PERCENT% or \[FIELD:\]SECONDS"):
        parse_threshold(text)


def test_each_side_keeps_its_best_round(tmp_path):
    first = _save(tmp_path, 1, "base", {"a": 2.0, "b": 1.0})
    second = _save(tmp_path, 4, "base", {"a": 1.5, "b": 1.2})
    assert best_of_rounds([first, second], "min") == {"a": 1.5, "b": 1.0}
    assert best_of_rounds([first, second], "mean") == {"a": 2.25, "b": 1.5}


def test_the_percent_and_seconds_thresholds_judge_as_documented():
    base, work = {"a": 1.0, "b": 2.0}, {"a": 1.3, "b": 2.2}
    by_percent = judge(base, work, Threshold("min", percent=25.0))
    assert [(v.name, v.regressed) for v in by_percent] == [("a", True), ("b", False)]  # 30 % and 10 % slower
    assert math.isclose(by_percent[0].ratio, 1.3)
    by_seconds = judge(base, work, Threshold("min", seconds=0.25))
    assert [v.regressed for v in by_seconds] == [True, False]  # 0.3 s and 0.2 s slower


def test_a_regression_beyond_the_threshold_exits_1_and_is_named(tmp_path, capsys):
    # the machine was slow in the first round of each side: the best rounds (1.0 vs 1.1) pass, a single A/B (1.0 vs 1.6) would not
    _save(tmp_path, 1, "base", {"bench/test_x.py::test_fast": 1.0, "bench/test_x.py::test_slow": 1.0})
    _save(tmp_path, 2, "work", {"bench/test_x.py::test_fast": 1.6, "bench/test_x.py::test_slow": 2.0})
    _save(tmp_path, 3, "work", {"bench/test_x.py::test_fast": 1.1, "bench/test_x.py::test_slow": 1.9})
    _save(tmp_path, 4, "base", {"bench/test_x.py::test_fast": 1.2, "bench/test_x.py::test_slow": 1.1, "bench/test_x.py::test_gone": 3.0})
    assert main([str(tmp_path), "--fail", "min:25%"]) == 1
    out = capsys.readouterr().out
    assert "best of 2 base and 2 working-tree rounds" in out
    assert "Performance has regressed: bench/test_x.py::test_slow" in out and "test_fast" not in out.splitlines()[-1]
    assert "measured on one side only, not compared: bench/test_x.py::test_gone" in out
    assert main([str(tmp_path), "--fail", "min:100%"]) == 0


def test_a_storage_without_both_sides_is_refused(tmp_path, capsys):
    _save(tmp_path, 1, "base", {"a": 1.0})
    assert main([str(tmp_path)]) == 2
    assert "no *_base.json and *_work.json" in capsys.readouterr().err
    (tmp_path / "Linux-CPython-3.11-64bit" / "0002_work.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert "is not a pytest-benchmark save" in capsys.readouterr().err


def test_a_save_without_the_thresholds_statistic_is_refused(tmp_path, capsys):
    _save(tmp_path, 1, "base", {"a": 1.0})
    _save(tmp_path, 2, "work", {"a": 1.0})
    assert main([str(tmp_path), "--fail", "median:10%"]) == 2  # the hand-made saves hold min and mean only
    err = capsys.readouterr().err
    assert "is not a pytest-benchmark save with 'median'" in err and "Traceback" not in err
