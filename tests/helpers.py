"""What the tests share: the repository's path, tiny-run arguments, config and data helpers. Test
modules import from here (never from each other); fixtures live in ``conftest.py``."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from lightning.pytorch.callbacks import Callback
from PIL import Image

from segbench.cli import main
from segbench.models import architectures

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


class RecordTrainingLosses(Callback):
    """Appends each process's training losses to ``<out>/losses-<rank>.txt``, one line a step:
    ``epoch batch_size loss`` (what each process computed, before any logging reduces it).

    Args:
        out: the folder of the files.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = f"{trainer.current_epoch} {batch['image'].shape[0]} {float(outputs['loss']):.9g}\n"
        with open(self.out / f"losses-{trainer.global_rank}.txt", "a") as f:
            f.write(line)


def run_main(args: list[str]) -> None:
    """Run the CLI; `--print_config` and `--help` end with SystemExit(0)."""
    try:
        main(args)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise


def metrics(run_dir: Path) -> dict:
    """The ``fit`` section of a run's metrics.json, with the file's config and provenance."""
    data = json.loads((run_dir / "metrics.json").read_text())
    return {**data["fit"], "config": data["config"], "provenance": data["provenance"]}


EXPERIMENTS = REPO / "experiments"


#: One data section per real data set: ``experiments/datasets/<dataset>.yaml``.
DATASETS = EXPERIMENTS / "datasets"


def dataset_section(path: Path) -> Path | None:
    """``experiments/datasets/<dataset>.yaml`` for ``experiments/<paper>/<dataset>/...``."""
    parts = path.relative_to(EXPERIMENTS).parts
    if len(parts) < 3 or parts[0] == DATASETS.name:
        return None
    section = DATASETS / f"{parts[1]}.yaml"
    return section if section.is_file() else None


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    img.save(path)


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


def sweep_command(
    tmp: Path,
    group: str,
    *options: str,
    seeds: tuple[str, ...] = ("0",),
    variants: tuple[str, ...] = ("32s", "8s"),
) -> list[str]:
    """``segbench sweep`` of FCN-32s and FCN-8s (or the FCN ``variants`` given) on the tiny
    config (its run naming left to the sweep), runs under ``tmp/runs``, the report at
    ``tmp/results/<group>``; ``options`` go before ``--``."""
    files = []
    for v in variants:
        path = tmp / f"fcn{v}.yaml"
        path.write_text(f"model:\n  net:\n    init_args:\n      variant: {v}\n")
        files.append(str(path))
    fit_args = tiny_args(tmp, name="unused")
    base, extra = fit_args[1], fit_args[2:]
    keep = [
        a
        for i, a in enumerate(extra)
        if not (a.startswith("--run.") or (i and extra[i - 1].startswith("--run.")))
    ]
    cmd = [sys.executable, "-m", "segbench.cli", "sweep", "--group", group, "--base", base]
    cmd += ["--variants", *files, "--seeds", *seeds, "--root", str(tmp / "runs")]
    cmd += ["--out", str(tmp / "results" / group), *options, "--", *keep]
    return [*cmd, "--run.wandb", "disabled"]


@contextlib.contextmanager
def segbench_log() -> Iterator[list[str]]:
    """The messages segbench's logger emits (INFO and up) inside the block."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("segbench")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def segbench_in_process(cmd: list[str]) -> str:
    """A ``[python, -m, segbench.cli, ...]`` command run in this process (a sweep's or a tune's
    fits are processes of their own all the same), saving the ~5 s a Python process takes to
    import torch and lightning; what segbench logged (INFO and up), a line a message."""
    with segbench_log() as lines:
        main(cmd[cmd.index("segbench.cli") + 1 :])
    return "\n".join(lines)


def wait_at_step(release: Path, process: subprocess.Popen) -> int:
    """The pid of the fit that ``process`` (a sweep, a tune) started, once it waits at its step
    (``tests.faults.kill.WaitAtStep``)."""
    waiting = Path(f"{release}.waiting")
    deadline = time.monotonic() + 300
    while not waiting.exists():
        assert process.poll() is None, "the process ended before its fit reached its step"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return int(waiting.read_text())
