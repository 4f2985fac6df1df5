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
    assert [line["check"] for line in lines] == [
        "resnet20-mp", "resnet20-woodfisher", "resnet20-cbs", "resnet20-chita", "resnet18-woodfisher", "resnet18-chita"
    ]  # fmt: skip
    assert lines[1]["masks_repeat_identical"] is True
    assert {"gradients", "curvature", "selection", "update"} <= set(lines[4]["phases"])
