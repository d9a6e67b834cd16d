"""Networks and images for the analysis tools, from a config (fresh) or a trained run directory.

A tool's model arguments are either a run directory (``runs/<group>/<name>``: its
``config.yaml`` is parsed and ``checkpoints/<ckpt>.ckpt`` loaded into the network, strictly), or
``segbench fit`` arguments (``--config FILE.yaml [--model.net.init_args.width 0.25 ...]``) for a
freshly initialised network. Further ``segbench fit`` overrides may follow a run directory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import Namespace
from torch import Tensor, nn

from segbench.cli.lightning import build
from segbench.data.base import SegmentationDataModule, Split
from segbench.errors import CheckpointError, ConfigError, DataError, MissingFileError
from segbench.rundir import RunDir, safe_load
from segbench.task import SegmentationTask
from segbench.visualize import denormalise

__all__ = ["LoadedModel", "denormalise", "is_run_dir", "load_model", "sample_images"]


@dataclass
class LoadedModel:
    """A network ready for analysis (eval mode, CPU) with its data module."""

    task: SegmentationTask
    datamodule: SegmentationDataModule
    config: Namespace
    #: The run directory it was loaded from, or ``None`` for a fresh network.
    run_dir: Path | None
    checkpoint: Path | None
    #: The model's label in tables and file names (set by the tool skeleton).
    label: str = ""
    #: The training step of the checkpoint as it was loaded (what a ``--record`` keeps: the file
    #: may hold a later step by the time the tool records, if the run trains on meanwhile).
    checkpoint_step: int | None = None

    @property
    def net(self) -> nn.Module:
        return self.task.net

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def name(self) -> str:
        if self.checkpoint:
            kind = f"{self.run_dir} ({self.checkpoint.name})"
        else:  # a tool that reads the data alone loads no weights, from a run directory too
            kind = f"{self.run_dir} (its data)" if self.run_dir else "fresh"
        return f"{type(self.net).__name__}, {kind}"


def is_run_dir(path: str) -> bool:
    return Path(path).is_dir() and RunDir(path).is_run()


def load_model(args: list[str], *, ckpt: str | None = None, network: bool = True) -> LoadedModel:
    """Build the network of ``args`` (a run directory first, or ``segbench fit`` arguments).

    ``ckpt`` names the run's checkpoint (``best``, the default; ``last``) or is a path to one (a
    missing one is an error); with ``segbench fit`` arguments the network is fresh and a
    ``ckpt`` is refused rather than ignored. ``network=False`` is for a caller that only reads
    the data: the network is built on the meta device and no checkpoint is read.
    """
    if not args:
        raise ConfigError("give a run directory or --config FILE.yaml")
    run_dir: Path | None = None
    checkpoint: Path | None = None
    if not args[0].startswith("-"):
        run = RunDir.given(args[0])
        run.reader()  # before its checkpoint is read: no --run.overwrite moves it meanwhile
        run_dir = run.path
        args = ["--config", str(run.config), *args[1:]]
        if network:
            ckpt = ckpt or "best"
            as_path = Path(ckpt).suffix == ".ckpt"
            checkpoint = Path(ckpt) if as_path else run.require_checkpoint(ckpt)
            if not checkpoint.is_file():
                raise MissingFileError(f"no checkpoint at {checkpoint}")
    elif ckpt is not None and network:
        raise ConfigError(
            f"--ckpt {ckpt}: a checkpoint of a run directory, but no run directory is given "
            "(with --config the network is freshly initialised); give the run directory first: "
            f"RUN_DIR --ckpt {ckpt}"
        )
    with contextlib.nullcontext() if network else torch.device("meta"):
        task, dm, cfg = build(args)
    if checkpoint is not None:
        state = safe_load(checkpoint)
        step = state.get("global_step") if isinstance(state, dict) else None
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
        net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        try:
            task.net.load_state_dict(net_state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{checkpoint} does not fit the network of {args[1]}: {str(err).splitlines()[0]}"
            ) from None
    task.net.eval()
    loaded = LoadedModel(task, dm, cfg, run_dir, checkpoint)
    loaded.checkpoint_step = step if checkpoint is not None and isinstance(step, int) else None
    return loaded


def sample_images(dm: SegmentationDataModule, num: int, split: Split = "val") -> Tensor:
    """The first ``num`` (normalised) images of ``split`` without augmentation, ``N x 3 x H x W``.

    All images must share a size (true of the synthetic scenes; crop real data sets first).
    """
    dataset = dm.unaugmented(split)
    images = [dataset[i]["image"] for i in range(min(num, len(dataset)))]  # type: ignore[arg-type]
    sizes = {tuple(im.shape[-2:]) for im in images}
    if len(sizes) > 1:
        raise DataError(f"the {split} images differ in size ({sorted(sizes)}): crop them first")
    return torch.stack(images)
