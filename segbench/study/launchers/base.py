"""What every launcher shares: a planned run, the launcher contract, and the slots (devices and
CPU threads) that concurrent fits get."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from segbench.errors import ConfigError
from segbench.provenance import cpu_cores

log = logging.getLogger("segbench")

LAUNCHERS = ("subprocess", "local", "debug", "slurm")


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
        """Run them all; those that failed, each as ``name (why)``: ``fcn8s-s0 (exit 2)``."""
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


def describe_env(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items() if k != "MKL_NUM_THREADS")
