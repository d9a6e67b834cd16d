"""What a run records of the code that made it (segbench.provenance)."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from segbench.provenance import source_state


@pytest.fixture(autouse=True)
def no_git_config(monkeypatch):
    """This user's and the system's git settings (a ``safe.directory = *``) left out."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(cwd, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def make_repo(path):
    path.mkdir()
    git(path, "init", "-q")
    (path / "code.py").write_text("x = 1\n")
    git(path, "add", "code.py")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return path


def test_a_work_tree_records_its_commit_and_whether_it_was_changed(tmp_path):
    repo = make_repo(tmp_path / "repo")
    assert source_state(repo) == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    assert source_state(repo)["dirty"] is True


def test_a_tree_outside_git_records_why_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="segbench.provenance"):
        state = source_state(tmp_path)
    assert state["commit"] is None
    assert "not a git repository" in state["git_error"]
    assert not caplog.records


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the checkout to another user")
def test_a_checkout_git_refuses_to_read_is_said_not_silently_empty(tmp_path, caplog):
    """Found as a non-root user running root's checkout: git refused it (dubious ownership) and
    the run recorded ``commit: None`` without a word."""
    repo = make_repo(tmp_path / "repo")
    for folder, _, files in os.walk(repo):
        os.chown(folder, 12345, 12345)
        for name in files:
            os.chown(os.path.join(folder, name), 12345, 12345)
    with caplog.at_level(logging.WARNING, logger="segbench.provenance"):
        state = source_state(repo)
    assert state["commit"] is None
    assert "dubious ownership" in state["git_error"]
    assert any("records no commit" in r.getMessage() for r in caplog.records)
