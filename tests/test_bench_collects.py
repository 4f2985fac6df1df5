"""The pytest-benchmark suite in bench/ is not run by the tests (minutes of timing), but it must keep importing the
package's API: collecting it catches a renamed function or module before someone saves a baseline."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_benchmark_suite_collects():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH), "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = [line for line in result.stdout.splitlines() if "::test_" in line]
    assert any("test_reflow_overhead_over_a_forward_pass" in line for line in collected) and len(collected) >= 8, result.stdout[-2000:]


def test_the_ab_compare_script_benchmarks_a_revision_and_the_working_tree():
    """bench/ab_compare.sh on one tiny benchmark: the base revision (HEAD, in a temporary worktree) and the working tree
    are both measured and compared. Timing is not what is tested (the threshold is set out of reach): the plumbing is."""
    worktrees = _worktrees()
    result = _ab_compare("HEAD", "-k", "magnitude_global", "-q", rounds="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    order = [line.split(":")[1].split()[0] for line in result.stdout.splitlines() if line.startswith("== round")]
    assert order == ["base", "work", "work", "base"], result.stdout[-3000:]  # alternated, so a drifting machine favours neither
    verdict = result.stdout.split("== verdict ==")[1]
    assert "best of 2 base and 2 working-tree rounds" in verdict and "test_magnitude_global" in verdict, verdict
    assert "No benchmark slower beyond min:100000%" in verdict, verdict
    assert _worktrees() == worktrees  # the temporary worktree is removed


def test_the_ab_compare_script_names_an_unknown_revision_and_leaves_nothing():
    worktrees = _worktrees()
    result = _ab_compare("no-such-revision")
    assert result.returncode == 2 and "no revision named 'no-such-revision'" in result.stderr, result.stderr
    assert _worktrees() == worktrees


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"REFLOWBENCH_AB_ROUNDS": "0"}, "REFLOWBENCH_AB_ROUNDS must be a whole number"), ({"REFLOWBENCH_BENCH_FAIL": "fast:1%"}, "is not a threshold")],
)
def test_the_ab_compare_script_refuses_bad_settings_before_creating_anything(setting, message):
    worktrees = _worktrees()
    result = _ab_compare("HEAD", env=setting)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert _worktrees() == worktrees


def _worktrees() -> str:
    if shutil.which("git") is None or not (BENCH.parent / ".git").exists():
        pytest.skip("needs a git checkout")
    return subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=BENCH.parent).stdout


def _ab_compare(*args: str, rounds: str = "1", env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "REFLOWBENCH_BENCH_FAIL": "min:100000%", "REFLOWBENCH_AB_ROUNDS": rounds, **(env or {})}
    return subprocess.run(["bash", str(BENCH / "ab_compare.sh"), *args], capture_output=True, text=True, timeout=300, cwd=BENCH.parent, env=env)
