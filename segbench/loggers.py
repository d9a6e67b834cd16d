"""A CSV logger that survives resuming: one row per step, whatever happened before.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts in a non-empty directory
(Lightning 2.6: "Previous log files in this directory will be deleted"), so resuming a run in its
own directory would wipe its history. It also only knows the columns logged by the current
process, so rewriting the header for a new column would drop the earlier columns. This writer
keeps the file and starts from its header: rows are only ever appended, or re-written with more
columns, never fewer; every rewrite is atomic.

A resumed run (``resume=True``) first drops the rows that the interrupted attempt logged after
its checkpoint: those with a step at or past the first step the resumed run logs. Those steps are
trained and logged again, so the file ends with one row per step, as if never interrupted.
"""

from __future__ import annotations

import csv
import io
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from segbench.rundir import atomic_write_text


def _write_rows(path: str, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, *, resume: bool) -> None:
        super().__init__(log_dir)
        self._drop_from_first_step = resume
        if os.path.isfile(self.metrics_file_path):
            if resume:
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])
            else:  # a fresh run never continues an old file
                os.remove(self.metrics_file_path)

    def _check_log_dir_exists(self) -> None:
        """Keep what the directory holds (the base class deletes ``metrics.csv``)."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._drop_from_first_step and step is not None:
            self._drop_from_first_step = False
            self._drop_rows_from(step)
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fieldnames = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if not (r.get("step") and int(float(r["step"])) >= step)]
        if len(kept) < len(rows):
            _write_rows(self.metrics_file_path, fieldnames, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        _write_rows(self.metrics_file_path, fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when resuming (``resume=True``) and starts
    it afresh otherwise."""

    def __init__(self, *args: object, resume: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._resume = resume

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir, resume=self._resume)
        return self._experiment
