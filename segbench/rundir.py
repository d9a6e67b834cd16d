"""The run directory: one class owns its layout and its files.

Everything a run writes goes to ``<run.root>/<run.group>/<run.name>/``::

    config.yaml          the full resolved config (``segbench fit --config`` it to re-run)
    checkpoints/         best.ckpt (by val/mIoU); last.ckpt (the latest training state)
    metrics.json         one section per stage, the provenance and the flat config (below)
    metrics.csv          every logged value, one row per step (Lightning's CSVLogger)
    val_examples.png     image | ground truth | prediction | errors, fixed val images, a legend
    predictions/         ``segbench predict``'s label maps (palette PNGs)
    wandb/, wandb_id     the W&B run and its id (a resumed run continues it)
    tensorboard/         TensorBoard's event files (``run.loggers``)
    mlflow_run_id        the MLflow run's id (a resumed run continues it)

``metrics.json`` has one section per writer, and no writer replaces another's:

* ``fit``: the last and best validation (``val``, ``best_val``), the test after fit (``test``,
  ``test_checkpoint``), parameters, throughput, progress and whether training ``finished``;
* ``validate`` / ``test``: the metrics of the latest ``segbench validate`` / ``test`` command,
  with the checkpoint and the evaluation protocol used;
* ``records``: one entry per analysis tool's ``--record``, with the checkpoint it measured;
* ``config`` (flat, one key per switch) and ``provenance`` (how the run was made).

Every file is written atomically (a temporary file in the same folder, fsync, rename): a kill or a
full disk never leaves a truncated file under a real name, and the previous version survives.
``metrics.json`` is read-modify-written under a lock, so tools recording into one run at once do
not lose each other's sections. Checkpoints, state dicts and caches are loaded with
``torch.load(weights_only=True)`` only (:func:`safe_load`): loading never runs foreign code.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import glob
import io
import json
import logging
import math
import os
import pickle
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from segbench.errors import (
    BusyError,
    CheckpointError,
    ConfigError,
    DiskFullError,
    DivergenceError,
    MissingFileError,
    SegbenchError,
    disk_full_message,
)

log = logging.getLogger("segbench")


# -- atomic files ------------------------------------------------------------------------------
#: The lock files this thread holds (:func:`file_lock`), so that it can take one again inside.
_held = threading.local()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), held for the block: one process at a time
    (an advisory ``flock``, which the kernel drops when the holder dies), and one thread of it.
    A thread that holds it takes it again at once (a block that writes several files under the
    run's record lock, each write taking it too)."""
    key = os.path.abspath(path)
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_path(path: str | Path) -> Path:
    """Where a new version of ``path`` is written before it is renamed into place: beside it,
    hidden, named after it and the writing process (``.NAME.tmp-HOST-PID-RANDOM``)."""
    path = Path(path)
    host = socket.gethostname().replace("/", "_")
    return path.with_name(f".{path.name}.tmp-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


#: Per folder this process has written into: the name of each file -> the temporary files of it
#: that dead processes of this host had left when the folder was first listed.
_STALE_TEMPS: dict[Path, dict[str, list[Path]]] = {}


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return False


#: A temporary file named without its host (``.NAME.tmp-PID-RANDOM``, segbench before
#: 2026-12-07) cannot be told to be of a dead process: it is taken as left behind once it has
#: not been written to for this many seconds (a write in progress touches it all the time).
LEGACY_TEMP_AGE_S = 3600.0


def _stale_temps(folder: Path) -> dict[str, list[Path]]:
    """The temporary files in ``folder`` (:func:`temp_path`) of processes of this host that no
    longer run, and those of the older host-less name untouched for an hour, by the name of the
    file each was to become."""
    prefix = f".tmp-{socket.gethostname().replace('/', '_')}-"
    found: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if (ours := _temp_of(entry.name, prefix)) is not None:
                stale, target = _dead(ours[1]), ours[0]
            elif (legacy := _temp_of(entry.name, ".tmp-", hex_tag=True)) is not None:
                stale, target = _untouched(entry, LEGACY_TEMP_AGE_S), legacy[0]
            else:
                continue
            if stale:
                found.setdefault(target, []).append(Path(entry.path))
    return found


def _temp_of(name: str, marker: str, *, hex_tag: bool = False) -> tuple[str, int] | None:
    """``(the file it was to become, its writer's pid)`` of a temporary file named
    ``.NAME<marker>PID-RANDOM`` (six characters; hexadecimal in the older name), else ``None``."""
    target, sep, rest = name.rpartition(marker)
    pid, _, tag = rest.partition("-")
    if not (sep and target.startswith(".") and len(target) > 1 and pid.isdigit() and len(tag) == 6):
        return None
    if hex_tag and any(c not in "0123456789abcdef" for c in tag):
        return None
    return target[1:], int(pid)


def _untouched(entry: os.DirEntry[str], seconds: float) -> bool:
    """``entry`` was not written to for ``seconds`` (a write in progress touches it all the
    time)."""
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > seconds
    except OSError:
        return False


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of ``path`` (:func:`temp_path`) that processes of this host
    which no longer run left behind: a ``kill -9`` mid-write leaves its temporary file, which
    would otherwise stay (a checkpoint's size each time). Another host's, or a running
    process's, are left alone. A folder is listed once per process, at its first write: listing
    it at every write made writing N new files into it (a predictions folder) cost N^2."""
    folder = path.parent
    if folder not in _STALE_TEMPS:
        _STALE_TEMPS[folder] = _stale_temps(folder)
    for tmp in _STALE_TEMPS[folder].pop(path.name, []):
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_paths(*paths: str | Path, remove: Sequence[Path] = ()) -> Iterator[list[Path]]:
    """Temporary paths for ``paths`` (:func:`temp_path`), one each, for the block to write; when
    it ends without an error each is fsynced and renamed to its path, else all are removed and
    every ``path`` is left as it was.

    Files written together (a model and the side-car that describes it, a report's table and
    its figure) are one version: before the first rename, the earlier versions of all of them
    are removed, so a kill between two renames leaves some of the new files and none of the
    old, never an old file beside a new one it does not describe. The slow part, writing the
    temporary files, leaves the whole earlier set in place. ``remove``: files of the set that the
    new version does not have (a figure with nothing to draw this time), removed with the rest.
    """
    finals = [Path(p) for p in paths]
    temps = [temp_path(p) for p in finals]
    for path in finals:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for tmp in temps:
            _fsync(tmp)
        if len(finals) + len(remove) > 1:
            for path in [*finals, *remove]:
                path.unlink(missing_ok=True)
        for tmp, path in zip(temps, finals, strict=True):
            os.replace(tmp, path)
    except BaseException as err:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            path = finals[0]
            kept = (
                f"; the previous {' and '.join(p.name for p in finals)} "
                f"{'is' if len(finals) == 1 else 'are'} intact"
                if all(p.exists() for p in finals)
                else ""
            )
            raise DiskFullError(
                f"{disk_full_message(path)}{kept}. Free some space (or point run.root "
                "elsewhere) and resume with --ckpt_path last."
            ) from err
        raise
    for folder in {p.parent for p in finals}:  # make the renames themselves durable
        _fsync(folder)
    for path in finals:
        remove_stale_temps(path)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_files(writes: Mapping[Path, Callable[[BinaryIO], object] | None]) -> None:
    """Write each ``path`` through its ``write(file)``, all as one version (:func:`atomic_paths`):
    every file is written before any is renamed into place. A path whose write is ``None`` is
    not in this version: an earlier one is removed."""
    written = {Path(p): w for p, w in writes.items() if w is not None}
    gone = [Path(p) for p, w in writes.items() if w is None]
    with atomic_paths(*written, remove=gone) as temps:
        for tmp, write in zip(temps, written.values(), strict=True):
            with open(tmp, "wb") as f:
                write(f)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, rename.

    On a full disk the temporary file is removed, the previous ``path`` is left as it was, and
    :class:`DiskFullError` names the file and the free space.
    """
    atomic_write_files({Path(path): write})


def text_writer(text: str) -> Callable[[BinaryIO], object]:
    """A ``write(file)`` for :func:`atomic_write` / :func:`atomic_write_files`: ``text``."""
    data = text.encode()
    return lambda f: f.write(data)


def json_writer(data: Any) -> Callable[[BinaryIO], object]:
    """A ``write(file)`` of ``data`` as segbench writes JSON (indented, keys sorted)."""
    return text_writer(json.dumps(data, indent=2, sort_keys=True, default=str))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text_writer(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, json_writer(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (serialised in memory first: one write, no partial file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


# -- safe loading ------------------------------------------------------------------------------
def safe_load(path: str | Path, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file.

    A file that needs pickled Python objects (anything but tensors and plain containers) is
    refused before any of its code can run. ``mmap``: tensors are mapped, not read (to look at a
    checkpoint's plain values, such as its step, in milliseconds).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a {what} file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            reason = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), "")
            raise CheckpointError(
                f"{path}: refused: this {what} contains pickled Python objects ({reason[:160]}), "
                "and loading those could run code. segbench loads only tensors and plain values "
                "(torch.load weights_only=True). If you trust the file, load it yourself and "
                "save its state dict: torch.save(obj['state_dict'], 'clean.ckpt')."
            ) from None
        raise CheckpointError(f"{path}: not a torch {what} ({_first_line(text)})") from None
    except Exception as err:  # the unpickler and the zip reader fail in many ways
        raise CheckpointError(
            f"{path}: not a readable {what}: truncated, corrupt or not a torch file "
            f"({type(err).__name__}: {_first_line(str(err))})"
        ) from None


def checkpoint_step(path: str | Path) -> int | None:
    """The training step a checkpoint file was saved at (its ``global_step``), read without
    loading its tensors; ``None`` if there is no such file or it cannot be read. A file read
    before, unchanged since (same inode, size and mtime), is not read again: a report asks of
    each run's checkpoints once per test section and tool record, for its table and its notes."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _step_of(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _step_of(path: str, inode: int, size: int, mtime_ns: int) -> int | None:
    try:
        step = safe_load(path, mmap=True).get("global_step")
    except (CheckpointError, AttributeError):
        return None
    return int(step) if isinstance(step, int) else None


def _first_line(text: str) -> str:
    """The first sentence of an error's text (torch's run on for lines), at most 200 chars."""
    line = (text.strip().splitlines() or [""])[0]
    sentence = line.split(". ", 1)[0].rstrip(".")
    return sentence if len(sentence) <= 200 else sentence[:199] + "…"


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


# -- one writer -----------------------------------------------------------------------------------
class WriterLock:
    """An exclusive claim on a run directory or a sweep group, held until :meth:`release` or the
    process's end: an advisory ``flock`` on a lock file, which the kernel drops when the holder
    dies however it dies (``kill -9`` included), so a dead holder's claim is taken over. The file
    names the holder (pid, host, command, since) for the refusal message.

    A forked child (a loader worker, a rendering process) closes its copy of the descriptor at
    once: an ``flock`` is shared by every copy, so a worker outliving a killed fit by a few seconds
    would otherwise keep the run locked against its resume."""

    def __init__(self, path: Path, what: str, *, doing: str = "written") -> None:
        self.path, self.what, self.doing = path, what, doing
        self._file: Any = None

    def acquire(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            # Twice more, 50 ms apart: a look at the claim (RunDir.training_by, a check for
            # readers) holds it for microseconds, and a claim taken then is not the holder's.
            for attempt in range(3):
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 2:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise BusyError(
                f"{self.what} is being {self.doing} by {holder}. One process at a time: wait for "
                f"it to end (or stop it), or choose another name. (Lock file: {self.path})"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} "
            f"({' '.join(sys.argv)[:300]})\n"
        )
        file.flush()
        self._file = file
        _HELD.add(self)
        return self

    def release(self, *, remove: bool = False) -> None:
        """Let go of the claim; ``remove``: its file too, if this process held it (a reader's
        claim, :meth:`RunDir.reader`, whose file is its own)."""
        if remove and self._file is not None:
            self.path.unlink(missing_ok=True)
        if self._file is not None:
            self._file.close()  # closing the (last) descriptor drops the flock
            self._file = None
        _HELD.discard(self)


#: The claims this process holds, closed (not unlocked: the parent keeps them) in forked children.
_HELD: set[WriterLock] = set()


def _close_claims_in_child() -> None:
    for claim in _HELD:
        if claim._file is not None:
            claim._file.close()  # this copy of the descriptor only: the parent's keeps the lock
            claim._file = None
    _HELD.clear()


os.register_at_fork(after_in_child=_close_claims_in_child)


def check_run_name(key: str, value: str) -> None:
    """``run.group`` and ``run.name`` are one directory name each, so that a run stays inside
    ``run.root``."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ConfigError(
            f"{key} {value!r}: must be one directory name (not empty, '.' or '..', no '/' or "
            "'\\'): the run's files go to run.root/run.group/run.name"
        )


# -- the run directory -------------------------------------------------------------------------
class _NamesRun(Protocol):
    root: str
    group: str
    name: str


RunState = Literal["done", "partial", "new"]


class RunDir:
    """The layout and the files of one run directory."""

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    CSV = "metrics.csv"
    CHECKPOINTS = "checkpoints"
    WANDB_ID = "wandb_id"
    MLFLOW_ID = "mlflow_run_id"
    TENSORBOARD = "tensorboard"
    VAL_EXAMPLES = "val_examples.png"
    PREDICTIONS = "predictions"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, run: _NamesRun) -> RunDir:
        """The directory a config's ``run`` section names: ``root/group/name``."""
        check_run_name("run.group", run.group)
        check_run_name("run.name", run.name)
        for path, key in ((Path(run.root), "run.root"), (Path(run.root) / run.group, "run.group")):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{key}: {path} is a file, not a folder; choose another {key}")
        return cls(Path(run.root) / run.group / run.name)

    def writer(self) -> WriterLock:
        """This run's one-writer claim (:class:`WriterLock`), acquired: ``segbench fit`` holds it
        from before it touches the directory until it ends. The lock file sits beside the
        directory (``.<name>.writer``), so ``--run.overwrite`` moving the directory aside does not
        move the claim with it."""
        return WriterLock(self._writer_file(), f"run {self.path}").acquire()

    def _writer_file(self) -> Path:
        return self.path.with_name(f".{self.path.name}.writer")

    def training_by(self) -> str | None:
        """The process that holds this run's :meth:`writer` claim now, a ``fit`` training it
        (``pid N on HOST since HH:MM:SS``), or ``None``: nothing of the claim is changed."""
        try:
            with open(self._writer_file()) as file:
                try:
                    fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return file.read().split(" (", 1)[0].strip() or "another process"
                fcntl.flock(file, fcntl.LOCK_UN)
        except FileNotFoundError:
            pass
        return None

    def reader(self) -> WriterLock | None:
        """This run's claim by a command that reads it and records or writes into it (``segbench
        test``/``validate``/``predict``, an analysis tool, ``export``), acquired and held to the
        process's end: a ``fit --run.overwrite`` of the run is refused meanwhile
        (:meth:`refuse_readers`). Without it the overwrite moved the run aside under the reader,
        which then recorded the old model's numbers in the new run's ``metrics.json`` and
        ``metrics.csv``, with the step of the new run's checkpoint: they read as the new model's.
        A file of its own per reader (``.<name>.reader-<pid>``), so that readers do not exclude
        each other and the refusal names them. ``None`` where this user cannot write beside the
        run (someone else's runs, a read-only copy): it is read without a claim, as tools that
        only read (``segbench erf RUN`` without ``--record``) always could."""
        path = self._reader_file(os.getpid())
        held = next((c for c in _HELD if c.path == path), None)
        if held is not None:  # this process read the run before (commands run in one process)
            return held
        lock = WriterLock(path, f"run {self.path}", doing="read")
        try:
            with self._readers_gate():
                lock.acquire()
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            log.debug("%s: read without a reader's claim (%s)", self.path, err)
            return None
        # At the process's end its file goes (a killed reader's: at the next refuse_readers).
        atexit.register(lock.release, remove=True)
        return lock

    def _reader_file(self, pid: int) -> Path:
        return self.path.with_name(f".{self.path.name}.reader-{pid}")

    def _readers_gate(self) -> contextlib.AbstractContextManager[None]:
        """Held while a reader claims the run and while a fit checks for readers and moves the
        run aside: a reader either is seen, or comes after the move and reads the new run."""
        return file_lock(self.path.with_name(f".{self.path.name}.readers"))

    @contextlib.contextmanager
    def refuse_readers(self) -> Iterator[None]:
        """Held around ``--run.overwrite``'s :meth:`set_aside`: :class:`~segbench.errors.BusyError`
        (naming the run and the process) if a command reads the run (:meth:`reader`); the claim
        files of readers that have ended are removed."""
        with self._readers_gate():
            for path in sorted(self.path.parent.glob(f".{glob.escape(self.path.name)}.reader-*")):
                if path == self._reader_file(os.getpid()):
                    continue  # this process's: an earlier command of it, which has ended
                WriterLock(path, f"run {self.path}", doing="read").acquire().release()
                path.unlink(missing_ok=True)
            yield

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- paths -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def csv(self) -> Path:
        return self.path / self.CSV

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def wandb_id_file(self) -> Path:
        return self.path / self.WANDB_ID

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    def file(self, name: str) -> Path:
        """A figure or other file of the run, by name (``val_examples.png``)."""
        return self.path / name

    def checkpoint(self, name: str) -> Path:
        """``best``/``last`` (or another name) -> ``checkpoints/<name>.ckpt``."""
        return self.checkpoints / f"{name}.ckpt"

    def require_checkpoint(self, name: str) -> Path:
        """The checkpoint ``name`` (``best``, ``last``) of this run; a clear error if absent."""
        path = self.checkpoint(name)
        if not path.is_file():
            have = sorted(p.stem for p in self.checkpoints.glob("*.ckpt"))
            raise CheckpointError(
                f"no {name} checkpoint at {path}"
                + (f" (this run has: {', '.join(have)})" if have else " (the run has none)")
            )
        return path

    def is_run(self) -> bool:
        return self.config.is_file()

    @classmethod
    def given(cls, path: str | Path) -> RunDir:
        """The run directory ``path`` given on a command line; a clear error if it is not one,
        naming the run when ``path`` is one of its files (its ``config.yaml``, a checkpoint)."""
        path = Path(path)
        if cls(path).is_run():
            return cls(path)
        for run in (path.parent, path.parent.parent) if path.is_file() else ():
            if cls(run).is_run():
                what = "config" if path.name == cls.CONFIG else "file"
                raise MissingFileError(
                    f"{path}: a run's {what}, not a run directory; give the run directory: {run}"
                    + (f" --ckpt {path}" if path.suffix == ".ckpt" else "")
                )
        raise MissingFileError(f"{path}: not a run directory (no config.yaml in it)")

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.ckpt"))

    # -- metrics.json ------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The whole ``metrics.json`` (``{}`` if there is none yet)."""
        if not self.metrics_file.is_file():
            return {}
        try:
            data = json.loads(self.metrics_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SegbenchError(
                f"{self.metrics_file}: not valid JSON ({err}); the file is corrupt. Re-create it "
                "with `segbench test --config <run>/config.yaml --ckpt_path best`, or remove the "
                "run from the command."
            ) from None
        if not isinstance(data, dict):
            raise SegbenchError(f"{self.metrics_file}: expected a JSON object")
        return _upgrade(data)

    def record_lock(self) -> contextlib.AbstractContextManager[None]:
        """The run's record held by this process for a block: every change to ``metrics.json``
        and every write of ``metrics.csv`` is made under it, so commands recording on one run
        at once (a fit and a ``segbench test`` of its best checkpoint, six analysis tools)
        each see the others' writes and lose none."""
        return file_lock(self.path / ".metrics.lock")

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read ``metrics.json``, apply ``change`` to it, write it back: locked and atomic."""
        with self.record_lock():
            data = self.read()
            change(data)
            atomic_write_json(self.metrics_file, _clean(data))
        return data

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.read().get(name) or {})

    def write_section(self, name: str, value: dict[str, Any]) -> None:
        """Replace one section (``fit``, ``validate``, ``test``, ``config``, ``provenance``)."""
        self.update(lambda d: d.__setitem__(name, value))

    def record(
        self,
        tool: str,
        values: dict[str, float],
        *,
        checkpoint: str | Path | None,
        step: int | None = None,
        options: list[str] | None = None,
    ) -> None:
        """An analysis tool's summary (``--record``), with the checkpoint it measured (``None``
        for a tool that reads only the run's data) and the options it measured with
        (:func:`segbench.options.record_options`). ``segbench report --metrics NAME`` shows them
        as columns; a tool's earlier record is replaced, other tools' kept. ``step`` is the
        checkpoint's training step as the tool loaded it; without it the file is read now, which
        a run still training may have replaced since: its later step would make the earlier
        model's numbers read as current."""
        if not self.metrics_file.is_file():
            raise MissingFileError(f"no {self.METRICS} in {self.path}")

        ckpt = Path(checkpoint) if checkpoint is not None else None
        if step is None and ckpt is not None:
            step = checkpoint_step(ckpt)

        def change(d: dict[str, Any]) -> None:
            d.setdefault("records", {})[tool] = {
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "checkpoint_mtime": ckpt.stat().st_mtime if ckpt and ckpt.is_file() else None,
                "checkpoint_step": step,
                "values": {k: float(v) for k, v in values.items()},
                "options": options,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }

        self.update(change)

    def results(self) -> dict[str, float | None]:
        """Flat numbers for reports: best validation, test after fit (else a ``segbench test`` of
        one of the run's checkpoints on the run's own data), size, speed, records."""
        data = self.read()
        fit = data.get("fit") or {}
        out: dict[str, float | None] = {}
        out.update(
            {k: v for k, v in (fit.get("best_val") or fit.get("val") or {}).items() if "/" in k}
        )
        out.update(fit.get("test") or self._own_test(data)[0])
        if "total" in (fit.get("params") or {}):
            out["params"] = float(fit["params"]["total"])
        timing = fit.get("timing") or {}
        for k in ("train_images_per_s", "fit_seconds"):
            if k in timing:
                out[k] = float(timing[k])
        for record in (data.get("records") or {}).values():
            if self.changed_since(record):
                continue
            for k, v in (record.get("values") or {}).items():
                if isinstance(v, int | float):
                    out[k] = float(v)
        return out

    def changed_since(self, measured: dict[str, Any]) -> str | None:
        """Why the checkpoint a test section or a tool's record measured is no longer the one
        this run holds under that name (``None``: it still is, or the entry names none).

        An entry keeps the step its checkpoint was saved at; a run trained on since (resumed,
        ``--run.resume_with_changes``), or a ``segbench test`` of a run still training, has
        another file under the same name, so the entry's numbers are no longer the run's.
        Entries made before steps were kept (or of a file without one) are taken as they are."""
        if not measured.get("checkpoint") or measured.get("checkpoint_step") is None:
            return None
        name = Path(measured["checkpoint"]).name
        now = checkpoint_step(self.path / self.CHECKPOINTS / name)
        if now is None:
            return f"it measured {name}, which this run no longer holds"
        if now != measured["checkpoint_step"]:
            return (
                f"it measured {name} of step {measured['checkpoint_step']}, and {name} is now "
                f"of step {now} (trained on since)"
            )
        return None

    def _own_test(self, data: dict[str, Any]) -> tuple[dict[str, float], str | None]:
        """A ``segbench test`` of the run, for a run whose fit did not test: its metrics if it
        measured one of the run's own checkpoints on the run's own data, else ``{}``; and what
        a report should say of it (``None``: nothing)."""
        test = data.get("test") or {}
        if not test.get("metrics"):
            return {}, None
        left_out = "its test section is left out of the report: "
        checkpoint = Path(test.get("checkpoint") or "")
        if checkpoint.parent.name != self.CHECKPOINTS or checkpoint.parent.parent.name != (
            self.path.name
        ):
            return (
                {},
                f"{left_out}it measured {test.get('checkpoint')}, not a checkpoint of the run",
            )
        changes = test.get("data_changes")
        if changes is None:
            return {}, f"{left_out}it does not say which data it measured on"
        if changes:
            keys = ", ".join(sorted(changes))
            return {}, f"{left_out}it measured on other data than the run trained on ({keys})"
        changed = self.changed_since(test)
        if changed:
            return {}, f"{left_out}{changed}; run segbench test again"
        metrics = {k: v for k, v in test["metrics"].items() if k.startswith("test/")}
        if checkpoint.name != self.checkpoint("best").name:
            return (
                metrics,
                f"its test numbers are of {checkpoint.name} (segbench test), not best.ckpt",
            )
        return metrics, None

    def notes(self) -> list[str]:
        """What a report says of this run's numbers beside them: of its test numbers when they
        are not its fit's test of the best checkpoint (a ``segbench test`` of its last
        checkpoint, or one left out: of another run's checkpoint, of other data, of a checkpoint
        trained on since), and of each tool's record left out because its checkpoint changed."""
        data = self.read()
        notes = []
        if not (data.get("fit") or {}).get("test"):
            notes.append(self._own_test(data)[1])
        for tool, record in sorted((data.get("records") or {}).items()):
            changed = self.changed_since(record)
            notes.append(f"its {tool} record is left out: {changed}" if changed else None)
        return [n for n in notes if n]

    def state(self) -> RunState:
        """``done`` (trained and tested), ``partial`` (a last checkpoint to resume) or ``new``."""
        fit = self.section("fit") if self.metrics_file.is_file() else {}
        if fit.get("test"):
            return "done"
        if self.checkpoint("last").is_file():
            return "partial"
        return "new"

    # -- starting over -----------------------------------------------------------------------------
    def set_aside(self) -> Path:
        """Move this run out of the way (``--run.overwrite``); :meth:`discard` it later."""
        aside = self.path.with_name(f".{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, aside)
        return aside

    def put_back(self, aside: Path) -> None:
        """Undo :meth:`set_aside`: the new run failed before it started training."""
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(aside, self.path)

    @staticmethod
    def discard(aside: Path) -> None:
        shutil.rmtree(aside, ignore_errors=True)

    # -- W&B ---------------------------------------------------------------------------------------
    def wandb_id(self, *, resume: bool) -> str:
        """The W&B run id: the stored one when resuming, else a new one (stored)."""
        if resume and self.wandb_id_file.is_file():
            return self.wandb_id_file.read_text().strip()
        run_id = uuid.uuid4().hex[:12]
        atomic_write_text(self.wandb_id_file, run_id)
        return run_id


def _clean(tree: Any) -> Any:
    """NaN and infinities as ``null``: ``metrics.json`` stays strict JSON."""
    if isinstance(tree, dict):
        return {k: _clean(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_clean(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


_FIT_KEYS = (
    "val",
    "best_val",
    "test",
    "test_checkpoint",
    "params",
    "timing",
    "eval_timing",
    "best_checkpoint",
    "completed_epochs",
    "global_step",
)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Read a ``metrics.json`` of the layout before sections (fit's keys at the top level)."""
    if "fit" in data or not any(k in data for k in _FIT_KEYS):
        return data
    new = {k: v for k, v in data.items() if k not in (*_FIT_KEYS, "analysis")}
    new["fit"] = {k: data[k] for k in _FIT_KEYS if k in data}
    if data.get("analysis"):
        new["records"] = {"analysis": {"checkpoint": None, "values": data["analysis"]}}
    return new


class RunCheckpointIO(TorchCheckpointIO):
    """How Lightning writes and reads the run's checkpoints: atomically, finite, weights only.

    A checkpoint whose weights hold a NaN or an infinity is never written (the previous file
    stays): a diverged run cannot leave a NaN ``best.ckpt`` or ``last.ckpt``. ``loaded_step`` is
    the training step of the checkpoint it last read (what a ``segbench test`` measured).
    """

    loaded_step: int | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            raise DivergenceError(
                f"training diverged: {len(bad)} weight tensors are not finite "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at step "
                f"{checkpoint.get('global_step')}; {Path(path).name} was not written, the "
                "checkpoints on disk hold the last finite state. Lower the learning rate or "
                "clip gradients (trainer.gradient_clip_val)."
            )
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        checkpoint = safe_load(path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"{path}: not a Lightning checkpoint of a segbench run (no 'state_dict'); a plain "
                "state dict initialises a network through model.init_from instead"
            )
        step = checkpoint.get("global_step")
        self.loaded_step = step if isinstance(step, int) else None
        return checkpoint
