"""Fixtures of the analysis tools' tests: tiny models of every architecture, fresh or trained."""

from __future__ import annotations

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
