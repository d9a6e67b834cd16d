"""How a run was made: processes, batch, numerics, devices, versions, code and command line.

:func:`provenance` is recorded in every run's ``metrics.json`` (``"provenance"``) when training
starts; ``segbench report --provenance KEY`` shows any of it as a column. The effective batch
(per-process batch x processes x accumulated batches) is the number recipes state: a run whose
effective batch differs from its recipe's is the most common reproduction mistake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "jsonargparse",
    "wandb",
    "segbench",
)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@cache
def git_state() -> dict[str, Any]:
    """The commit of segbench's source tree and whether it had uncommitted changes."""
    return source_state(Path(__file__).resolve().parent)


def source_state(src: Path) -> dict[str, Any]:
    """The commit of the git work tree holding ``src`` and whether it had uncommitted changes;
    where git cannot tell, ``None`` for both and ``git_error``, git's reason. A tree git refuses
    to read (``dubious ownership``: a checkout of another user's, where ``safe.directory`` does
    not name it) is also a warning: the run records no commit. A tree outside git (segbench
    installed from a wheel) is not."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except subprocess.CalledProcessError as err:
        why = next(iter((err.stderr or "").strip().splitlines()), f"exit status {err.returncode}")
        if "not a git repository" not in why:
            log.warning("the run records no commit of segbench's source %s: git says %s", src, why)
        return {"commit": None, "dirty": None, "git_error": why}
    except (OSError, subprocess.SubprocessError) as err:  # no git, or it hung
        return {"commit": None, "dirty": None, "git_error": str(err)}
    return {"commit": commit, "dirty": bool(status.strip())}


def device_names(trainer: Any) -> list[str]:
    """The accelerator of this process (CUDA device names, else the CPU's model name)."""
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return [torch.cuda.get_device_name(root)]
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"cpu: {name} ({torch.get_num_threads()} threads)"]


def provenance(trainer: Any) -> dict[str, Any]:
    """What :mod:`segbench.provenance` records, for this trainer (call on every process)."""
    dm = trainer.datamodule
    batch = int(getattr(dm, "batch_size", 0) or 0)
    accumulate = int(trainer.accumulate_grad_batches)
    model = trainer.lightning_module
    sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    return {
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "devices_per_node": trainer.num_devices,
        "batch_per_process": batch,
        "accumulate_grad_batches": accumulate,
        "effective_batch": batch * trainer.world_size * accumulate,
        "precision": str(trainer.precision),
        "sync_batchnorm": sync_bn,
        "strategy": type(trainer.strategy).__name__,
        "devices": device_names(trainer),
        "versions": {"python": platform.python_version()}
        | {name: _version(name) for name in _PACKAGES},
        "attempt": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            **git_state(),
        },
        **git_state(),
    }
