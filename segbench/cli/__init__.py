"""The ``segbench`` command: Lightning's ``fit``, ``validate``, ``test`` and ``predict``
(:mod:`segbench.cli.lightning`) and the commands of :data:`segbench.cli.commands.COMMANDS`.

``segbench fit --config experiments/quickstart.yaml [--model.net.init_args.variant=16s ...]``

A user error (a bad value, file or checkpoint, a full disk) ends the command with one paragraph
naming what to fix and exit code 1; ``SEGBENCH_DEBUG=1`` shows its traceback
(:mod:`segbench.errors`). Config errors are jsonargparse's (exit code 2), with the file and line
of a misspelt key.

A command stopped by SIGTERM (``kill``, ``timeout``, a scheduler) or SIGINT (Ctrl-C) exits
128 + the signal's number (143, 130) with one line saying so, after its cleanup ran (no
temporary file is left) and without recording anything it had not finished (:func:`stoppable`).
``fit``, ``sweep`` and ``tune`` stop in their own way (:data:`OWN_STOP`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn
from unittest import mock

from lightning.pytorch.utilities.exceptions import SIGTERMException

from segbench import errors
from segbench.cli.commands import COMMANDS
from segbench.cli.lightning import SegbenchCLI
from segbench.config import check_yaml_files

__all__ = ["COMMANDS", "OWN_STOP", "Stopped", "configure_logging", "main", "stoppable"]

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


#: The commands that handle SIGTERM and SIGINT themselves: ``fit`` stops at a step it saves and
#: marks the run interrupted (:meth:`SegbenchCLI._exit_if_terminated`); ``sweep`` and ``tune``
#: stop the fits they started (:mod:`segbench.study.launchers.local`).
OWN_STOP = frozenset({"fit", "sweep", "tune"})

#: The signals :func:`stoppable` turns into :class:`Stopped`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A command was stopped by a signal. Raised where the command is, so that every ``finally``
    and ``except BaseException`` on the way out runs (temporary files removed, locks released)
    and the result it was working on is never recorded; a ``BaseException``, so that no
    ``except Exception`` takes it for an error to report or recover from, and not a
    ``KeyboardInterrupt``, which Lightning turns into exit code 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _default(signum: int) -> None:
    """What the signal does without segbench's handler: SIGINT raises ``KeyboardInterrupt``,
    SIGTERM ends the process at once."""
    signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stoppable(command: str) -> Iterator[None]:
    """Run ``command`` so that SIGTERM and SIGINT stop it cleanly: :class:`Stopped` is raised
    where it is, and it exits 128 + the signal's number (143, 130) with one line saying what was
    stopped. A second signal, while the first one's cleanup runs, acts at once (as without
    segbench); so does one in a process forked from this one (a data loader's worker). Lightning
    calls this handler too (after noting the SIGTERM for its own loops), and puts it back when
    its trainer is done. Off the main thread, where no handler can be set, signals act as
    without segbench."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, stopping = os.getpid(), list[int]()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner or stopping:
            _default(signum)
            return
        stopping.append(signum)
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    except Stopped as stopped:
        _exit_stopped(command, stopped.signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_stopped(command: str, signum: int) -> NoReturn:
    log.error(
        "%s: stopped by %s before it finished; nothing partial was recorded",
        f"segbench {command}".strip(),
        signal.Signals(signum).name,
    )
    raise SystemExit(128 + signum)


def _command(argv: list[str]) -> str:
    """The command ``argv`` runs: its first word that names one (``""``: none, e.g. ``--help``)."""
    commands = {*COMMANDS, "fit", "validate", "test", "predict"}
    return next((a for a in argv if a in commands), "")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``segbench`` console script.

    A user error ends it with one paragraph on stderr and exit code 1 (see
    :mod:`segbench.errors`); ``SEGBENCH_DEBUG=1`` raises it with its traceback instead. Run as
    the console script, a command other than :data:`OWN_STOP`'s stopped by SIGTERM or SIGINT
    exits 143 or 130 (:func:`stoppable`); called from Python (a notebook, a test), Ctrl-C stays
    a ``KeyboardInterrupt``.
    """
    configure_logging()
    from_python = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    with contextlib.ExitStack() as stack:
        if not from_python and command not in OWN_STOP:
            stack.enter_context(stoppable(command))
        _run(argv, command, from_python)


def _run(argv: list[str], command: str, from_python: bool) -> None:
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
    except SIGTERMException:  # Lightning's stop of validate or test: a SystemExit with code 0
        if command in OWN_STOP:
            raise
        _exit_stopped(command, signal.SIGTERM)
    except (SystemExit, KeyboardInterrupt, Stopped):
        raise
    except BaseException as err:
        known = errors.user_error(err)
        if known is None or errors.debug():
            raise
        log.error("segbench: error: %s", errors.user_message(known))
        sys.exit(1)
