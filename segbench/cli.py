"""The ``segbench`` command: LightningCLI for fit/validate/test/predict, plus the analysis tools.

``segbench fit --config experiments/quickstart.yaml [--model.net.init_args.variant=16s ...]``

Besides Lightning's own sections (``trainer``, ``model``, ``data``, ``seed_everything``,
``ckpt_path``) a config has a ``run`` section (:class:`RunConfig`) that names the run. Everything
a run writes goes to one directory, ``<run.root>/<run.group>/<run.name>/``::

    config.yaml          the full resolved config (``segbench fit --config`` it to re-run)
    checkpoints/         best.ckpt (by val/mIoU) and last.ckpt (resume: --ckpt_path last)
    metrics.json         last/best validation and test metrics, parameters, throughput
    metrics.csv          every logged value per step/epoch (Lightning's CSVLogger)
    val_examples.png     image | ground truth | prediction for a few validation images
    predictions/         ``segbench predict``'s label maps (palette PNGs)
    wandb/               the W&B run (offline unless an API key is configured)

``num_classes``, ``ignore_index`` and the class names are declared by the data module alone and
linked into the task and the network when they are instantiated.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

from jsonargparse import Namespace
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from segbench.callbacks import PredictionWriter, RunFiles, SegmentationVisualizer
from segbench.data.base import SegmentationDataModule
from segbench.loggers import ResumableCSVLogger
from segbench.task import DEFAULT_OPTIMIZER, SegmentationTask

log = logging.getLogger("segbench")

#: ``segbench <tool>`` -> module with ``main(argv)``.
TOOLS = {
    "summary": "segbench.analysis.summary",
    "report": "segbench.analysis.report",
    "sweep": "segbench.analysis.sweep",
    "benchmark": "segbench.analysis.benchmark",
    "convert-sbd": "segbench.data.convert_sbd",
    "feature-norms": "segbench.analysis.feature_norms",
    "erf": "segbench.analysis.erf",
    "gridding": "segbench.analysis.gridding",
    "upper-bound": "segbench.analysis.upper_bound",
    "ld-masks": "segbench.analysis.ld_masks",
}

WANDB_ID_FILE = "wandb_id"


@dataclass
class RunConfig:
    """Where a run's files go, and how it appears on Weights & Biases.

    Attributes:
        name: the run's name: its directory under ``root/group`` and its W&B run name.
        group: the experiment or ablation it belongs to: W&B group and parent directory.
        tags: W&B tags (e.g. the variant and the paper).
        project: W&B project.
        root: directory under which runs are written.
        wandb: ``auto``: online if an API key is configured (``WANDB_API_KEY`` or ``wandb
            login``), otherwise offline (files only, never a prompt or a network call; sync
            later with ``wandb sync``); ``online``; ``offline``; ``disabled`` (no W&B logger).
        overwrite: a fresh ``fit`` into a directory that already holds checkpoints fails
            unless this is true, in which case the old run is deleted first. Resuming
            (``--ckpt_path last``) never needs it.
        test_after_fit: after ``fit``, run ``test`` with the best checkpoint in the same
            process, so ``metrics.json`` holds val and test results.
    """

    name: str = "run"
    group: str = "default"
    tags: list[str] = field(default_factory=list)
    project: str = "segbench"
    root: str = "runs"
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    overwrite: bool = False
    test_after_fit: bool = False


#: (source, target) config keys: the data module declares its classes, the task and the network
#: receive them when instantiated. A fresh run's parsed config leaves the targets unset; a resumed
#: one has them filled from the checkpoint's hyperparameters.
LINKS = (
    ("data.num_classes", "model.num_classes"),
    ("data.num_classes", "model.net.init_args.num_classes"),
    ("data.ignore_index", "model.ignore_index"),
    ("data.class_names", "model.class_names"),
)


def run_dir_of(run: Namespace | RunConfig) -> Path:
    return Path(run.root) / run.group / run.name


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; leaves become JSON-friendly values."""
    if isinstance(tree, Namespace):
        tree = tree.as_dict()
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(tree, list | tuple):
        return {
            key: [
                v if isinstance(v, int | float | str | bool) or v is None else str(v) for v in tree
            ]
        }
    return {key: tree if isinstance(tree, int | float | str | bool) or tree is None else str(tree)}


def wandb_key_available() -> bool:
    """True if W&B has an API key (environment variable or netrc from ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class SaveRunConfig(SaveConfigCallback):
    """Write ``config.yaml`` into the run directory at the start of ``fit`` and log it, flat (one
    key per switch, so every switch is a filterable column on W&B), to every logger."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        if trainer.is_global_zero:
            run_dir = run_dir_of(self.config.run)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, run_dir / "config.yaml", skip_unset=False, overwrite=True)
            flat = flatten(self.config)
            for logger in trainer.loggers:
                logger.log_hyperparams(flat)
        self.already_saved = trainer.strategy.broadcast(True)


class SegbenchCLI(LightningCLI):
    """LightningCLI with segbench's task, data base class, links and run directory."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", SegmentationTask)
        kwargs.setdefault("datamodule_class", SegmentationDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        super().__init__(args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.set_defaults({"model.optimizer": DEFAULT_OPTIMIZER})
        for source, target in LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")

    # -- configuration seen by every subcommand ----------------------------------------------
    @property
    def cfg(self) -> Namespace:
        """The parsed config of the running subcommand."""
        return self.config[self.subcommand] if self.subcommand else self.config

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.cfg.run)

    def _parse_ckpt_path(self) -> None:
        # "best" / "last" name the files of this run's directory, also in a fresh process
        # (``segbench test --config runs/g/n/config.yaml --ckpt_path best``).
        sub = self.config.get("subcommand")
        if sub:
            ckpt = self.config[sub].get("ckpt_path")
            if ckpt in ("best", "last"):
                path = run_dir_of(self.config[sub].run) / "checkpoints" / f"{ckpt}.ckpt"
                if not path.is_file():
                    raise FileNotFoundError(f"--ckpt_path {ckpt}: no checkpoint at {path}")
                self.config[sub].ckpt_path = str(path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        mode = self.cfg.run.wandb
        if mode == "auto" and "WANDB_MODE" not in os.environ:
            mode = "online" if wandb_key_available() else "offline"
        if mode in ("online", "offline"):
            os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_CONSOLE", "off")  # keep W&B off our progress bars
        if self.subcommand == "fit":
            self._prepare_run_dir()

    @rank_zero_only
    def _prepare_run_dir(self) -> None:
        ckpts = self.run_dir / "checkpoints"
        if self.cfg.ckpt_path or not (ckpts.is_dir() and any(ckpts.iterdir())):
            return
        if not self.cfg.run.overwrite:
            raise FileExistsError(
                f"{self.run_dir} holds checkpoints of an earlier run. Resume it with "
                "--ckpt_path last, start over with --run.overwrite true (deletes it), or choose "
                "another --run.name."
            )
        log.info("replacing the earlier run in %s", self.run_dir)
        shutil.rmtree(self.run_dir)

    def _loggers(self) -> list[Logger]:
        run, run_dir = self.cfg.run, self.run_dir
        loggers: list[Logger] = []
        if run.wandb != "disabled":
            id_file = run_dir / WANDB_ID_FILE
            resume = id_file.is_file() and not (self.subcommand == "fit" and not self.cfg.ckpt_path)
            run_id = id_file.read_text().strip() if resume else uuid.uuid4().hex[:12]
            if rank_zero_only.rank == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id)
            loggers.append(
                WandbLogger(
                    project=run.project,
                    name=run.name,
                    group=run.group,
                    tags=list(run.tags),
                    save_dir=str(run_dir),
                    id=run_id,
                    resume="allow",
                    log_model=False,
                )
            )
        loggers.append(ResumableCSVLogger(save_dir=str(run_dir), name="", version=""))
        return loggers

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers()
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        callbacks = list(trainer_cfg.get("callbacks") or [])
        callbacks += [
            RunFiles(self.run_dir, flatten(self.cfg)),
            SegmentationVisualizer(self.run_dir),
        ]
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(self.run_dir / "predictions"))
        if trainer_cfg.get("enable_checkpointing") is not False:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=self.run_dir / "checkpoints",
                    filename="best",
                    monitor="val/mIoU",
                    mode="max",
                    save_top_k=1,
                    save_last=True,
                    auto_insert_metric_name=False,
                )
            )
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        if self.cfg.run.test_after_fit and not self.trainer.interrupted:
            best = getattr(ckpt, "best_model_path", "")
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        self._finish()

    def after_validate(self) -> None:
        self._finish()

    def after_test(self) -> None:
        self._finish()

    def after_predict(self) -> None:
        self._finish()

    def _finish(self) -> None:
        # Close the W&B run now, not at interpreter exit, so its files are complete when the
        # command returns (also when segbench is driven from Python, one run after another),
        # and W&B's own summary comes before segbench's.
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
                logger.experiment.finish()
        self._report()

    @rank_zero_only
    def _report(self) -> None:
        metrics = self.trainer.callback_metrics
        shown = {
            k: float(v)
            for k, v in metrics.items()
            if k.split("/")[-1] in {"mIoU", "pixel_acc", "mean_acc", "fwIoU"}
        }
        lines = [f"  {k:<16} {v:.4f}" for k, v in sorted(shown.items())]
        lines.append(f"run directory: {self.run_dir.resolve()}")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and os.environ.get("WANDB_MODE") == "offline":
                lines.append(
                    f"W&B (offline): {self.run_dir.resolve() / 'wandb'}; upload with "
                    f"`wandb sync {self.run_dir / 'wandb'}/offline-run-*`"
                )
        log.info("\n".join(lines))


class _BuildOnly(SegbenchCLI):
    """Parse exactly like ``segbench fit`` but only build the data module and the task."""

    def _set_seed(self) -> None:
        seed_everything(self.cfg.seed_everything, workers=True, verbose=False)

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule = self.config_init[self.subcommand]["data"]
        self.model = self.config_init[self.subcommand]["model"]

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def build(args: list[str]) -> tuple[SegmentationTask, SegmentationDataModule, Namespace]:
    """Build the task and data module of a config without a trainer, data or logger.

    ``args`` are ``segbench fit`` arguments, e.g. ``["--config", "experiments/quickstart.yaml"]``.
    """
    # The arguments come from the caller, not sys.argv (which LightningCLI would warn about).
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = _BuildOnly(args=["fit", *args])
    return cli.model, cli.datamodule, cli.cfg


_DESCRIPTION = (
    "segbench: semantic segmentation experiments (FCN, ParseNet, DRN, GALD, DUpsampling).\n"
    "Training and evaluation: segbench {fit,validate,test,predict} --config FILE.yaml.\n"
    "Tools: " + ", ".join(f"segbench {t} --help" for t in TOOLS) + "."
)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging() -> None:
    """segbench's own messages: plain lines on stderr, at INFO."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``segbench`` console script."""
    configure_logging()
    if argv is None:
        argv = sys.argv[1:]
    elif not (argv and argv[0] in TOOLS):
        # Called from Python: LightningCLI reads (and DDP re-launches) sys.argv, so make it say
        # what was asked.
        with mock.patch.object(sys, "argv", [sys.argv[0], *argv]):
            SegbenchCLI()
        return
    if argv and argv[0] in TOOLS:
        importlib.import_module(TOOLS[argv[0]]).main(list(argv[1:]))
        return
    SegbenchCLI()


if __name__ == "__main__":
    main()
