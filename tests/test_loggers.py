"""metrics.csv keeps every row across resumed runs."""

from __future__ import annotations

import csv

from segbench.loggers import ResumableCSVLogger


def rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_run_appends_without_losing_columns_or_rows(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0, "val/mIoU": 0.5}, step=0)
    first.save()
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="resume")
    second.log_metrics({"train/loss": 0.5}, step=1)  # no val/mIoU yet after resuming
    second.save()
    second.log_metrics({"train/lr": 0.1}, step=2)  # a new column
    second.save()
    got = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in got] == ["0", "1", "2"]
    assert got[0]["val/mIoU"] == "0.5"
    assert got[1]["train/loss"] == "0.5"
    assert got[2]["train/lr"] == "0.1"


def test_a_resumed_run_drops_the_rows_logged_after_its_checkpoint(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    for step in range(5):  # the killed attempt logged steps 0-4; its checkpoint was at step 2
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", mode="resume")
    for step in (3, 4, 5):  # the resumed run logs from step 3 on
        second.log_metrics({"train/loss": 10.0 + step}, step=step)
    second.save()
    got = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in got] == ["0", "1", "2", "3", "4", "5"]  # one row per step
    assert [r["train/loss"] for r in got][3:] == ["13.0", "14.0", "15.0"]


def test_a_fresh_run_starts_a_new_file(tmp_path):
    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    fresh = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    fresh.log_metrics({"val/mIoU": 0.5}, step=0)
    fresh.save()
    got = rows(tmp_path / "metrics.csv")
    assert got == [{"step": "0", "val/mIoU": "0.5"}]
