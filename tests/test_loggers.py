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
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    second.log_metrics({"train/loss": 0.5}, step=1)  # no val/mIoU yet after resuming
    second.save()
    second.log_metrics({"train/lr": 0.1}, step=2)  # a new column
    second.save()
    got = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in got] == ["0", "1", "2"]
    assert got[0]["val/mIoU"] == "0.5"
    assert got[1]["train/loss"] == "0.5"
    assert got[2]["train/lr"] == "0.1"
