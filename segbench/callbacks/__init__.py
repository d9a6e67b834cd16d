"""Callbacks: the run's record, its checkpoints of the latest state, exact resume, figures and
predictions, one module each.

* :class:`RunFiles` (:mod:`~segbench.callbacks.records`) keeps the run's sections of
  ``metrics.json`` up to date (through :class:`segbench.rundir.RunDir`): ``fit`` (the last and
  best validation, the test after fit, parameters, throughput, progress), ``validate`` / ``test``
  (a later command's metrics with its checkpoint, protocol and data) and ``provenance`` (how the
  run was made). ``segbench report`` builds its tables from these files.
* :class:`LastCheckpoint` (:mod:`~segbench.callbacks.checkpoints`) writes
  ``checkpoints/last.ckpt``, the latest training state, at the end of every epoch and every N
  steps or minutes, so a crash costs minutes, not epochs; :class:`BestCheckpoint` keeps
  ``checkpoints/best.ckpt``, the best validation, also in a run directory that has moved.
* :class:`ExactResume` (:mod:`~segbench.callbacks.resume`) stores every random generator in the
  checkpoints and restores them, and the training loader's position, on resume; with the data
  order and augmentation as pure functions of (seed, epoch, index) (:mod:`segbench.data.base`),
  a resumed run continues exactly as the uninterrupted one. :class:`ResumeWithChanges` applies a
  resume's deliberate changes of the optimiser settings and schedule.
* :class:`SegmentationVisualizer` (:mod:`~segbench.callbacks.figures`) draws validation images
  spread over the split, the same at every epoch, with their ground truth, prediction and errors
  into ``<run_dir>/val_examples.png`` and gives the loggers (W&B, TensorBoard, MLflow) that
  figure, the confusion matrix and the per-class IoU table.
* :class:`PredictionWriter` (:mod:`~segbench.callbacks.predictions`) saves ``segbench
  predict``'s label maps as palette PNGs.
"""

from segbench.callbacks.checkpoints import BestCheckpoint, LastCheckpoint
from segbench.callbacks.figures import SegmentationVisualizer
from segbench.callbacks.predictions import PredictionWriter
from segbench.callbacks.records import RunFiles
from segbench.callbacks.resume import ExactResume, ResumeWithChanges

__all__ = [
    "BestCheckpoint",
    "ExactResume",
    "LastCheckpoint",
    "PredictionWriter",
    "ResumeWithChanges",
    "RunFiles",
    "SegmentationVisualizer",
]
