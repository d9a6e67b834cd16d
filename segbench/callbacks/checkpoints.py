"""The run's two checkpoints: :class:`LastCheckpoint` writes ``checkpoints/last.ckpt``, the latest
training state, at the end of every epoch and every N steps or minutes, so a crash costs minutes,
not epochs; :class:`BestCheckpoint` keeps ``checkpoints/best.ckpt``, the best validation so far,
and knows it when the run directory has moved.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from segbench.loggers import ResumableCSVLogger

log = logging.getLogger("segbench")


class BestCheckpoint(ModelCheckpoint):
    """``checkpoints/best.ckpt``: the weights of the best validation so far (highest
    ``val/mIoU``), one file, replaced when a validation beats it.

    Lightning's ``ModelCheckpoint``, which keeps in every checkpoint its record of the best so far
    (its score and file) under the folder it wrote to. Lightning drops that record, with a
    warning, when a resumed run's folder is another: a run directory moved or copied (runs
    brought home from a cluster, a root renamed) and resumed there wrote its next validation
    to ``best.ckpt`` whatever its score, so a worse model replaced the best one while the run's
    ``metrics.json`` still named the best validation. A fit resumes only its own checkpoints
    (``--ckpt_path`` is checked to lie in the run's ``checkpoints/``), so the folder recorded
    is this one under its old path: the record's files are taken as the same names here, and
    the record is kept. (An evaluation never writes ``best.ckpt``; the same holds there.)

    Args:
        dirpath: the run's ``checkpoints/`` folder.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor="val/mIoU",
            mode="max",
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            # best.ckpt is the run's one best file: a resumed run whose checkpoint predates a
            # killed process's best.ckpt replaces it (with the same weights, the resume being
            # exact) instead of writing best-v1.ckpt beside it, which left best.ckpt stale for
            # the test stage and the tools.
            enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so the checkpoints written before this class resume with it.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and Path(old) != Path(new):  # the run directory has moved

            def here(path: str) -> str:
                """A file of the old folder, under the same name in this one."""
                return str(Path(new) / Path(path).name) if Path(path).parent == Path(old) else path

            best_k = state_dict.get("best_k_models", {})
            state_dict = {**state_dict, "dirpath": new}
            state_dict["best_k_models"] = {here(path): score for path, score in best_k.items()}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state_dict.get(key):
                    state_dict[key] = here(state_dict[key])
        super().load_state_dict(state_dict)


class LastCheckpoint(Checkpoint):
    """``checkpoints/last.ckpt``: the latest training state, for ``--ckpt_path last``.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other
    callbacks and after the best checkpoint (``ModelCheckpoint``, listed before it): at an
    epoch's end ``best.ckpt`` is written first and ``last.ckpt`` holds its state as it is then.

    Written at the end of every training epoch (after that epoch's validation), and within an
    epoch every ``every_n_steps`` optimiser steps and/or every ``every_minutes`` minutes; a save
    due where the state does not resume exactly (half-way through accumulated batches, or on a
    batch that a validation follows, ``trainer.val_check_interval``) is made one batch later. The
    file is replaced atomically (:class:`segbench.rundir.RunCheckpointIO`), so a kill while it is
    written leaves the previous one. The ``metrics.csv`` row of the state saved is on disk before
    the checkpoint, so the resumed run continues the file without gaps or repeats.

    An interrupted fit (SIGTERM from ``kill``, ``timeout`` or a scheduler; SIGINT from Ctrl-C)
    stops at the next state that resumes exactly and saves it there: the end of the optimiser
    step under way (after its accumulated batches); when the signal comes on a batch that a
    validation follows or during a validation, the first step's end after that validation, or
    the epoch's end for the epoch's own validation (a run whose last epoch it was finishes).
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
        self._owed = False  # a save was due where the state could not be saved
        self._sigint_before: Any = None
        #: The optimiser step of the last save (``None``: none in this process).
        self.saved_step: int | None = None

    def _save(self, trainer: L.Trainer, *, epoch_end: bool = False) -> None:
        self._write_ahead(trainer, epoch_end=epoch_end)
        trainer.save_checkpoint(self.path, weights_only=self.save_weights_only)
        self._last_save = time.monotonic()
        self.saved_step = trainer.global_step
        self._owed = False

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
        step = trainer.global_step  # the same over accumulated batches: saved once
        due = n is not None and n > 0 and step % n == 0 and step != self.saved_step
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
        # Not saved: half-way through accumulated batches, the epoch's last batch (followed by
        # validation and the end-of-epoch save), and a batch that a validation follows
        # (trainer.val_check_interval): a resume from it skips that validation, as done.
        can_save = not (
            batch_idx + 1 >= trainer.num_training_batches
            or trainer.fit_loop._should_accumulate()
            or self._validates_next(trainer)
        )
        if self._stop_asked(trainer):
            if can_save:
                self._save(trainer)
            # Stop after this batch where it was saved; else hold the stop until it can be.
            self._pending = not can_save
            self._set_stop(trainer, can_save)
        elif self._due(trainer) or self._owed:
            # A save due where the state cannot be saved is made at the next batch that can.
            self._owed = not can_save
            if can_save:
                self._save(trainer)

    @staticmethod
    def _validates_next(trainer: L.Trainer) -> bool:
        """Whether Lightning validates right after this batch (its own decision, asked of it)."""
        loop = trainer.fit_loop
        return (
            trainer.enable_validation
            and loop._data_fetcher is not None
            and loop.epoch_loop._should_check_val_fx(loop._data_fetcher)
        )

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
