"""Models for the analysis tools: run directories and fresh configs."""

from __future__ import annotations

import pytest

from segbench.analysis.loading import load_model
from segbench.errors import CheckpointError


def test_a_path_that_is_not_a_run_directory_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run: not a run directory \(no config.yaml"):
        load_model([str(tmp_path / "run")])


def test_a_run_without_the_checkpoint_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(CheckpointError, match=r"no last checkpoint at .*checkpoints/last\.ckpt"):
        load_model([str(tmp_path)], ckpt="last")


def test_no_arguments_is_an_error():
    with pytest.raises(ValueError, match="run directory or --config"):
        load_model([])
