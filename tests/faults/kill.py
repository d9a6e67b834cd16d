"""A callback that SIGKILLs its own training process at a given optimiser step."""

from __future__ import annotations

import os
import signal
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
