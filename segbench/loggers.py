"""A CSV logger that survives resuming.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts in a non-empty directory
(Lightning 2.6: "Previous log files in this directory will be deleted"), so resuming a run in its
own directory would wipe its history. It also only knows the columns logged by the current
process, so rewriting the header for a new column would drop the earlier columns. This writer
keeps the file and starts from its header: rows are only ever appended, or re-written with more
columns, never fewer.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        """Keep what the directory holds (the base class deletes ``metrics.csv``)."""


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the rows of earlier runs in the same directory."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
