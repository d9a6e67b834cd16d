"""Errors a user can act on, and how the ``segbench`` command shows them.

A *user error* is a bad input: a config value, a data file, a checkpoint, a full disk. The command
prints it as one short paragraph that names the file, key or value and what to do, without a
traceback (``SEGBENCH_DEBUG=1`` shows it); anything else is a bug and keeps its traceback.

What counts as a user error:

* a :class:`SegbenchError`, raised by segbench where it detects the bad input. Each subclass also
  derives from the built-in type a caller would catch (:class:`ConfigError` is a ``ValueError``,
  :class:`MissingFileError` a ``FileNotFoundError``, ...);
* Lightning's ``MisconfigurationException`` (e.g. ``trainer.devices`` beyond the machine's);
* a full disk (``ENOSPC``), wherever it happens;
* a file or folder this user may not write or read (``EACCES``, ``EPERM``, ``EROFS``), named.

Everything else is a bug, whatever its type and wherever it was raised: a ``ValueError`` from
segbench's own code keeps its traceback. Errors raised in a data loader worker reach the main
process re-raised by torch as the same type, with the worker's traceback in the message; the
message shown is read from that text.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any


class SegbenchError(Exception):
    """A bad input, reported without a traceback."""


class ConfigError(SegbenchError, ValueError):
    """A config value that cannot work (the message names the key)."""


class CheckpointError(SegbenchError, ValueError):
    """A checkpoint, state dict or cache that cannot be loaded (the message names the file)."""


class DataError(SegbenchError, ValueError):
    """A data file or split whose content cannot work: a mask value outside the classes, an
    image and mask of different sizes, an empty split list (the message names the file)."""


class MissingFileError(SegbenchError, FileNotFoundError):
    """A file or folder that the config, a split list or an option names and that is not there."""


class UnreadableFileError(SegbenchError, OSError):
    """A file that is there but cannot be decoded (not an image, truncated, too large)."""


class UnavailableError(SegbenchError, RuntimeError):
    """Something this machine does not have: an optional package, or a download when offline
    (the message says how to provide it)."""


class DivergenceError(SegbenchError, FloatingPointError):
    """Training produced a non-finite loss or non-finite weights."""


class DiskFullError(SegbenchError, OSError):
    """No space left while writing a run file (the previous version of the file is intact)."""


class BusyError(SegbenchError):
    """A run directory or sweep group that another live process is writing (the message names
    it and that process)."""


def listed(items: Any, limit: int) -> str:
    """``a, b, c, ...``: the first ``limit`` of ``items`` for a message."""
    names = [str(i) for i in items]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def disk_full_message(path: str | Path, what: str = "writing") -> str:
    """``"<path>: disk full while writing (12.3 MB free on /runs)"``."""
    path = Path(path)
    probe = path.parent if path.parent.exists() else Path.cwd()
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MB free in {probe}"
    except OSError:
        free = "free space unknown"
    return f"{path}: disk full while {what} ({free})"


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


_WORKER = re.compile(r"Original Traceback \(most recent call last\):\n(.*)", re.S)


def _is_misconfiguration(err: BaseException) -> bool:
    return type(err).__name__ == "MisconfigurationException"


def user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err`` (itself or one in its chain), or ``None`` for a bug."""
    for e in _chain(err):
        if isinstance(e, SegbenchError) or _is_misconfiguration(e):
            return e
    for e in _chain(err):
        if isinstance(e, OSError) and (
            e.errno == errno.ENOSPC or (e.errno in _DENIED and e.filename is not None)
        ):
            return e
    return None


#: A place the user cannot write (or read): permissions, or a read-only file system.
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def user_message(err: BaseException) -> str:
    """The one paragraph shown for a user error."""
    if (
        isinstance(err, OSError)
        and err.errno == errno.ENOSPC
        and not isinstance(err, DiskFullError)
    ):
        return disk_full_message(err.filename or Path.cwd()) + (
            ". Free some space (or point run.root elsewhere) and resume with --ckpt_path last."
        )
    if isinstance(err, OSError) and err.errno in _DENIED and not isinstance(err, SegbenchError):
        return (
            f"{err.filename}: {err.strerror.lower() if err.strerror else 'not allowed'}: "
            "give this user access to it, or choose another place (run.root, --root, --out)"
        )
    text = str(err)
    match = _WORKER.search(text)
    if match:  # the worker's last line: "module.Type: message"
        last = match.group(1).strip().splitlines()[-1]
        text = last.split(": ", 1)[-1]
    if isinstance(err, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return text


def debug() -> bool:
    """``SEGBENCH_DEBUG=1``: show the traceback of user errors too."""
    return os.environ.get("SEGBENCH_DEBUG", "") not in ("", "0")
