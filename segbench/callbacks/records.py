"""The run's record: :class:`RunFiles` keeps the run's sections of ``metrics.json`` (through
:class:`segbench.rundir.RunDir`) and writes an evaluation's confusion files; and what the other
callbacks share to read the trainer (its data module, the step an evaluation is logged at).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from segbench.config import config_changes
from segbench.data.base import SegmentationDataModule
from segbench.provenance import provenance
from segbench.rundir import (
    RunCheckpointIO,
    RunDir,
    atomic_write_files,
    checkpoint_step,
    text_writer,
)
from segbench.visualize import confusion_figure, figure_writer

log = logging.getLogger("segbench")


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


def unvalidated_end(trainer: L.Trainer) -> str | None:
    """Why a fit's final weights will not be validated, or ``None`` when they will be (or it
    cannot be told: time-based validation, a loader without a length).

    Lightning validates after batch ``b`` (0-based) of epoch ``e`` when ``e + 1`` is a multiple
    of ``check_val_every_n_epoch`` and ``b + 1`` of ``val_check_batch`` (with
    ``check_val_every_n_epoch`` null: when the count of batches over all epochs is a multiple of
    it). A fit ending elsewhere (``max_epochs`` not a multiple of ``check_val_every_n_epoch``,
    ``max_steps`` inside an epoch) never validates its final weights: ``best.ckpt`` and the
    test after fit come from an earlier validation, and the paper's number, the final model's,
    is not measured."""
    n, v = trainer.num_training_batches, trainer.val_check_batch
    every = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or getattr(trainer, "_val_check_time_interval", None):
        return None
    if not isinstance(v, int) or not isinstance(n, int) or n < 1:
        return None
    accumulate = trainer.accumulate_grad_batches
    per_epoch = math.ceil(n / accumulate)  # an epoch's last batch always steps
    limits = []  # the optimiser steps each limit allows
    if trainer.max_epochs not in (None, -1):
        limits.append(trainer.max_epochs * per_epoch)
    if trainer.max_steps > 0:
        limits.append(trainer.max_steps)
    if not limits:
        return None
    steps = min(limits)
    epoch, in_epoch = divmod(steps - 1, per_epoch)  # the epoch of the last step, its index there
    last_batch = min((in_epoch + 1) * accumulate, n) - 1
    if every is None:
        validated = (epoch * n + last_batch + 1) % v == 0
        how = f"trainer.val_check_interval {v} batches"
    else:
        validated = (epoch + 1) % every == 0 and (last_batch + 1) % v == 0
        how = f"trainer.check_val_every_n_epoch {every}"
        if v != n:
            how += f", validating after every {v} of an epoch's {n} batches"
    if validated:
        return None
    return (
        f"the fit ends at step {steps} (batch {last_batch + 1} of {n} in epoch {epoch + 1}) and "
        f"its final weights are never validated ({how}): best.ckpt and the test after fit "
        "come from an earlier validation. Make trainer.max_epochs a multiple of "
        "check_val_every_n_epoch or, to train by steps, set trainer.val_check_interval to a "
        "number of batches that divides trainer.max_steps and check_val_every_n_epoch to null"
    )


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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        why = unvalidated_end(trainer)
        if why and trainer.is_global_zero:
            log.warning(why)

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
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._eval_count(batch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
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
