"""How ``segbench sweep`` runs its fits: one after the other, N at once, or as SLURM jobs.

The sweep plans its runs (finished ones skipped, interrupted ones resumed with ``--ckpt_path
last``) and hands the list of ``segbench fit`` commands to a launcher; the launcher only executes
them and says which failed. Three launchers, one contract:

* :class:`ProcessLauncher` (``--launcher subprocess``, the default): ``--jobs N`` fits at once as
  child processes on this machine. ``--jobs 1`` is the plain sequential loop, its output on the
  terminal. With ``N > 1`` each fit writes to ``<root>/<group>/logs/<run>.log`` and the sweep
  prints one line per start and finish. Each concurrent job gets a *slot*: its own
  ``CUDA_VISIBLE_DEVICES`` (``--devices_per_job D``: D device ids each, out of the visible ones)
  and its share of the CPU threads (``OMP_NUM_THREADS`` = cores // N, which torch reads at start),
  so N jobs neither share a GPU nor oversubscribe the cores.
* :class:`SubmititLauncher` (``--launcher slurm``): the same fits as SLURM jobs through submitit,
  a job array by default (``--slurm_array_parallelism`` at once), one job per run with
  ``--slurm_no_array``. Each SLURM task runs :class:`FitJob`, which runs the fit as a child process
  that inherits the task's environment, so Lightning's ``SLURMEnvironment`` finds ``SLURM_NTASKS``,
  ``SLURM_PROCID``, ``SLURM_LOCALID`` and the node list: a multi-node DDP run is ``--slurm_nodes
  M --slurm_gpus_per_node G`` (G tasks per node, ``--trainer.num_nodes M --trainer.devices G``).
  A job that reaches its time limit is requeued by submitit and resumes from ``last.ckpt``.
* ``--launcher local`` / ``debug``: submitit's ``LocalExecutor`` (each fit a job on this machine,
  ``--jobs`` at once) and ``DebugExecutor`` (in the sweep's process, one at a time): the SLURM
  path rehearsed where there is no SLURM.

The log files stay outside the run directories because a fresh ``fit --run.overwrite true``
moves an existing run directory aside, and a log file in it would go with it.
"""

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from segbench.errors import ConfigError
from segbench.provenance import cpu_cores
from segbench.rundir import RunDir

log = logging.getLogger("segbench")

LAUNCHERS = ("subprocess", "local", "debug", "slurm")

#: SLURM job states in which a submitted run is still on its way (not to be submitted again).
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
)


@dataclass
class PlannedRun:
    """One fit of the grid, ready to launch: the ``[index/total]`` of the sweep's plan."""

    name: str
    run_dir: Path
    cmd: list[str]
    resume: bool
    index: int
    total: int
    group: str

    @property
    def tag(self) -> str:
        return f"[{self.index}/{self.total}] {self.group}/{self.name}"


class Launcher(Protocol):
    #: ``segbench fit`` arguments the launcher needs (before the user's, which win).
    fit_args: list[str]

    def describe(self, runs: Sequence[PlannedRun]) -> list[str]:
        """What would be launched (``--dry-run``), one line each."""
        ...

    def launch(self, runs: Sequence[PlannedRun]) -> list[str]:
        """Run them all; the names of those that failed."""
        ...


# -- slots: devices and threads per concurrent job ---------------------------------------------
def visible_devices(
    devices: Sequence[str] | None,
    environ: Mapping[str, str],
    count: Callable[[], int],
) -> list[str]:
    """The device ids jobs are given out of: ``--devices``, else ``CUDA_VISIBLE_DEVICES``, else
    ``0 .. count()-1`` (``torch.cuda.device_count``)."""
    if devices:
        return [str(d) for d in devices]
    env = environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(count())]


def device_slots(visible: Sequence[str], *, jobs: int, devices_per_job: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each of ``jobs`` concurrent jobs: disjoint groups of
    ``devices_per_job`` ids in order (4 devices, 2 per job, 2 jobs: ``"0,1"``, ``"2,3"``)."""
    if devices_per_job < 1:
        raise ConfigError(f"--devices_per_job must be at least 1, got {devices_per_job}")
    if devices_per_job > len(visible):
        raise ConfigError(
            f"--devices_per_job {devices_per_job}: only {len(visible)} devices visible "
            f"({','.join(visible) or 'none'}; from --devices, CUDA_VISIBLE_DEVICES or torch)"
        )
    if jobs * devices_per_job > len(visible):
        raise ConfigError(
            f"--jobs {jobs} x --devices_per_job {devices_per_job} needs {jobs * devices_per_job} "
            f"devices; {len(visible)} visible ({','.join(visible)}). Lower --jobs to "
            f"{len(visible) // devices_per_job} or give more --devices"
        )
    return [",".join(visible[i * devices_per_job : (i + 1) * devices_per_job]) for i in range(jobs)]


def threads_per_job(jobs: int, cores: int, environ: Mapping[str, str]) -> int | None:
    """Each of ``jobs`` concurrent fits' CPU threads: ``cores // jobs`` (at least 1); ``None``
    when one job runs or the user set ``OMP_NUM_THREADS`` (their choice, per process, stands)."""
    if jobs <= 1 or environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, cores // jobs)


def slot_envs(
    *,
    jobs: int,
    devices_per_job: int | None,
    devices: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    cuda_count: Callable[[], int] | None = None,
) -> list[dict[str, str]]:
    """The environment overrides of each concurrent job slot (devices and threads)."""
    environ = os.environ if environ is None else environ
    envs: list[dict[str, str]] = [{} for _ in range(jobs)]
    if devices_per_job is not None:
        if cuda_count is None:

            def cuda_count() -> int:
                import torch

                return torch.cuda.device_count()

        visible = visible_devices(devices, environ, cuda_count)
        for env, ids in zip(
            envs, device_slots(visible, jobs=jobs, devices_per_job=devices_per_job), strict=True
        ):
            env["CUDA_VISIBLE_DEVICES"] = ids
    threads = threads_per_job(jobs, cpu_cores() if cores is None else cores, environ)
    if threads is not None:
        for env in envs:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return envs


def device_fit_args(devices_per_job: int | None) -> list[str]:
    """``--trainer.accelerator gpu --trainer.devices D`` when each job has D GPUs of its own."""
    if devices_per_job is None:
        return []
    return ["--trainer.accelerator", "gpu", "--trainer.devices", str(devices_per_job)]


def _describe_env(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items() if k != "MKL_NUM_THREADS")


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
            env = _describe_env(self.slots[i % len(self.slots)])
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
                        failures.append(job.run.name)
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
        details = [d for d in (_describe_env(env), f"log {log_path}" if log_path else "") if d]
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


# -- submitit: SLURM, and its local and debug executors ----------------------------------------
def import_submitit() -> Any:
    """submitit, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher slurm/local/debug needs submitit: pip install 'segbench[slurm]'"
        ) from None
    return submitit


def resume_command(cmd: Sequence[str]) -> list[str]:
    """A fresh fit's command made a resume: ``--run.overwrite true`` -> ``--ckpt_path last``."""
    out = list(cmd)
    for i in range(len(out) - 1):
        if out[i] == "--run.overwrite" and out[i + 1] == "true":
            out[i : i + 2] = ["--ckpt_path", "last"]
            break
    return out


@dataclass
class FitJob:
    """What one submitit task runs: the fit as a child process inheriting the task's environment
    (``SLURM_*`` for Lightning's ``SLURMEnvironment``), plus the slot's overrides.

    ``checkpoint`` is submitit's hook on a time limit or preemption: the job is requeued with the
    same fit made a resume from ``last.ckpt`` (the fit saves one every epoch).
    """

    run_dir: str
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, cmd: list[str]) -> int:
        """The fit's exit code (returned, not raised: the debug executor would open pdb)."""
        return subprocess.call(cmd, env={**os.environ, **self.env})

    def checkpoint(self, cmd: list[str]) -> Any:
        submitit = import_submitit()
        if RunDir(self.run_dir).state() == "done":
            return None
        if RunDir(self.run_dir).state() == "partial":
            cmd = resume_command(cmd)
        return submitit.helpers.DelayedSubmission(self, cmd)


def slurm_parameters(
    *,
    job_name: str,
    partition: str | None,
    time_min: int,
    nodes: int,
    gpus_per_node: int,
    cpus_per_task: int | None,
    mem_gb: float | None,
    array_parallelism: int | None,
    account: str | None,
    qos: str | None,
    setup: Sequence[str] | None,
) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters (sbatch's names) of one sweep job.

    One task per GPU (``ntasks_per_node = gpus_per_node``, or 1 on CPU): each task is one DDP
    process, the layout Lightning's ``SLURMEnvironment`` expects.
    """
    if nodes < 1:
        raise ConfigError(f"--slurm_nodes must be at least 1, got {nodes}")
    if gpus_per_node < 0:
        raise ConfigError(f"--slurm_gpus_per_node must be 0 or more, got {gpus_per_node}")
    if time_min < 1:
        raise ConfigError(f"--slurm_time is in minutes and must be at least 1, got {time_min}")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": time_min,
        "nodes": nodes,
        "ntasks_per_node": max(1, gpus_per_node),
        "signal_delay_s": 120,
    }
    optional = {
        "partition": partition,
        "gpus_per_node": gpus_per_node or None,
        "cpus_per_task": cpus_per_task,
        "mem": f"{mem_gb:g}GB" if mem_gb else None,
        "array_parallelism": array_parallelism,
        "account": account,
        "qos": qos,
        "setup": list(setup) if setup else None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def slurm_fit_args(*, nodes: int, gpus_per_node: int) -> list[str]:
    """The fit's trainer arguments matching the job's layout (tasks = nodes x devices)."""
    args = ["--trainer.num_nodes", str(nodes)]
    if gpus_per_node:
        args = ["--trainer.accelerator", "gpu", "--trainer.devices", str(gpus_per_node), *args]
    return args


def sbatch_script(params: Mapping[str, Any], folder: Path, count: int) -> str:
    """The sbatch file submitit would write for ``count`` runs (``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}/%j"
    return _make_sbatch_string(
        command=command,
        folder=str(folder / "%j"),
        map_count=count if count > 1 else None,
        **params,
    )


class SubmititLauncher:
    """The fits as submitit jobs: SLURM (a job array, or one job per run), local or debug."""

    def __init__(
        self,
        *,
        cluster: str,
        folder: Path,
        slurm: dict[str, Any] | None = None,
        jobs: int = 1,
        slots: list[dict[str, str]] | None = None,
        array: bool = True,
        wait: bool = True,
        time_min: int = 60,
        fit_args: list[str] | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.folder = folder
        self.slurm = dict(slurm or {})
        self.jobs = jobs
        self.slots = slots or [{}]
        self.array = array
        self.wait = wait
        self.time_min = time_min
        self.fit_args = list(fit_args or [])
        self.poll_s = poll_s if poll_s is not None else (10.0 if cluster == "slurm" else 0.5)

    # A record of what was submitted, so that a later sweep does not submit a queued run twice.
    @property
    def record_file(self) -> Path:
        return self.folder / "submitted.json"

    def describe(self, runs: Sequence[PlannedRun]) -> list[str]:
        lines = [f"submitit {self.cluster} executor, logs in {self.folder}/"]
        if self.cluster == "slurm":
            lines += ["parameters: " + ", ".join(f"{k}={v}" for k, v in self.slurm.items())]
            count = len(runs) if self.array else 1
            with contextlib.suppress(ImportError):
                lines += sbatch_script(self.slurm, self.folder, count).splitlines()
        return lines + [f"{run.tag}: {shlex.join(run.cmd)}" for run in runs]

    def _executor(self, submitit: Any) -> Any:
        if self.cluster == "slurm":
            executor = submitit.SlurmExecutor(folder=self.folder / "%j")
            executor.update_parameters(**self.slurm)
        elif self.cluster == "local":
            executor = submitit.LocalExecutor(folder=self.folder / "%j")
            executor.update_parameters(timeout_min=self.time_min)
        else:
            executor = submitit.DebugExecutor(folder=self.folder / "%j")
        return executor

    def launch(self, runs: Sequence[PlannedRun]) -> list[str]:
        submitit = import_submitit()
        executor = self._executor(submitit)
        start = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        pending: list[tuple[PlannedRun, Any, float]] = []
        queue = list(runs)
        finished = 0
        # SLURM queues and throttles the whole grid (array_parallelism); locally, --jobs at once.
        limit = len(runs) if self.cluster == "slurm" else self.jobs
        free = list(range(len(self.slots)))
        slot_of: dict[str, int] = {}
        try:
            while queue or pending:
                batch = []
                while (
                    queue
                    and len(pending) + len(batch) < limit
                    and (self.cluster == "slurm" or free)
                ):
                    run = queue.pop(0)
                    slot = free.pop(0) if self.cluster != "slurm" else 0
                    slot_of[run.name] = slot
                    batch.append((run, FitJob(str(run.run_dir), dict(self.slots[slot]))))
                if batch:
                    pending += self._submit(executor, batch)
                if not self.wait:
                    log.info(
                        "submitted %d runs; run the same segbench sweep again once they have "
                        "finished for the after-steps and the report",
                        len(runs),
                    )
                    return []
                time.sleep(self.poll_s if pending else 0)
                for item in [p for p in pending if p[1].done()]:
                    pending.remove(item)
                    run, job, t0 = item
                    if self.cluster != "slurm":
                        free.append(slot_of[run.name])
                    finished += 1
                    progress = (
                        f"{finished}/{len(runs)} launched runs ended, "
                        f"sweep {time.perf_counter() - start:.0f} s"
                    )
                    try:
                        code = job.result()
                        why = f"exit {code}"
                    except submitit.core.utils.UncompletedJobError as err:
                        code, why = None, (str(err).strip().splitlines() or ["?"])[-1][:300]
                    if code != 0:
                        failures.append(run.name)
                        log.error(
                            "%s: job %s failed (%s; %s); its output: %s",
                            run.tag,
                            job.job_id,
                            why,
                            progress,
                            job.paths.stderr,
                        )
                        continue
                    log.info(
                        "%s: job %s finished %.0f s after its submission (%s)",
                        run.tag,
                        job.job_id,
                        time.perf_counter() - t0,
                        progress,
                    )
        except KeyboardInterrupt:
            if self.cluster != "slurm":
                for _, job, _ in pending:
                    job.cancel(check=False)
            else:
                ids = " ".join(str(job.job_id) for _, job, _ in pending)
                log.error("the SLURM jobs keep running; scancel %s to stop them", ids)
            raise
        return failures

    def _submit(
        self, executor: Any, batch: list[tuple[PlannedRun, FitJob]]
    ) -> list[tuple[PlannedRun, Any, float]]:
        if self.cluster == "slurm" and self.array and len(batch) > 1:
            with executor.batch():
                jobs = [executor.submit(fn, run.cmd) for run, fn in batch]
        else:
            jobs = [executor.submit(fn, run.cmd) for run, fn in batch]
        now = time.perf_counter()
        record = read_submitted(self.record_file)
        for (run, fn), job in zip(batch, jobs, strict=True):
            env = _describe_env(fn.env)
            log.info(
                "%s: %s as %s job %s%s",
                run.tag,
                "resuming" if run.resume else "submitted",
                self.cluster,
                job.job_id,
                f" ({env})" if env else "",
            )
            record[run.name] = {"job_id": str(job.job_id), "cluster": self.cluster}
        if self.cluster == "slurm":
            from segbench.rundir import atomic_write_json

            atomic_write_json(self.record_file, record)
        return [(run, job, now) for (run, _), job in zip(batch, jobs, strict=True)]


def read_submitted(path: Path) -> dict[str, dict[str, str]]:
    """``submitted.json``: run name -> the SLURM job id it was last submitted as."""
    import json

    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def still_queued(
    folder: Path, names: Sequence[str], state: Callable[[str], str] | None = None
) -> dict[str, str]:
    """The runs a previous ``--no_wait`` sweep submitted whose SLURM job is still pending or
    running: run name -> ``"job 1234 RUNNING"``. ``state`` (a job id -> SLURM state) defaults to
    submitit's view of the job (``sacct``)."""
    record = read_submitted(folder / "submitted.json")
    if not record:
        return {}
    if state is None:
        submitit = import_submitit()

        def state(job_id: str) -> str:
            return str(submitit.SlurmJob(folder=folder / "%j", job_id=job_id).state)

    out = {}
    for name in names:
        job_id = (record.get(name) or {}).get("job_id")
        if job_id:
            current = (state(job_id) or "UNKNOWN").split()[0].upper()
            if current in ACTIVE_STATES:
                out[name] = f"job {job_id} {current}"
    return out
