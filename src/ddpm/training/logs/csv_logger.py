"""Lightning's CSV logger, except that a run resumed into its own directory appends to its metrics.csv."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (Lightning's writer deletes it) and continues its columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose metrics file survives a resume into the same directory: the rows of every
    part of the run, in order (a column that first appears later is added to the earlier rows, empty)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
