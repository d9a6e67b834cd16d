"""The ``segbench`` command: Lightning's ``fit``, ``validate``, ``test`` and ``predict``
(:mod:`segbench.cli.lightning`) and the commands of :data:`segbench.cli.commands.COMMANDS`.

``segbench fit --config experiments/quickstart.yaml [--model.net.init_args.variant=16s ...]``

A user error (a bad value, file or checkpoint, a full disk) ends the command with one paragraph
naming what to fix and exit code 1; ``SEGBENCH_DEBUG=1`` shows its traceback
(:mod:`segbench.errors`). Config errors are jsonargparse's (exit code 2), with the file and line
of a misspelt key.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any
from unittest import mock

from segbench import errors
from segbench.cli.commands import COMMANDS
from segbench.cli.lightning import SegbenchCLI
from segbench.config import check_yaml_files

__all__ = ["COMMANDS", "configure_logging", "main"]

log = logging.getLogger("segbench")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _LightningTidy(logging.Filter):
    """Tidies Lightning's messages: drops its "💡 Tip:" lines (install litlogger, litmodels)
    printed at every fit, and the zeros of its model summary's FLOPs column and "Total Flops"
    line, which it counts only for a module with an ``example_input_array`` (segbench sets none:
    that would run a forward, and a compile, at every fit start; ``segbench summary`` counts
    them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip:"):
            return False
        lines = message.split("\n")
        if any(line.split() == ["0", "Total", "Flops"] for line in lines):
            record.msg, record.args = "\n".join(_without_flops(lines)), None
        return True


def _without_flops(lines: list[str]) -> list[str]:
    """The model summary's lines without its "0 Total Flops" line and its FLOPs column (the
    table's last, its columns aligned: each row is cut where the header's last column starts)."""
    lines = [line for line in lines if line.split() != ["0", "Total", "Flops"]]
    header = next((line for line in lines if line.rstrip().endswith(" | FLOPs")), None)
    if header is None:
        return lines
    cut = header.rindex(" | FLOPs")
    width = len(header[:cut].rstrip())
    return [
        "-" * width
        if line and set(line) == {"-"}
        else line[:cut].rstrip()
        if " | " in line
        else line
        for line in lines
    ]


#: The loggers Lightning's rank-zero messages and its model summary go through.
LIGHTNING_MESSAGES = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.callbacks.model_summary",
)


def configure_logging() -> None:
    """segbench's own messages: plain lines on stderr, at INFO; Lightning's tidied (see
    :class:`_LightningTidy`)."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        for name in LIGHTNING_MESSAGES:
            logging.getLogger(name).addFilter(_LightningTidy())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``segbench`` console script.

    A user error ends it with one paragraph on stderr and exit code 1 (see
    :mod:`segbench.errors`); ``SEGBENCH_DEBUG=1`` raises it with its traceback instead.
    """
    configure_logging()
    from_python = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(list(argv[1:]))
            return
        check_yaml_files(argv)
        if from_python:
            # LightningCLI reads (and DDP re-launches) sys.argv, so make it say what was asked.
            with mock.patch.object(sys, "argv", [sys.argv[0], *argv]):
                SegbenchCLI()
        else:
            SegbenchCLI()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as err:
        known = errors.user_error(err)
        if known is None or errors.debug():
            raise
        log.error("segbench: error: %s", errors.user_message(known))
        sys.exit(1)
