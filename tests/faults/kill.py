"""Callbacks that SIGKILL their own training process, or hold it, at a given optimiser step."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """``kill -9`` this process right after optimiser step ``step`` (no cleanup, no flush).

    Args:
        step: the global step after which to die.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitAtStep(Callback):
    """Block after optimiser step ``step`` until the file ``release`` exists (a fit that is
    surely mid-training while a test starts another process beside it).

    Args:
        step: the global step after which to wait.
        release: the file whose appearance lets training go on.
    """

    def __init__(self, step: int, release: str) -> None:
        self.step, self.release = step, release

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            with open(self.release + ".waiting", "w") as f:
                f.write(str(os.getpid()))
            while not os.path.exists(self.release):
                time.sleep(0.05)


class WaitAtEvaluation(Callback):
    """Block after the first test or prediction batch until the file ``release`` exists (a
    ``segbench test`` or ``predict`` that is surely reading its run while a test starts another
    process beside it); ``release.waiting`` holds the pid once it waits.

    Args:
        release: the file whose appearance lets the command go on.
    """

    def __init__(self, release: str) -> None:
        self.release = release

    def _wait(self) -> None:
        if not os.path.exists(self.release + ".waiting"):
            with open(self.release + ".waiting", "w") as f:
                f.write(str(os.getpid()))
            while not os.path.exists(self.release):
                time.sleep(0.05)

    def on_test_batch_end(self, *args: Any) -> None:
        self._wait()

    def on_predict_batch_end(self, *args: Any) -> None:
        self._wait()


class KillDuringStep(Callback):
    """``kill -9`` this process ``delay`` seconds after optimiser step ``step`` began: in the
    middle of the forward or backward pass, the checkpoint's write, validation, or the loader,
    wherever that moment falls.

    Args:
        step: the global step (optimiser steps done) at whose batch the clock starts.
        delay: seconds from that batch's start to the kill.
    """

    def __init__(self, step: int, delay: float) -> None:
        self.step, self.delay = step, delay
        self._armed = False

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step and not self._armed:
            self._armed = True
            timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()


class SignalAt(Callback):
    """Send this process ``signum`` at the end of training batch ``batch`` (its index in epoch
    0), of validation batch ``val_batch`` of epoch 0's validation, or of test batch
    ``test_batch``, once.

    Args:
        signum: the signal (``signal.SIGTERM``, ``signal.SIGINT``).
        batch: the training batch after which to send it.
        val_batch: the validation batch after which to send it.
        test_batch: the test batch after which to send it.
    """

    def __init__(
        self,
        signum: int,
        batch: int | None = None,
        val_batch: int | None = None,
        test_batch: int | None = None,
    ):
        self.signum, self.batch, self.val_batch = signum, batch, val_batch
        self.test_batch = test_batch
        self._sent = False

    def _send(self) -> None:
        if not self._sent:
            self._sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            self._send()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if (
            trainer.current_epoch == 0
            and not trainer.sanity_checking
            and batch_idx == self.val_batch
        ):
            self._send()

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if batch_idx == self.test_batch:
            self._send()
