"""Results computed once from the data and kept: on disk, and across DDP processes.

:func:`rank_zero_cached` is the one way segbench caches a data-dependent result (DUpsample's label
basis; the same fits any statistic of the training labels, such as median-frequency weights):
rank 0 loads it from the cache or computes and writes it (atomically, so a concurrent reader sees
the whole file or none), and broadcasts it, or its error, to the other processes. Caches are
tensors and plain values, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from segbench.errors import ConfigError
from segbench.rundir import atomic_paths, atomic_torch_save, safe_load

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder (default ``~/.cache/segbench``).
CACHE_ENV = "SEGBENCH_CACHE"


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$SEGBENCH_CACHE``, else ``$XDG_CACHE_HOME/segbench``, else
    ``~/.cache/segbench``; made if missing. A folder this user cannot make (a home that is not
    theirs or is read-only, ``HOME=/nonexistent``) is a :class:`ConfigError` naming it and the
    variable that moves it."""
    env, xdg = os.environ.get(CACHE_ENV), os.environ.get("XDG_CACHE_HOME")
    if cache_dir:
        root, what = Path(cache_dir).expanduser(), f"the cache folder {cache_dir}"
    elif env:
        root, what = Path(env).expanduser(), f"{CACHE_ENV}={env}"
    elif xdg and Path(xdg).is_absolute():  # the XDG rule: a relative one is ignored
        root, what = Path(xdg) / "segbench", f"the cache folder (XDG_CACHE_HOME={xdg})"
    else:
        try:
            home = Path.home()
        except RuntimeError as err:  # no HOME and no home in the user database
            raise ConfigError(
                f"the cache folder: {err} (it is ~/.cache/segbench); set {CACHE_ENV} to a "
                "folder this user can write"
            ) from err
        root, what = home / ".cache" / "segbench", "the cache folder (~/.cache/segbench)"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{what}: {root} is a file, not a folder; point it at a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{what}: {root} cannot be made ({err.filename}: "
            f"{(err.strerror or 'not allowed').lower()}); set {CACHE_ENV} to a folder this user "
            "can write"
        ) from err
    return root


def written_once(path: Path, write: Callable[[Path], None], *, what: str = "file") -> Path:
    """``path``, written by ``write(temporary path)`` if it does not exist yet.

    Processes that need it at the same time (the ranks of a DDP run, the runs of a parallel
    sweep) wait on a lock file while the first one writes; the file appears whole (renamed into
    place, :func:`segbench.rundir.atomic_paths`) or not at all, and a writer killed part-way
    leaves a temporary file that the next write removes. No collective call: any subset of
    processes may ask.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            with atomic_paths(path) as (tmp,):
                write(tmp)
            log.info("%s cached in %s", what, path)
    return path


def rank_zero_cached(
    path: Callable[[], Path], compute: Callable[[], Any], *, what: str = "result"
) -> tuple[Any, str]:
    """``(value, source)``: the value cached at ``path()``, else ``compute()`` (then cached).

    ``source`` is ``"cache"`` or ``"fitted"`` on rank 0 and ``"broadcast"`` on the others. Under
    ``torch.distributed`` only rank 0 reads the data (``path()`` may, to key the cache), touches
    the disk and computes; an error there is raised on every process.
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    payload: Any = None
    if rank == 0:
        try:
            file = path()
            if file.is_file():
                payload = (safe_load(file, what=f"{what} cache"), "cache")
                log.info("%s loaded from %s", what, file)
            else:
                value = compute()
                atomic_torch_save(value, file)
                log.info("%s cached in %s", what, file)
                payload = (value, "fitted")
        except Exception as err:  # sent to the other ranks, re-raised everywhere
            payload = err
    if distributed:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if isinstance(payload, Exception):
        raise RuntimeError(f"{what}: computing it failed on rank 0") from payload
    value, source = payload
    return value, source if rank == 0 else "broadcast"
