"""Callbacks: the run's files, its checkpoints of the latest state, exact resume, figures.

* :class:`RunFiles` keeps the run's sections of ``metrics.json`` up to date (through
  :class:`segbench.rundir.RunDir`): ``fit`` (the last and best validation, the test after fit,
  parameters, throughput, progress), ``validate`` / ``test`` (a later command's metrics with its
  checkpoint, protocol and data) and ``provenance`` (how the run was made). ``segbench report``
  builds its tables from these files.
* :class:`LastCheckpoint` writes ``checkpoints/last.ckpt``, the latest training state, at the end
  of every epoch and every N steps or minutes, so a crash costs minutes, not epochs.
* :class:`ExactResume` stores every random generator in the checkpoints and restores them, and
  the training loader's position, on resume;
  with the data order and augmentation as pure functions of (seed, epoch, index)
  (:mod:`segbench.data.base`), a resumed run continues exactly as the uninterrupted one.
* :class:`SegmentationVisualizer` draws validation images spread over the split, the same at
  every epoch, with their ground truth, prediction and errors into ``<run_dir>/val_examples.png``
  and gives the loggers (W&B, TensorBoard, MLflow) that figure, the confusion matrix and the
  per-class IoU table.
* :class:`PredictionWriter` saves ``segbench predict``'s label maps as palette PNGs.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from segbench.config import config_changes
from segbench.data.base import SegmentationDataModule
from segbench.data.files import OUTPUT_SUFFIXES
from segbench.errors import DataError
from segbench.loggers import ResumableCSVLogger, log_validation_pictures
from segbench.provenance import provenance
from segbench.rundir import (
    RunCheckpointIO,
    RunDir,
    atomic_write,
    atomic_write_files,
    checkpoint_step,
    text_writer,
)
from segbench.visualize import (
    confusion_figure,
    denormalise,
    figure_writer,
    overlay,
    to_uint8,
    val_examples_figure,
)

log = logging.getLogger("segbench")

#: The files :class:`PredictionWriter` writes per image: ``<name>`` and these.
LABEL_MAP, OVERLAY, PROBS = OUTPUT_SUFFIXES


def datamodule_of(trainer: L.Trainer) -> SegmentationDataModule:
    """The trainer's data module (Lightning sets ``trainer.datamodule`` for each stage without
    declaring it on ``Trainer``); these callbacks draw and name with a segbench one."""
    dm = getattr(trainer, "datamodule", None)
    if not isinstance(dm, SegmentationDataModule):
        raise TypeError(f"segbench's callbacks need a SegmentationDataModule, got {dm!r}")
    return dm


def _measured_step(trainer: L.Trainer) -> int | None:
    """The training step of the checkpoint a ``segbench validate`` / ``test`` measured, as it
    was loaded: read from the file when the command ends, it was a later one's when the run
    trained on meanwhile (its ``last.ckpt`` saved again), and the earlier model's numbers read
    as current (:meth:`RunDir.changed_since`)."""
    if not trainer.ckpt_path:
        return None
    io = trainer.strategy.checkpoint_io
    if isinstance(io, RunCheckpointIO) and io.loaded_step is not None:
        return io.loaded_step
    return checkpoint_step(trainer.ckpt_path)


def evaluation_log_step(trainer: L.Trainer) -> int | None:
    """The step at which the loggers get an evaluation of a checkpoint (``segbench validate`` /
    ``test``, and the test after a fit): the step at which the fit logged its validation of
    those weights, one before the checkpoint's step (Lightning logs an epoch's end at its last
    optimiser step). Lightning's own, the fit loop's step count, is 0 in a command that only
    evaluates: TensorBoard, MLflow and W&B drew the best checkpoint's score at the start of the
    run's curve. ``None`` while fitting, or without a checkpoint."""
    if trainer.state.fn == TrainerFn.FITTING:
        return None
    step = _measured_step(trainer)
    return None if step is None else max(step - 1, 0)


def _floats(metrics: dict[str, Any], prefix: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in sorted(metrics.items()):
        if k.startswith(prefix):
            f = float(v)
            out[k] = None if math.isnan(f) else f
    return out


def _fit_loop_done(trainer: L.Trainer) -> bool:
    """Whether the fit loop ended by its limits (``FitLoop.done``), asked quietly: the property
    logs why it stops each time it is read, and Lightning had said it once already."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    was, rank_zero.disabled = rank_zero.disabled, True
    try:
        return bool(trainer.fit_loop.done)
    finally:
        rank_zero.disabled = was


class RunFiles(Callback):
    """Maintain the run's sections of ``metrics.json`` (global rank 0 only).

    Args:
        run_dir: the run directory.
        command: the ``segbench`` command running (``fit``, ``validate``, ``test``, ``predict``):
            ``fit`` owns the ``fit`` section (its test after fit included); ``validate`` and
            ``test`` write their own sections and never touch ``fit``'s.
        config: the flat resolved config to record with the results (``fit`` only).
        data: the command's data section, flat as ``config`` records it (``data.class_path``,
            ``data.init_args.*``): ``validate`` and ``test`` record what they measured on, which
            a later ``--config`` may have changed from the data the run trained on.
        effective_batch: the effective batch the recipe states; a different one is warned about.
    """

    def __init__(
        self,
        run_dir: str | Path | RunDir,
        command: str = "fit",
        config: dict[str, Any] | None = None,
        effective_batch: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.command = command
        self.config = config
        self.data = data
        self.effective_batch = effective_batch
        self.fit: dict[str, Any] = self.run.section("fit") if command == "fit" else {}
        self._train_time, self._train_images, self._tick, self._fit_start = 0.0, 0, 0.0, 0.0
        self._fit_before = 0.0
        self._eval_start, self._eval_images = 0.0, 0

    def _write_fit(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            self.run.write_section("fit", self.fit)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit["params"] = {
            "total": sum(p.numel() for p in pl_module.parameters()),
            "trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }
        self.fit["finished"] = False
        # A finished run trained on (run.resume_with_changes) is another model from here: its
        # old test goes (report would read it as the new model's, the sweep as done) until the
        # test after this fit writes its own.
        for key in ("test", "test_checkpoint"):
            self.fit.pop(key, None)
        self.fit.get("eval_timing", {}).pop("test", None)
        # A resumed run adds to the throughput totals of the runs before it.
        timing = self.fit.get("timing", {})
        self._train_images = timing.get("train_images", 0)
        self._train_time = timing.get("train_seconds", 0.0)
        self._fit_before = timing.get("fit_seconds", 0.0)
        self._fit_start = time.perf_counter()
        info = provenance(trainer)
        if trainer.is_global_zero:
            self.run.update(lambda d: self._start(d, info))
        stated = self.effective_batch
        if stated is not None and info["effective_batch"] != stated and trainer.is_global_zero:
            log.warning(
                "effective batch %d (%d per process x %d processes x %d accumulated) differs "
                "from the %d this recipe states (run.effective_batch): the learning rate and "
                "schedule were chosen for %d. Set trainer.accumulate_grad_batches or the batch "
                "size to match, or scale the learning rate.",
                info["effective_batch"],
                info["batch_per_process"],
                info["world_size"],
                info["accumulate_grad_batches"],
                stated,
                stated,
            )

    def _start(self, data: dict[str, Any], info: dict[str, Any]) -> None:
        """The fit section, the config and the provenance; every start of the run (resumes
        too) is kept."""
        data["fit"] = self.fit
        if self.config is not None:
            data["config"] = self.config
        attempts = (data.get("provenance") or {}).get("attempts", [])
        data["provenance"] = {**info, "attempts": [*attempts, info["attempt"]]}
        del data["provenance"]["attempt"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tick = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Time from one batch's end to the next's, loading included; validation (which runs
        # after the epoch's last batch) is excluded because each epoch restarts the clock.
        now = time.perf_counter()
        self._train_time += now - self._tick
        self._tick = now
        self._train_images += int(batch["image"].shape[0]) * trainer.world_size

    # -- evaluation time: wall-clock of the epoch (loading included), this process's images ---
    def _eval_begin(self) -> None:
        self._eval_start, self._eval_images = time.perf_counter(), 0

    def _eval_count(self, batch: Any) -> None:
        self._eval_images += int(batch["image"].shape[0])

    def _eval_seconds(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self._eval_start
        return {
            "seconds": seconds,
            "images": self._eval_images,
            "images_per_s": self._eval_images / seconds if seconds > 0 else None,
        }

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_count(batch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_count(batch)

    def _command_section(self, trainer: L.Trainer, stage: str, pl_module: Any) -> None:
        """A ``segbench validate`` / ``test`` command's own section, and its confusion matrix
        (``confusion_<stage>.csv`` and ``.png``)."""
        if not trainer.is_global_zero:
            return
        metrics = getattr(pl_module, "metrics", {})
        split = "val" if stage == "validate" else "test"
        confusion = getattr(metrics[split], "last_confusion", None) if split in metrics else None
        protocols = getattr(pl_module, "protocols", {})
        protocol = protocols.get("val" if stage == "validate" else "test")
        prefix = "val/" if stage == "validate" else "test/"
        # The confusion files and the section under one hold of the record: two commands of one
        # stage at once (two validates) leave one's pair, never one's files beside the other's
        # section.
        with self.run.record_lock():
            if confusion is not None:
                write_confusion(self.run, stage, confusion, list(pl_module.class_names))
            self.run.write_section(
                stage,
                {
                    "metrics": _floats(trainer.callback_metrics, prefix),
                    "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                    "checkpoint_step": _measured_step(trainer),
                    "protocol": protocol.to_dict() if protocol is not None else None,
                    "eval_timing": self._eval_seconds(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "data": self.data,
                    "data_changes": self._data_changes(stage),
                },
            )

    def _data_changes(self, stage: str) -> dict[str, list[Any]] | None:
        """``key -> [the run's, this command's]`` for the data keys that differ from the data the
        run trained on (its ``config`` section): ``{}`` when it measured on the run's own data,
        ``None`` when either side is unknown (no fit recorded a config here). Without it a
        ``test --config RUN/config.yaml --config other_data.yaml`` replaced the section with
        numbers of other data that read as the run's own."""
        recorded = self.run.section("config")
        if self.data is None or not recorded:
            return None
        ours = {k: v for k, v in recorded.items() if k.startswith("data.")}
        changes = config_changes(ours, self.data, one_sided=True)
        if changes:
            log.info(
                "%s measured on other data than %s trained on (metrics.json %s.data_changes): %s",
                stage,
                self.run.path,
                stage,
                ", ".join(f"{k} {new!r} (run: {old!r})" for k, (old, new) in changes.items()),
            )
        return changes

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.command == "validate":
            self._command_section(trainer, "validate", pl_module)
            return
        if self.command != "fit":
            return
        val = _floats(trainer.callback_metrics, "val/")
        if not val:
            return
        self.fit.setdefault("eval_timing", {})["val"] = self._eval_seconds()
        val["epoch"] = trainer.current_epoch
        val["step"] = trainer.global_step
        self.fit["val"] = val
        best = self.fit.get("best_val")
        if best is None or (val.get("val/mIoU") or 0.0) > (best.get("val/mIoU") or 0.0):
            self.fit["best_val"] = dict(val)
        self._update_timing()
        self._write_fit(trainer)

    def _update_timing(self) -> None:
        if self._train_time > 0:
            self.fit["timing"] = {
                **self.fit.get("timing", {}),
                "train_images": self._train_images,
                "train_seconds": self._train_time,
                "train_images_per_s": self._train_images / self._train_time,
            }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update_timing()
        self.fit.setdefault("timing", {})["fit_seconds"] = self._fit_before + (
            time.perf_counter() - self._fit_start
        )
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            self.fit["best_checkpoint"] = ckpt.best_model_path
        self.fit["completed_epochs"] = trainer.current_epoch
        self.fit["global_step"] = trainer.global_step
        self.fit["finished"] = _fit_loop_done(trainer) and not trainer.interrupted
        self._write_fit(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_at_checkpoint_step(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_at_checkpoint_step(trainer, pl_module)

    @staticmethod
    def _log_at_checkpoint_step(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """An evaluation's metrics go to the loggers at :func:`evaluation_log_step`: a value
        logged as ``step`` is the step Lightning logs the others at (and is not logged itself).
        Its ``metrics.csv`` row has no epoch, so the learning curves leave it out."""
        step = evaluation_log_step(trainer)
        if step is not None and not trainer.sanity_checking:
            pl_module.log("step", float(step), on_step=False, on_epoch=True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.command != "fit":
            self._command_section(trainer, "test", pl_module)
            return
        self.fit.setdefault("eval_timing", {})["test"] = self._eval_seconds()
        self.fit["test"] = _floats(trainer.callback_metrics, "test/")
        self.fit["test_checkpoint"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self._write_fit(trainer)


class LastCheckpoint(Checkpoint):
    """``checkpoints/last.ckpt``: the latest training state, for ``--ckpt_path last``.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other
    callbacks and after the best checkpoint (``ModelCheckpoint``, listed before it): at an
    epoch's end ``best.ckpt`` is written first and ``last.ckpt`` holds its state as it is then.

    Written at the end of every training epoch (after that epoch's validation), and within an
    epoch every ``every_n_steps`` optimiser steps and/or every ``every_minutes`` minutes. The
    file is replaced atomically (:class:`segbench.rundir.RunCheckpointIO`), so a kill while it is
    written leaves the previous one. The ``metrics.csv`` row of the state saved is on disk before
    the checkpoint, so the resumed run continues the file without gaps or repeats.

    An interrupted fit (SIGTERM from ``kill``, ``timeout`` or a scheduler; SIGINT from Ctrl-C)
    stops at the next state that resumes exactly and saves it there: the end of the optimiser
    step under way (after its accumulated batches) or, when the signal comes during an epoch's
    last batch or its validation, the end of the epoch (a run whose last epoch it was finishes).
    Lightning stops the loop (its SIGTERM flag, which SIGINT here raises too); the decision is
    every process's (any of them asked). A second Ctrl-C stops at once, losing the steps since
    the last checkpoint. :attr:`interrupted_by` names the signal.

    Args:
        path: the checkpoint file.
        every_n_steps: also save every N optimiser steps (``None``: not by steps).
        every_minutes: also save when this many minutes passed since the last save
            (``None``: not by time).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
    ) -> None:
        self.path = Path(path)
        #: Never only the weights: the file is for resuming (optimiser, loops, RNG, loader).
        self.save_weights_only: bool = False
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self._last_save = time.monotonic()
        #: ``"SIGTERM"`` or ``"SIGINT"`` once a signal asked the fit to stop; ``None`` before.
        self.interrupted_by: str | None = None
        #: A second Ctrl-C stopped the fit at once (no checkpoint of where it was).
        self.stopped_at_once = False
        self._pending = False  # asked to stop where the state could not be saved
        self._sigint_before: Any = None
        #: The optimiser step of the last save (``None``: none in this process).
        self.saved_step: int | None = None

    def _save(self, trainer: L.Trainer, *, epoch_end: bool = False) -> None:
        self._write_ahead(trainer, epoch_end=epoch_end)
        trainer.save_checkpoint(self.path, weights_only=self.save_weights_only)
        self._last_save = time.monotonic()
        self.saved_step = trainer.global_step

    @staticmethod
    def _write_ahead(trainer: L.Trainer, *, epoch_end: bool) -> None:
        """The ``metrics.csv`` row Lightning logs right after this hook (the step's values, or
        at an epoch's end the epoch's), written before the checkpoint: the resumed run logs
        from the next step on, so a kill between the save and Lightning's write would lose it."""
        connector = trainer._logger_connector
        if not (epoch_end or connector.should_update_logs):
            return
        # What the connector will log; on every process, as computing may synchronise them.
        metrics = connector.metrics["log"]
        writers = [
            logger.experiment
            for logger in trainer.loggers
            if isinstance(logger, ResumableCSVLogger) and trainer.is_global_zero
        ]
        if not writers or not metrics:
            return
        row = convert_tensors_to_scalars(metrics)
        row.setdefault("epoch", trainer.current_epoch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped - (1 if epoch_end else 0)
        for writer in writers:
            writer.write_ahead(row, step)

    def _due(self, trainer: L.Trainer) -> bool:
        n = self.every_n_steps
        due = n is not None and n > 0 and trainer.global_step % n == 0
        if self.every_minutes is not None:
            due |= time.monotonic() - self._last_save >= 60 * self.every_minutes
        # Every process must save together (the dump is collective): rank 0 decides.
        return bool(trainer.strategy.broadcast(due))

    # -- interrupts ---------------------------------------------------------------------------
    def _on_sigint(self, trainer: L.Trainer) -> None:
        if self.interrupted_by is not None:  # the second Ctrl-C
            self.stopped_at_once = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.interrupted_by = "SIGINT"
        trainer._signal_connector.received_sigterm = True
        log.warning(
            "Ctrl-C: the fit stops at the end of this step and saves it there (Ctrl-C again stops "
            "at once, losing the steps since the last checkpoint)"
        )

    def _stop_asked(self, trainer: L.Trainer) -> bool:
        """Whether any process was asked to stop (a collective: every process calls it)."""
        asked = bool(trainer.received_sigterm) or self._pending
        stop = bool(trainer.strategy.reduce_boolean_decision(asked, all=False))
        if stop and self.interrupted_by is None:
            self.interrupted_by = "SIGTERM"
        return stop

    @staticmethod
    def _set_stop(trainer: L.Trainer, stop: bool) -> None:
        """Lightning's flag, which ends the loop at its next check (after this batch or epoch)."""
        trainer._signal_connector.received_sigterm = stop

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._sigint_before = signal.signal(
                signal.SIGINT, lambda signum, frame: self._on_sigint(trainer)
            )

    def _restore_sigint(self) -> None:
        if self._sigint_before is not None:
            signal.signal(signal.SIGINT, self._sigint_before)
            self._sigint_before = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The epoch's last batch is followed by validation and the end-of-epoch save.
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        can_save = not last_of_epoch and not trainer.fit_loop._should_accumulate()
        if self._stop_asked(trainer):
            if can_save:
                self._save(trainer)
            # Stop after this batch where it was saved; else hold the stop until it can be.
            self._pending = not can_save
            self._set_stop(trainer, can_save)
        elif can_save and self._due(trainer):
            self._save(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # A stop asked during a fit's validation waits for the epoch's end, which is saved.
        if trainer.state.fn == TrainerFn.FITTING and trainer.received_sigterm:
            self._pending = True
            self._set_stop(trainer, False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, epoch_end=True)
        if self._stop_asked(trainer):
            epochs = trainer.current_epoch + 1  # counting the one ending (not yet completed)
            finished = 0 < (trainer.max_epochs or 0) <= epochs or (
                0 < trainer.max_steps <= trainer.global_step
            )
            self._pending = False
            self._set_stop(trainer, not finished)  # the last epoch is saved and done: it ends


class ExactResume(Callback):
    """What Lightning does not restore by itself: every random generator of every process, and
    the training loader's position when the run uses the loop's ``estimated_stepping_batches``.

    * The generators (torch, CUDA, NumPy, Python) of each process go into every checkpoint and
      are restored at the start of training (after the sanity check and the loaders' set-up,
      which draw nothing from the global generators: the loaders have their own), so the step
      after a resume draws what the uninterrupted run drew there (dropout, OHEM ties).
    * The loader's position (:class:`segbench.data.base.ResumableLoader`): Lightning hands a
      stateful loader its state when it sets the loader up, but the task's schedule asks for
      ``trainer.estimated_stepping_batches`` in ``configure_optimizers``, which sets the loader
      up before the loop state is restored, so that hand-over never happens. It is done here,
      and the loader's iterator is made anew from the restored position.
    * The epoch's running sums of the values logged with ``on_epoch=True`` (``train/loss_epoch``
      and its terms), which Lightning keeps outside its checkpoints: a checkpoint written
      mid-epoch holds each process's sums, and the resumed run adds them to its own after its
      first step, so the interrupted epoch's mean is the uninterrupted run's, to the bit.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._sums: dict[str, Any] | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _epoch_sums(self) -> dict[str, Any] | None:
        """This process's running sums of the epoch-level training values, mid-epoch only."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.current.ready >= trainer.num_training_batches:
            return None  # the epoch's end: the resumed run starts a new epoch
        sums = {}
        for key, metric in epoch_loop._results.items():
            if metric.is_tensor and metric.meta.on_epoch and not metric.has_reset:
                mean = metric.meta.is_mean_reduction
                sums[key] = {
                    "value": metric.value.detach().cpu().clone(),
                    "count": metric.cumulated_batch_size.detach().cpu().clone() if mean else None,
                }
        return {"epoch": trainer.current_epoch, "metrics": sums}

    def _add_sums(self, trainer: L.Trainer) -> None:
        """After the resumed run's first step: add the checkpoint's sums to the fresh ones
        (``saved + this step`` is the uninterrupted run's ``sum + this step``, to the bit)."""
        pending, self._sums = self._sums, None
        if not pending or pending["epoch"] != trainer.current_epoch:
            return
        results = trainer.fit_loop.epoch_loop._results
        for key, saved in pending["metrics"].items():
            metric = results.get(key)
            if metric is None:
                continue
            value = saved["value"].to(metric.value.device, metric.value.dtype)
            meta = metric.meta
            if meta.is_max_reduction or meta.is_min_reduction:
                metric.value = meta.reduce_fx(value, metric.value)
            else:
                metric.value = value + metric.value
            if saved["count"] is not None:
                count = saved["count"].to(metric.cumulated_batch_size.device)
                metric.cumulated_batch_size = count + metric.cumulated_batch_size

    @staticmethod
    def _capture() -> dict[str, Any]:
        state = np.random.get_state(legacy=True)
        assert isinstance(state, tuple)  # the legacy form: (kind, keys, pos, has_gauss, cached)
        kind, keys, pos, has_gauss, cached = state
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }

    @staticmethod
    def _apply(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))

    def state_dict(self) -> dict[str, Any]:
        own = {**self._capture(), "epoch_sums": self._epoch_sums()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, own)
            return {"ranks": states}
        return {"ranks": [own]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._to_restore = ranks[rank] if rank < len(ranks) else None
        if ranks and self._to_restore is None:
            log.warning(
                "the checkpoint holds the random state of %d processes, this run has more: "
                "process %d continues with a fresh one (the resume is not bit-exact)",
                len(ranks),
                rank,
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load:
            fit_loop._load_combined_loader_states()
            assert fit_loop._data_fetcher is not None  # set up before on_train_start
            iter(fit_loop._data_fetcher)  # the iterator, from the restored position
        if self._to_restore is not None:
            self._sums = self._to_restore.get("epoch_sums")
            self._apply(self._to_restore)
            self._to_restore = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._sums is not None:
            self._add_sums(trainer)


class ResumeWithChanges(Callback):
    """A resume with ``run.resume_with_changes``: the new config's optimiser settings and
    learning-rate schedule replace the checkpoint's from its step on, and the changes are
    recorded in this attempt's ``provenance``.

    Lightning makes the optimiser and the schedule from the (new) config before ``on_fit_start``
    and loads the checkpoint's state over them after it. Their fresh state is kept here at
    ``on_fit_start``; at ``on_train_start``, after the load, every parameter group takes its
    fresh settings back and the fresh schedule is stepped as often as the checkpoint's had been,
    so each learning rate from here on is the one the new config gives at that step, as if it
    had held from the start. The optimiser's per-parameter state (momentum buffers) stays the
    checkpoint's.

    Args:
        run: the run directory.
        changes: config key -> ``[recorded value, new value]``.
    """

    def __init__(self, run: RunDir, changes: dict[str, list[Any]]) -> None:
        self.run, self.changes = run, changes
        self._groups: list[list[dict[str, Any]]] = []
        self._schedules: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._groups = [
            copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in o.param_groups])
            for o in trainer.optimizers
        ]
        self._schedules = [
            copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before = [g["lr"] for o in trainer.optimizers for g in o.param_groups]
        for optimizer, groups in zip(trainer.optimizers, self._groups, strict=True):
            for group, fresh in zip(optimizer.param_groups, groups, strict=True):
                group.update(copy.deepcopy(fresh))
        for config, fresh in zip(trainer.lr_scheduler_configs, self._schedules, strict=True):
            scheduler = config.scheduler
            # segbench's schedules step by optimiser step; a metric-driven one cannot be replayed
            assert not isinstance(scheduler, ReduceLROnPlateau), "cannot replay ReduceLROnPlateau"
            steps = scheduler.last_epoch - fresh["last_epoch"]
            scheduler.load_state_dict(copy.deepcopy(fresh))
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(steps):
                    scheduler.step()
        after = [g["lr"] for o in trainer.optimizers for g in o.param_groups]
        log.info(
            "learning rate at step %d: %s (the checkpoint's: %s)",
            trainer.global_step,
            ", ".join(f"{lr:.6g}" for lr in after),
            ", ".join(f"{lr:.6g}" for lr in before),
        )
        if trainer.is_global_zero:
            record = {"changes": self.changes, "changed_at_step": trainer.global_step}

            def note(data: dict[str, Any]) -> None:
                attempts = data.setdefault("provenance", {}).setdefault("attempts", [{}])
                attempts[-1].update(record)

            self.run.update(note)


def write_confusion(run: RunDir, stage: str, confusion: Tensor, names: list[str]) -> None:
    """``confusion_<stage>.csv`` (pixel counts; rows: true class, columns: predicted) and
    ``confusion_<stage>.png`` (each row normalised to the class's pixels)."""
    counts = confusion.long().numpy()
    lines = ["true \\ predicted," + ",".join(names)]
    lines += [
        f"{name}," + ",".join(str(int(v)) for v in row)
        for name, row in zip(names, counts, strict=True)
    ]
    fig = confusion_figure(counts, names, f"{stage}: share of each true class's pixels")
    atomic_write_files({  # one version: never an earlier command's figure beside this table
        run.file(f"confusion_{stage}.csv"): text_writer("\n".join(lines) + "\n"),
        run.file(f"confusion_{stage}.png"): figure_writer(fig),
    })  # fmt: skip


class SegmentationVisualizer(Callback):
    """After each validation: ``val_examples.png``, and the same pictures in every logger.

    The examples are ``num_images`` images spread evenly over the val split (its first and last
    image and those between), the same ones at every validation, so the figure shows the
    model's progress on fixed scenes. Each is predicted again under the val protocol (a few
    forward passes), drawn in four labelled columns (image, ground truth, prediction, error
    map) with a class legend (:func:`segbench.visualize.val_examples_figure`), and written to
    the run directory. Loggers that show pictures (W&B, TensorBoard, MLflow:
    :func:`segbench.loggers.log_validation_pictures`) get that figure, the confusion matrix and
    the per-class IoU table at the step.

    Args:
        run_dir: the run directory.
        num_images: how many val images to show (0: none).
    """

    def __init__(self, run_dir: str | Path, num_images: int = 4) -> None:
        self.run_dir = Path(run_dir)
        self.num_images = num_images

    @staticmethod
    def picks(size: int, num: int) -> list[int]:
        """``num`` indices spread evenly over ``range(size)``, first and last included."""
        if size <= 0 or num <= 0:
            return []
        return sorted({round(float(i)) for i in np.linspace(0, size - 1, min(num, size))})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images <= 0:
            return
        loader = trainer.val_dataloaders
        dataset = getattr(loader, "dataset", None)
        predict = getattr(pl_module, "predict_log_probs", None)
        if dataset is None or not callable(predict):
            return
        dm = datamodule_of(trainer)
        picks = self.picks(len(dataset), self.num_images)
        images, targets, preds = [], [], []
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            for i in picks:
                item = dataset[i]
                mask = item["mask"]
                image = item["image"].unsqueeze(0).to(pl_module.device)
                log_probs = predict(image, "val", tuple(mask.shape[-2:]))
                preds.append(log_probs.argmax(1)[0].cpu().numpy())
                targets.append(mask.cpu().numpy())
                images.append(to_uint8(denormalise(item["image"][None], dm))[0])
        pl_module.train(was_training)
        pictures = [im.permute(1, 2, 0).numpy() for im in images]
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            when = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        else:  # segbench validate: which weights
            when = f"{Path(trainer.ckpt_path).stem} checkpoint" if trainer.ckpt_path else "weights"

        picture = val_examples_figure(
            pictures,
            targets,
            preds,
            dm.colours(),
            list(dm.class_names),
            ignore_index=dm.ignore_index,
            row_labels=[f"val #{i}" for i in picks],
            title=f"{self.run_dir.name}: validation examples ({when})",
        )
        path = RunDir(self.run_dir).file(RunDir.VAL_EXAMPLES)
        atomic_write(path, lambda f: picture.save(f, format="PNG"))
        metrics = getattr(pl_module, "metrics", {})
        confusion = getattr(metrics["val"], "last_confusion", None) if "val" in metrics else None
        # The step Lightning logs this validation's metrics at: during fit, that of the last
        # optimiser step, so a resume's purge (from the checkpoint's step on) keeps them; in
        # segbench validate, the step the fit logged these weights' validation at.
        log_validation_pictures(
            trainer.loggers,
            step=max(trainer.global_step - 1, 0) if fitting else evaluation_log_step(trainer) or 0,
            examples=np.asarray(picture),
            masks=(pictures, targets, preds),
            confusion=confusion,
            class_names=list(dm.class_names),
            ignore_index=dm.ignore_index,
            iou={
                name: float(trainer.callback_metrics.get(f"val/IoU/{name}", float("nan")))
                for name in dm.class_names
            },
        )


class PredictionWriter(BasePredictionWriter):
    """Write ``segbench predict``'s results, per image, into ``out_dir``:

    * ``<name>.png``: the label map at the image's own size, a palette PNG (pixel values are
      class indices, the palette gives the data set's colours);
    * ``<name>_overlay.png``: the image blended with the class colours, with a legend of the
      classes present (``overlays``);
    * ``<name>_probs.npy``: the class probabilities, float16 ``K x H x W`` (``save_probs``).

    An image that could not be read is reported and skipped; the end says how many images were
    written, in how long, and which were skipped. No file is written twice in one prediction
    (:func:`segbench.data.files.output_names` makes the names distinct as files; a data set whose
    test split names two images alike is refused, naming the file, rather than overwriting it).

    Args:
        out_dir: the folder of the files.
        overlays: also write the overlays.
        save_probs: also write the probabilities.
    """

    def __init__(self, out_dir: str | Path, *, overlays: bool = True, save_probs: bool = False):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.overlays, self.save_probs = overlays, save_probs
        self.written = 0
        self.skipped: list[tuple[str, str]] = []
        self._start = 0.0
        self._files: set[Path] = set()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written, self.skipped, self._start = 0, [], time.perf_counter()
        self._files = set()

    def _path(self, name: str, suffix: str) -> Path:
        """The file ``<name><suffix>``, claimed for this prediction: one written already (two
        images of one name) is an error rather than overwritten."""
        path = self.out_dir / f"{name}{suffix}"
        if path in self._files:
            raise DataError(
                f"segbench predict: {path} would be written twice: two images are named "
                f"{name!r} (rename one, or predict them into separate --out folders)"
            )
        self._files.add(path)
        return path

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        from PIL import Image

        for path, message in batch.get("errors") or []:
            log.warning("skipped %s: %s", path, message)
            self.skipped.append((path, message))
        if prediction["pred"] is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dm = datamodule_of(trainer)
        palette = dm.colours()
        flat_palette = [c for rgb in palette for c in rgb]
        names = prediction.get("name") or [
            f"{batch_idx}_{i}" for i in range(len(prediction["pred"]))
        ]
        preds = prediction["pred"].to(torch.uint8).cpu().numpy()
        originals = batch.get("original")
        if self.overlays and originals is None:  # the test split: the image as normalised
            originals = to_uint8(denormalise(batch["image"], dm))
        for i, (name, pred) in enumerate(zip(names, preds, strict=True)):
            img = Image.fromarray(pred, mode="P")
            img.putpalette(flat_palette)
            # An image's files as one version (rundir.atomic_write_files): a killed prediction
            # leaves whole files or none, never a truncated PNG under its real name, and never
            # an earlier prediction's overlay or probabilities beside this label map (those
            # this prediction does not write are removed with it).
            label_map, overlay_file, probs_file = (
                self._path(name, kind) for kind in (LABEL_MAP, OVERLAY, PROBS)
            )
            writes: dict[Path, Callable[[BinaryIO], object] | None] = {
                label_map: partial(img.save, format="PNG"),
                overlay_file: None,
                probs_file: None,
            }
            if self.overlays:
                image = originals[i].cpu().permute(1, 2, 0).numpy()
                picture = overlay(image, pred, palette, list(dm.class_names))
                writes[overlay_file] = partial(picture.save, format="PNG")
            if self.save_probs:
                if prediction.get("probs") is not None:  # tiled: kept as float16
                    probs = prediction["probs"][i].numpy()
                else:
                    probs = prediction["log_probs"][i].float().exp().to(torch.float16).cpu().numpy()
                writes[probs_file] = partial(np.save, arr=probs)
            atomic_write_files(writes)
            self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        per_image = f" ({seconds / self.written:.3f} s per image)" if self.written else ""
        log.info(
            "predicted %d image(s) in %.1f s%s into %s",
            self.written,
            seconds,
            per_image,
            self.out_dir,
        )
        skipped = [
            *getattr(getattr(trainer, "datamodule", None), "skipped_images", []),
            *self.skipped,
        ]
        if skipped:
            log.warning(
                "skipped %d image(s), each named above with why (unreadable, or over "
                "--max_megapixels): %s",
                len(skipped),
                ", ".join(p for p, _ in skipped),
            )
