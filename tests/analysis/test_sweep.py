"""segbench sweep end to end: variants x seeds, report, and a second call that skips done runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from segbench.analysis.sweep import fit_command, run_state
from tests.conftest import tiny_args


def test_sweep_runs_reports_and_skips_finished_runs(tmp_path):
    variants = []
    for v in ("32s", "8s"):
        path = tmp_path / f"fcn{v}.yaml"
        path.write_text(f"model:\n  net:\n    init_args:\n      variant: {v}\n")
        variants.append(str(path))
    # The tiny config's overrides, minus the run naming that the sweep owns.
    fit_args = tiny_args(tmp_path, name="unused")
    base, extra = fit_args[1], fit_args[2:]
    keep = [
        a
        for i, a in enumerate(extra)
        if not (a.startswith("--run.") or (i and extra[i - 1].startswith("--run.")))
    ]
    cmd = [
        sys.executable,
        "-m",
        "segbench.cli",
        "sweep",
        "--group",
        "skips",
        "--base",
        base,
        "--variants",
        *variants,
        "--seeds",
        "0",
        "--root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "results" / "skips"),
        "--",
        *keep,
        "--run.wandb",
        "disabled",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / "results" / "skips.md").read_text()
    assert "| fcn32s | 32s | 1 |" in table
    assert "| fcn8s | 8s | 1 |" in table
    for v in ("fcn32s", "fcn8s"):
        assert run_state(tmp_path / "runs" / "skips" / f"{v}-s0") == "done"

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0
    assert again.stderr.count("done, skipped") == 2


def test_interrupted_runs_resume_from_last(tmp_path):
    run = tmp_path / "g" / "v-s1"
    assert run_state(run) == "new"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_state(run) == "partial"
    cmd = fit_command(
        base=["b.yaml"],
        variant="x/v.yaml",
        seed=1,
        group="g",
        root=str(tmp_path),
        extra=["--trainer.max_epochs", "3"],
        resume=True,
    )
    assert cmd[cmd.index("--ckpt_path") + 1] == "last"
    assert "--run.overwrite" not in cmd
    assert cmd[-2:] == ["--trainer.max_epochs", "3"]
    assert Path(cmd[cmd.index("--config", cmd.index("b.yaml")) + 1]).name == "v.yaml"
