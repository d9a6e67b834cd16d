"""The benchmark scripts run (on the CPU, at toy size); their timings are not checked."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    for arch in ("FCN", "ParseNet", "DRN", "DUpsampling", "GALD"):
        for setting in ("bf16-mixed, channels_last |", "16-mixed, channels_last |", "compile"):
            assert any(line.startswith(f"| {arch} |") and setting in line
                       for line in table.splitlines()), (arch, setting)  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(line.split("|")[5].strip() not in ("", "–") for line in rows[1:]), table


def test_the_official_drn_comparison_runs_and_counts_the_same_parameters():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "drn_official.py"), "--size", "64",
         "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| float32, NCHW |" in done.stdout
    assert "| bf16 autocast + channels_last |" in done.stdout
