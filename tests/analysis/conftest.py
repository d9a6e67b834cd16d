"""Fixtures of the analysis tools' tests: tiny models of every architecture, fresh or trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from segbench.cli import main
from segbench.models import architectures
from tests.conftest import tiny_args


def net_override(path: Path, arch: str) -> Path:
    """A config file (at ``path``) that swaps the tiny run's network for ``arch`` at the small
    size it declares (``test_kwargs``)."""
    cls = architectures()[arch]
    path.write_text(
        yaml.safe_dump(
            {"model": {"net": {"class_path": f"{cls.__module__}.{cls.__name__}",
                               "init_args": dict(cls.test_kwargs)}}}
        )
    )  # fmt: skip
    return path


def fresh_args(root: Path, arch: str) -> list[str]:
    """``segbench fit`` arguments of a tiny, untrained ``arch`` (what a tool's ``--config``
    takes)."""
    return [
        *tiny_args(root, name=arch.lower()),
        "--config",
        str(net_override(root / f"{arch}.yaml", arch)),
    ]


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


def sweep_command(
    tmp: Path, group: str, *options: str, seeds: tuple[str, ...] = ("0",)
) -> list[str]:
    """``segbench sweep`` of FCN-32s and FCN-8s on the tiny config (its run naming left to the
    sweep), runs under ``tmp/runs``, the report at ``tmp/results/<group>``; ``options`` go
    before ``--``."""
    variants = []
    for v in ("32s", "8s"):
        path = tmp / f"fcn{v}.yaml"
        path.write_text(f"model:\n  net:\n    init_args:\n      variant: {v}\n")
        variants.append(str(path))
    fit_args = tiny_args(tmp, name="unused")
    base, extra = fit_args[1], fit_args[2:]
    keep = [
        a
        for i, a in enumerate(extra)
        if not (a.startswith("--run.") or (i and extra[i - 1].startswith("--run.")))
    ]
    cmd = [sys.executable, "-m", "segbench.cli", "sweep", "--group", group, "--base", base]
    cmd += ["--variants", *variants, "--seeds", *seeds, "--root", str(tmp / "runs")]
    cmd += ["--out", str(tmp / "results" / group), *options, "--", *keep]
    return [*cmd, "--run.wandb", "disabled"]
