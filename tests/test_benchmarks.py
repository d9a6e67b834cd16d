"""The benchmark scripts run (on the CPU, at toy size); their timings are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO


def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path):
    """`make gpu-check`'s own command on one architecture, every setting (16-mixed included,
    which `make gpu-evidence` skips); every architecture runs through it in the evidence's dry
    run below."""
    out = tmp_path / "gpu-check.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--archs", "FCN",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    for setting in ("bf16-mixed, channels_last |", "16-mixed, channels_last |", "compile"):
        assert any(line.startswith("| FCN |") and setting in line
                   for line in table.splitlines()), setting  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3
    assert all(line.split("|")[5].strip() not in ("", "–") for line in rows[1:]), table
    # The compiled row counts the graphs of the training forward: FCN's is one (no break).
    header = [c.strip() for c in rows[0].split("|")]
    graphs = {line.split("|")[2].strip(): line.split("|")[header.index("graphs")].strip()
              for line in rows[1:]}  # fmt: skip
    assert graphs == {"bf16-mixed, channels_last": "–", "16-mixed, channels_last": "–",
                      "bf16-mixed, channels_last, compile": "1"}, table  # fmt: skip


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


def test_segbench_benchmark_measures_every_part_and_writes_its_files(tmp_path, capsys, recwarn):
    from segbench.cli import main
    from segbench.numerics import resolve_precision
    from tests.helpers import tiny_args

    out = tmp_path / "bench"
    main(["benchmark", *tiny_args(tmp_path), "--what", "step", "baseline", "loop", "loader",
          "forward", "sizes", "--repeats", "2", "--warmup", "1", "--loop_steps", "4",
          "--loader_batches", "2", "--sizes", "64", "32", "--out", str(out)])  # fmt: skip
    # the timed fit validates nothing and saves no checkpoint: no warning that the best
    # checkpoint's key is missing
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
    rows = json.loads((out / "benchmark.json").read_text())
    assert [r["what"] for r in rows] == [
        "step", "baseline", "loop", "loader", "forward", "size 32", "size 64"
    ]  # fmt: skip
    by = {r["what"]: r for r in rows}
    # the recipe's setting: precision fast, as this machine resolves it
    assert by["step"]["setting"] == f"{resolve_precision('fast', 'cpu')}, channels_last"
    assert by["baseline"]["setting"] == "32-true"
    assert all(r["images_per_s"] > 0 and r["iqr"][0] <= r["iqr"][1] for r in rows)
    assert by["loop"]["repeats"] == 4 - 1 - 1  # steps after the first, minus the warm-up
    ratio = by["loop"]["notes"]["loop_over_step"]
    assert ratio == by["loop"]["images_per_s"] / by["step"]["images_per_s"]
    assert by["size 64"]["peak_memory_mb"] >= by["size 32"]["peak_memory_mb"] > 0
    assert (out / "benchmark_sizes.png").stat().st_size > 1000
    assert "Ratios and notes: loop_over_step" in (out / "benchmark.md").read_text()
    assert "| loop |" in capsys.readouterr().out


def test_gpu_evidence_dry_run_runs_every_stage_on_the_cpu(tmp_path):
    """`make gpu-evidence` at toy size: the GPU check of every architecture (compiled: one, as
    the dynamo tracing takes seconds an architecture even with the eager backend), the ParseNet
    sweep, its condition (erf, cue-distance) and claims, and at most 8 files back (the device
    tool's limit)."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_evidence.py"), "--dry-run", "--out",
         str(out), "--runs", str(tmp_path / "runs"), "--compiled_archs", "FCN"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-evidence.json", "gpu-evidence.log", "gpu-evidence.md", "runs.tar.gz"]
    text = (out / "gpu-evidence.md").read_text()
    for arch in ("DRN", "DUpsampling", "FCN", "GALD", "ParseNet"):
        assert f"| {arch} | bf16-mixed, channels_last | 64 |" in text
    assert "| FCN | bf16-mixed, channels_last, compile | 64 |" in text
    compiled = next(line for line in text.splitlines() if ", compile | 64 |" in line)
    assert compiled.endswith("| 1 |  |"), compiled  # one graph, no error
    assert text.count(", compile |") == 1
    assert "Test condition, measured on `parsenet-context-context/fcn32s-s0`" in text
    assert "| boat |" in text
    assert "| car |" in text
    claims = [line for line in text.splitlines() if line.startswith("| [")]
    assert claims, text
    assert all(line.startswith("| [parsenet]") for line in claims), text
    assert "(parsenet-context)" in text
    assert "(parsenet-context-boat)" in text
    result = json.loads((out / "gpu-evidence.json").read_text())
    assert result["seeds"] == [0]
    assert result["condition"]["radius"] > 0
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("fcn32s-s0/metrics.json") for n in names)
    assert any(n.endswith("erf/erf.json") for n in names)
    assert not any(n.endswith(".ckpt") for n in names)


@pytest.mark.slow  # ~40 s of Inductor compilation; make test compiles a run with aot_eager
def test_segbench_benchmark_times_eager_and_compiled_alternately(tmp_path):
    from segbench.cli import main
    from tests.helpers import tiny_args

    out = tmp_path / "bench"
    main(["benchmark", *tiny_args(tmp_path), "--what", "compile", "--repeats", "3",
          "--warmup", "1", "--out", str(out)])  # fmt: skip
    rows = json.loads((out / "benchmark.json").read_text())
    assert [r["what"] for r in rows] == ["step, eager", "step, compiled"]
    assert rows[1]["setting"].endswith(", compile default")
    assert all(r["repeats"] == 3 and r["images_per_s"] > 0 for r in rows)
    notes = rows[1]["notes"]
    assert notes["compiled_over_eager"] == rows[1]["images_per_s"] / rows[0]["images_per_s"]
    assert "compile_s" in notes


def test_the_interquartile_range_of_few_repeats_stays_within_the_measured_rates():
    # 2 repeats (segbench benchmark --repeats 2) once gave an IQR of -1.8-15.8 images/s.
    from segbench.benchmark import _stats

    for seconds in ([1.0, 3.0], [1.0, 2.0, 8.0], [0.5, 0.6, 0.7, 3.0]):
        rates = [4 / s for s in seconds]
        timing = _stats("step", seconds, 4, batch_size=4, input_size=(8, 8), setting="")
        assert min(rates) <= timing.iqr[0] <= timing.images_per_s <= timing.iqr[1] <= max(rates)
