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
        "resnet20-mp", "resnet20-woodfisher", "resnet20-cbs", "resnet20-chita", "resnet18-woodfisher", "resnet18-chita",
        "mobilenetv1-2of4-kernels", "resnet18-2of4-kernels",
    ]  # fmt: skip
    kernels = lines[6]  # MobileNetV1's 13 pointwise convolutions are 2:4 and large enough; the stem and depthwise ones are not
    assert kernels["layers_on_2of4_kernels"] >= 12 and kernels["relative_output_difference"] < 1e-5 and "CPU stand-in" in kernels["kernels"]
    assert lines[1]["masks_repeat_identical"] is True
    assert {"gradients", "curvature", "selection", "update"} <= set(lines[4]["phases"])


def test_memory_profile_script_reports_every_phase_of_the_pruners_own_run():
    options = json.dumps({"num_grads": 256, "block_size": 500})  # G of 0.26 GiB: over the size whose estimate is announced
    command = [sys.executable, str(REPO / "bench" / "memory_profile.py"), "--options", options, "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    phases = summary["phases"]
    assert {"gradients", "curvature", "update", "prune"} <= set(phases)
    assert phases["prune"]["peak_rss_mb"] >= max(cost["peak_rss_mb"] for cost in phases.values())
    assert any("gradient matrix" in line for line in summary["estimates"])  # the budget estimate the pruner checked


def test_memory_profile_script_names_a_malformed_options_argument():
    command = [sys.executable, str(REPO / "bench" / "memory_profile.py"), "--options", "{num_grads: 16}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "--options must be a JSON object" in done.stderr and "Traceback" not in done.stderr
