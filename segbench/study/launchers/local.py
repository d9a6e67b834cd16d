"""``--launcher subprocess``: the fits as child processes on this machine, ``--jobs`` at once."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from segbench.study.launchers.base import PlannedRun, describe_env

log = logging.getLogger("segbench")


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# -- child processes on this machine -----------------------------------------------------------
@dataclass
class _Running:
    run: PlannedRun
    process: subprocess.Popen[bytes]
    slot: int
    start: float
    log_path: Path | None
    log_file: IO[bytes] | None


class ProcessLauncher:
    """``--jobs`` fits at once as child processes, each in a slot of its own (see the module)."""

    def __init__(
        self,
        *,
        jobs: int,
        slots: list[dict[str, str]],
        log_dir: Path,
        fit_args: list[str] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.jobs = jobs
        self.slots = slots
        self.log_dir = log_dir
        self.fit_args = list(fit_args or [])
        self.poll_s = poll_s

    def log_path(self, run: PlannedRun) -> Path | None:
        """Where a run's output goes: the terminal for one job at a time, else a file."""
        return None if self.jobs == 1 else self.log_dir / f"{run.name}.log"

    def describe(self, runs: Sequence[PlannedRun]) -> list[str]:
        lines = []
        for i, run in enumerate(runs):
            env = describe_env(self.slots[i % len(self.slots)])
            log_path = self.log_path(run)
            where = f" > {log_path}" if log_path else ""
            lines.append(f"{run.tag}: {env + ' ' if env else ''}{shlex.join(run.cmd)}{where}")
        return lines

    def launch(self, runs: Sequence[PlannedRun]) -> list[str]:
        queue = list(runs)
        free = list(range(len(self.slots)))
        running: list[_Running] = []
        failures: list[str] = []
        finished = 0
        start = time.perf_counter()
        previous = _interrupt_on_sigterm()
        try:
            while queue or running:
                while queue and free and len(running) < self.jobs:
                    running.append(self._start(queue.pop(0), free.pop(0)))
                time.sleep(0 if not running else self.poll_s)
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    free.append(job.slot)
                    finished += 1
                    if not self._finish(job, finished, len(runs), start):
                        failures.append(f"{job.run.name} (exit {job.process.returncode})")
        except BaseException:  # Ctrl-C or a bug: no orphaned fits left behind
            for job in running:
                _stop(job.process)
                if job.log_file:
                    job.log_file.close()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return failures

    def _start(self, run: PlannedRun, slot: int) -> _Running:
        env = self.slots[slot]
        log_path = self.log_path(run)
        log_file = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(log_path, "ab")  # noqa: SIM115 (closed when the job ends)
            log_file.write(
                f"== {_stamp()} start{' (resume)' if run.resume else ''}: "
                f"{shlex.join(run.cmd)}\n".encode()
            )
            log_file.flush()
        details = [d for d in (describe_env(env), f"log {log_path}" if log_path else "") if d]
        log.info(
            "%s: %s%s",
            run.tag,
            "resuming" if run.resume else "starting",
            f" ({'; '.join(details)})" if details else "",
        )
        process = subprocess.Popen(
            run.cmd,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}
            if log_file
            else {**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
            preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
        )
        return _Running(run, process, slot, time.perf_counter(), log_path, log_file)

    def _finish(self, job: _Running, finished: int, total: int, start: float) -> bool:
        code = job.process.returncode
        took = time.perf_counter() - job.start
        if job.log_file:
            job.log_file.write(f"== {_stamp()} exit {code} after {took:.1f} s\n".encode())
            job.log_file.close()
        progress = (
            f"{finished}/{total} launched runs ended, sweep {time.perf_counter() - start:.0f} s"
        )
        if code == 0:
            log.info("%s: finished in %.0f s (%s)", job.run.tag, took, progress)
            return True
        where = f"; its output: {job.log_path}" if job.log_path else "; see above"
        log.error(
            "%s: failed (exit %d) after %.0f s (%s)%s", job.run.tag, code, took, progress, where
        )
        if job.log_path:
            for line in _tail(job.log_path, 5):
                log.error("    %s", line)
        return False


def _terminate_with_parent() -> None:
    """In a fit just forked by the sweep (Linux): SIGTERM when the sweep dies, ``kill -9``
    included, so no fit runs on orphaned beside the next sweep's (it then stops as on any
    SIGTERM: its last checkpoint kept, exit 143, resumed by the next sweep)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _interrupt_on_sigterm() -> Any:
    """A SIGTERM to the sweep (``kill``, ``timeout``) stops its fits too, as Ctrl-C does; the
    previous handler, to put back (``None`` off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, n: int) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").rstrip().splitlines()[-n:]
    return []
