"""The prepared GPU check script runs end to end (here on CPU, at tiny sizes), so it does not rot."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_smoke_on_cpu():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--small"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["check"] for line in lines] == ["resnet20", "resnet18"]
    assert {"gradients", "curvature", "selection", "update"} <= set(lines[1]["phases"])
