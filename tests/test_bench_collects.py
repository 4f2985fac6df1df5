"""The pytest-benchmark suite in bench/ is not run by the tests (minutes of timing), but it must keep importing the
package's API: collecting it catches a renamed function or module before someone saves a baseline."""

import subprocess
import sys
from pathlib import Path

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
