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
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def tiny_args(
    root: Path,
    *,
    name: str = "tiny",
    epochs: int = 1,
    wandb: str = "disabled",
    extra: list[str] | None = None,
) -> list[str]:
    """`segbench fit` arguments for a run of a few seconds under ``root``."""
    return [
        "--config",
        str(REPO / "experiments" / "quickstart.yaml"),
        "--run.root",
        str(root),
        "--run.group",
        "test",
        "--run.name",
        name,
        "--run.wandb",
        wandb,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--model.net.init_args.width",
        "0.0625",
        "--data.init_args.num_train",
        "16",
        "--data.init_args.num_val",
        "10",
        "--data.init_args.num_test",
        "6",
        "--data.init_args.image_size",
        "[64, 64]",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        *(extra or []),
    ]


@pytest.fixture
def tiny(tmp_path: Path):
    """A factory of tiny-run arguments rooted in this test's temporary directory."""

    def make(**kwargs) -> list[str]:
        return tiny_args(tmp_path, **kwargs)

    make.root = tmp_path
    return make
