"""``--launcher slurm`` (and ``local`` / ``debug``, its rehearsals): the fits as SLURM jobs through
submitit."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.errors import ConfigError
from segbench.rundir import RunDir, atomic_write_json
from segbench.study.launchers.base import PlannedRun, describe_env

log = logging.getLogger("segbench")


#: SLURM job states in which a submitted run is still on its way (not to be submitted again).
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
)


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

    # As submitit writes it: the folder quoted (a space in it).
    jobs = shlex.quote(str(folder / "%j"))
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {jobs}"
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
                batch: list[tuple[PlannedRun, FitJob]] = []
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
                        failures.append(f"{run.name} ({why})")
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
            env = describe_env(fn.env)
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
