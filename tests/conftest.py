"""Shared fixtures: a tiny end-to-end configuration that fits in seconds on a CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Tests never talk to W&B servers and never prompt.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Scene and basis caches of the tests' tiny data sets stay out of the user's cache.
os.environ.setdefault("SEGBENCH_CACHE", tempfile.mkdtemp(prefix="segbench-test-cache-"))
# Under pytest-xdist (make test) each worker takes its share of the cores, and so do the
# processes its tests start (segbench fits, sweeps, tune trials): torch reads OMP_NUM_THREADS at
# start. Two workers whose fits each ran one thread per core oversubscribed the cores (the
# suite took 589 s instead of 481 s on 2 idle cores). A value the user set stands.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    os.environ.setdefault("MKL_NUM_THREADS", str(_THREADS))

from segbench.cli import main  # noqa: E402
from tests.helpers import fresh_args, tiny_args  # noqa: E402


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` (make test) runs the tests marked ``xdist_group(NAME)`` on one worker,
    so that the module fixture they share is built once. pytest-xdist 3.8 names the group in the
    node id it writes to ``item._nodeid``, which pytest 9 no longer reads (its ``item._id``): the
    group went unheeded. Its node id is passed on here (after xdist's hook). Only the schedule
    depends on this, never a result."""
    from _pytest.nodeid import NodeId

    for item in items:
        named = getattr(item, "_nodeid", None)
        if named is not None and named != item.nodeid:
            item._id = NodeId.parse(named)


@pytest.fixture
def tiny(tmp_path: Path):
    """A factory of tiny-run arguments rooted in this test's temporary directory."""

    def make(**kwargs) -> list[str]:
        return tiny_args(tmp_path, **kwargs)

    make.root = tmp_path
    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``architecture name -> run directory`` of a one-epoch tiny run, trained on first use."""
    runs: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in runs:
            root = tmp_path_factory.mktemp(arch.lower())
            main(["fit", *fresh_args(root, arch)])
            runs[arch] = root / "test" / arch.lower()
        return runs[arch]

    return get
