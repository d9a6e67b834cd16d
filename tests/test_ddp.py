"""DDP on CPU (gloo): the training values are means over every process, and evaluation metrics
equal single-process metrics exactly.

Lightning's DistributedSampler pads a split with repeated samples so that every process gets the
same number; segbench's evaluation loaders use an unrepeated sampler instead, so no image is
counted twice. With 7 validation images and 2 processes, padding would count one image twice.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segbench.cli import main
from tests.helpers import REPO, tiny_args


def segbench(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "segbench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def val_metrics(run_dir: Path) -> dict[str, float]:
    """The metrics of a ``segbench validate`` command (its own section of metrics.json)."""
    return json.loads((run_dir / "metrics.json").read_text())["validate"]["metrics"]


DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_ddp_fit_and_exact_evaluation(tmp_path):
    record = ["--trainer.callbacks+=tests.helpers.RecordTrainingLosses"]
    record += [f"--trainer.callbacks.out={tmp_path}"]
    fit = tiny_args(
        tmp_path,
        name="ddp-fit",
        extra=[
            *DDP,
            *record,
            "--data.init_args.num_val",
            "7",
            "--data.init_args.val_batch_size",
            "2",
        ],
    )
    said = segbench("fit", *fit, cwd=tmp_path)
    ckpt = tmp_path / "test" / "ddp-fit" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()

    # The epoch's training loss is the mean over every process's samples, not process 0's.
    steps: dict[int, list[tuple[int, float]]] = {0: []}
    for rank in (0, 1):
        for line in (tmp_path / f"losses-{rank}.txt").read_text().splitlines():
            epoch, n, loss = line.split()
            steps[int(epoch)].append((int(n), float(loss)))
    assert len(steps[0]) == 4  # 2 processes x 2 steps
    with (tmp_path / "test" / "ddp-fit" / "metrics.csv").open() as f:
        logged = {
            int(row["epoch"]): float(row["train/loss_epoch"])
            for row in csv.DictReader(f)
            if row.get("train/loss_epoch")
        }
    assert sorted(logged) == [0]
    for epoch, losses in steps.items():
        mean = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
        assert logged[epoch] == pytest.approx(mean, rel=1e-5), epoch
    # Lightning's advice to sync values logged at an epoch's end (about 100 lines a run) has
    # nothing left to advise: every value is reduced over the processes.
    assert "It is recommended to use `self.log(" not in said

    results = {}
    for name, extra in (("one", ["--trainer.devices", "1"]), ("two", DDP)):
        args = tiny_args(
            tmp_path,
            name=f"val-{name}",
            extra=[
                *extra,
                "--data.init_args.num_val",
                "7",
                "--data.init_args.val_batch_size",
                "2",
                "--ckpt_path",
                str(ckpt),
            ],
        )
        if name == "one":  # in this process: no launcher needed
            main(["validate", *args])
        else:
            assert "self.log('val/" not in segbench("validate", *args, cwd=tmp_path)
        results[name] = val_metrics(tmp_path / "test" / f"val-{name}")

    one, two = results["one"], results["two"]
    floats = {"val/loss", "val/ECE"}
    counted = {k for k in one if k.startswith("val/") and k not in floats}
    assert counted >= {"val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/bIoU"}
    for key in counted:  # integer counts (confusion matrix, boundary bands): exactly equal
        assert one[key] == two[key], key
    # The loss and the calibration bins' confidences are float sums reduced in another order
    # (the bins' pixel counts are integers): equal to rounding.
    for key in floats:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
