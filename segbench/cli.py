"""The ``segbench`` command: LightningCLI for fit/validate/test/predict, plus the analysis tools.

``segbench fit --config experiments/quickstart.yaml [--model.net.init_args.variant=16s ...]``

Besides Lightning's own sections (``trainer``, ``model``, ``data``, ``seed_everything``,
``ckpt_path``) a config has a ``run`` section (:class:`RunConfig`) that names the run. Everything
a run writes goes to one directory, ``<run.root>/<run.group>/<run.name>/``, whose layout and files
:class:`segbench.rundir.RunDir` owns.

``num_classes``, ``ignore_index`` and the class names are declared by the data module alone and
linked into the task and the network when they are instantiated.

A user error (a bad value, file or checkpoint, a full disk) ends the command with one paragraph
naming what to fix and exit code 1; ``SEGBENCH_DEBUG=1`` shows its traceback
(:mod:`segbench.errors`). Config errors are jsonargparse's (exit code 2), with the file and line
of a misspelt key.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn
from unittest import mock

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from segbench import errors
from segbench.callbacks import (
    ExactResume,
    LastCheckpoint,
    PredictionWriter,
    RunFiles,
    SegmentationVisualizer,
)
from segbench.data.base import SegmentationDataModule
from segbench.errors import CheckpointError, ConfigError, SegbenchError
from segbench.loggers import ResumableCSVLogger
from segbench.rundir import RunCheckpointIO, RunDir, safe_load
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
            login``) and the W&B server answers within seconds, otherwise offline (files only;
            sync later with ``wandb sync``); ``online``: fails at once without a key or a
            reachable server; ``offline``; ``disabled`` (no W&B logger). Never a prompt.
        overwrite: a fresh ``fit`` into a directory that already holds checkpoints fails
            unless this is true, in which case the old run is moved aside and deleted once the
            new run has started training (put back if it fails before). Resuming
            (``--ckpt_path last``) never needs it.
        test_after_fit: after ``fit``, run ``test`` with the best checkpoint in the same
            process, so ``metrics.json`` holds val and test results.
        checkpoint_every_n_steps: besides the end of every epoch, write ``last.ckpt`` every N
            optimiser steps (``null``: not by steps).
        checkpoint_every_minutes: besides the end of every epoch, write ``last.ckpt`` when this
            many minutes of training passed since the last write (``null``: not by time), so a
            crash costs minutes even when epochs are long.
        effective_batch: the effective batch (per-process batch x processes x accumulated
            batches) this recipe was made for, as the paper states it; a run whose effective
            batch differs is warned about at start (``null``: no check).
    """

    name: str = "run"
    group: str = "default"
    tags: list[str] = field(default_factory=list)
    project: str = "segbench"
    root: str = "runs"
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    overwrite: bool = False
    test_after_fit: bool = False
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    effective_batch: int | None = None


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
    return RunDir.of(run).path


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

    host = urlparse(wandb_url()).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


#: How long ``run.wandb auto`` / ``online`` wait for the W&B server to answer.
WANDB_PROBE_SECONDS = 5.0


def wandb_reachable(timeout: float | None = None) -> str | None:
    """``None`` if the W&B server answers HTTP within ``timeout`` s (any status), else why not.

    The request runs in a daemon thread joined with the timeout, so a name lookup that hangs
    (no network) is bounded too.
    """
    timeout = WANDB_PROBE_SECONDS if timeout is None else timeout
    result: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(wandb_url(), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # it answered
        except Exception as err:  # any failure to get an answer means unreachable
            result.append(f"{type(err).__name__}: {getattr(err, 'reason', err)}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def choose_wandb_mode(requested: str) -> str:
    """The W&B mode to run in; never one that prompts or waits on an unreachable server."""
    if requested == "disabled":
        return "disabled"
    if requested == "auto" and os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    if requested == "offline":
        return "offline"
    key = wandb_key_available()
    if requested == "online" and not key:
        raise ConfigError(
            "run.wandb online: no W&B API key. Set WANDB_API_KEY or run `wandb login`, or use "
            "run.wandb auto (offline without a key) or offline."
        )
    if not key:
        return "offline"
    t0 = time.monotonic()
    why = wandb_reachable()
    if why is None:
        return "online"
    if requested == "online":
        raise SegbenchError(
            f"run.wandb online: the W&B server {wandb_url()} did not answer ({why}). Use "
            "run.wandb auto to fall back to offline logging, or offline."
        )
    log.warning(
        "W&B: %s did not answer (%s, after %.1f s): logging offline instead; upload later with "
        "`wandb sync`",
        wandb_url(),
        why,
        time.monotonic() - t0,
    )
    return "offline"


class SaveRunConfig(SaveConfigCallback):
    """Write ``config.yaml`` into the run directory at the start of ``fit`` and log it, flat (one
    key per switch, so every switch is a filterable column on W&B), to every logger."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        if trainer.is_global_zero:
            run = RunDir(trainer.default_root_dir)
            run.path.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False)
            from segbench.rundir import atomic_write_text

            atomic_write_text(run.config, text)
            flat = flatten(self.config)
            for logger in trainer.loggers:
                logger.log_hyperparams(flat)
        self.already_saved = trainer.strategy.broadcast(True)


#: Keys the data module sets (through LINKS); a value given by hand would be silently replaced.
_LINKED = tuple(target for _, target in LINKS)


class _Parser(LightningArgumentParser):
    """jsonargparse's errors, plus the file and line of a key that a config file misspells."""

    config_files: tuple[str, ...] = ()

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        where = _locate_keys(message, type(self).config_files)
        super().error(message + (f"\n  found in: {where}" if where else ""), ex)


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files of ``segbench fit`` arguments, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _locate_keys(message: str, files: tuple[str, ...]) -> str:
    """``file:line`` of the quoted or dotted keys of an error message in the config files."""
    quoted = re.findall(r"[\"']([A-Za-z_][\w.]*)[\"']", message)
    names = {m.split(".")[-1] for m in [*quoted, *re.findall(r"--([\w.]+)", message)]}
    hits = []
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            m = re.match(r"\s*([A-Za-z_]\w*)\s*:", line)
            if m and m.group(1) in names and not _is_known_section(m.group(1)):
                hits.append(f"{path}:{n} ({m.group(1)})")
    return ", ".join(hits)


def _is_known_section(key: str) -> bool:
    return key in {"model", "data", "trainer", "run", "init_args", "class_path", "net"}


def check_yaml_files(args: list[str]) -> None:
    """Every ``--config`` file exists and is valid YAML (jsonargparse would not name it)."""
    for path in config_files(args):
        if not Path(path).is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None


def _finished(checkpoint: dict[str, Any], trainer_cfg: Any) -> bool:
    """Whether ``checkpoint`` is the end of training under the config's limits."""
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps", -1)
    if max_epochs is None and (max_steps is None or max_steps == -1):
        max_epochs = 1000  # Lightning's default
    epochs = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    steps = checkpoint.get("global_step", 0)
    return (max_epochs not in (None, -1) and epochs >= max_epochs) or (
        max_steps not in (None, -1) and steps >= max_steps
    )


class SegbenchCLI(LightningCLI):
    """LightningCLI with segbench's task, data base class, links and run directory."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", SegmentationTask)
        kwargs.setdefault("datamodule_class", SegmentationDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION, "allow_abbrev": False})
        kwargs.setdefault("parser_class", _Parser)
        _Parser.config_files = tuple(config_files(list(args or sys.argv[1:])))
        self._aside: Path | None = None
        self._smoke_dir: Path | None = None
        self._skip_fit = ""
        try:
            super().__init__(args=args, run=run, **kwargs)
        except BaseException:
            self._put_back()
            raise

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
    def run(self) -> RunDir:
        """The run directory; a smoke test (``trainer.fast_dev_run``) writes to a temporary one."""
        if self.cfg.trainer.get("fast_dev_run"):
            if self._smoke_dir is None:
                self._smoke_dir = Path(tempfile.mkdtemp(prefix="segbench-smoke-"))
                log.info(
                    "fast_dev_run: a smoke test; its files go to %s, %s is left alone",
                    self._smoke_dir,
                    RunDir.of(self.cfg.run),
                )
            return RunDir(self._smoke_dir)
        return RunDir.of(self.cfg.run)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def _parse_ckpt_path(self) -> None:
        # "best" / "last" name the files of this run's directory, also in a fresh process
        # (``segbench test --config runs/g/n/config.yaml --ckpt_path best``). Any checkpoint is
        # checked (weights only, complete, a Lightning checkpoint) before Lightning reads it.
        sub = self.config.get("subcommand")
        if sub:
            ckpt = self.config[sub].get("ckpt_path")
            if ckpt in ("best", "last"):
                path = RunDir.of(self.config[sub].run).require_checkpoint(ckpt)
                self.config[sub].ckpt_path = str(path)
            elif ckpt and not Path(ckpt).is_file():
                raise CheckpointError(f"--ckpt_path {ckpt}: no such file")
            if self.config[sub].get("ckpt_path"):
                RunCheckpointIO().load_checkpoint(self.config[sub].ckpt_path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.cfg
        if not cfg.get("ckpt_path"):
            for key in _LINKED:
                if cfg.get(key) is not None:
                    raise ConfigError(
                        f"{key} = {cfg.get(key)!r}: set by the data module (its class list) and "
                        "linked into the task and the network; remove it from the config and "
                        "the command line"
                    )
        mode = choose_wandb_mode(cfg.run.wandb)
        cfg.run.wandb = mode
        if mode in ("online", "offline"):
            os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_CONSOLE", "off")  # keep W&B off our progress bars
        if self.subcommand == "fit":
            self._prepare_run_dir()

    @rank_zero_only
    def _prepare_run_dir(self) -> None:
        run = self.run
        if self.cfg.ckpt_path:
            checkpoint = safe_load(self.cfg.ckpt_path)
            if _finished(checkpoint, self.cfg.trainer):
                fit = run.section("fit")
                self._skip_fit = (
                    f"{run.path} finished training at epoch "
                    f"{checkpoint['loops']['fit_loop']['epoch_progress']['current']['processed']}"
                    f", step {checkpoint['global_step']} (trainer.max_epochs "
                    f"{self.cfg.trainer.get('max_epochs')}, max_steps "
                    f"{self.cfg.trainer.get('max_steps')}): nothing to resume"
                )
                if self.cfg.run.test_after_fit and not fit.get("test"):
                    self._skip_fit += "; testing the best checkpoint, which had not been tested"
            return
        if not run.path.exists():
            return
        if run.has_checkpoints() and not self.cfg.run.overwrite:
            raise SegbenchError(
                f"{run.path} holds checkpoints of an earlier run. Resume it with "
                "--ckpt_path last, start over with --run.overwrite true (it is moved aside and "
                "deleted once the new run trains), or choose another --run.name."
            )
        # A fresh fit starts from an empty directory; the old one goes once training starts.
        self._aside = run.set_aside()
        log.info("moved the earlier files of %s aside to %s", run.path, self._aside)

    def _discard_aside(self, *_: Any) -> None:
        if self._aside is not None:
            RunDir.discard(self._aside)
            self._aside = None

    def _put_back(self) -> None:
        if self._aside is not None and self._aside.exists():
            RunDir.of(self.cfg.run).put_back(self._aside)
            log.info("the new run failed before training; the earlier run is back in place")
            self._aside = None

    def _loggers(self) -> list[Logger]:
        run = self.run
        resume = bool(self.cfg.get("ckpt_path")) or self.subcommand != "fit"
        loggers: list[Logger] = []
        if self.cfg.run.wandb != "disabled":
            cfg = self.cfg.run
            run_id = run.wandb_id(resume=resume) if rank_zero_only.rank == 0 else None
            loggers.append(
                WandbLogger(
                    project=cfg.project,
                    name=cfg.name,
                    group=cfg.group,
                    tags=list(cfg.tags),
                    save_dir=str(run.path),
                    id=run_id,
                    resume="allow",
                    log_model=False,
                )
            )
        loggers.append(
            ResumableCSVLogger(save_dir=str(run.path), name="", version="", resume=resume)
        )
        return loggers

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        run, cfg = self.run, self.cfg.run
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers()
        kwargs["default_root_dir"] = str(run.path)
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        kwargs["plugins"] = [*plugins, RunCheckpointIO()]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        callbacks += [
            RunFiles(
                run,
                self.subcommand or "fit",
                flatten(self.cfg) if self.subcommand == "fit" else None,
                effective_batch=cfg.effective_batch,
            ),
            SegmentationVisualizer(run.path),
            ExactResume(),
            LambdaCallback(on_train_start=self._discard_aside),
        ]
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run.predictions))
        if trainer_cfg.get("enable_checkpointing") is not False:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run.checkpoints,
                    filename="best",
                    monitor="val/mIoU",
                    mode="max",
                    save_top_k=1,
                    save_last=False,
                    auto_insert_metric_name=False,
                )
            )
            callbacks.append(
                LastCheckpoint(
                    run.checkpoint("last"),
                    every_n_steps=cfg.checkpoint_every_n_steps,
                    every_minutes=cfg.checkpoint_every_minutes,
                )
            )
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "fit" and self._skip_fit:
            log.info(self._skip_fit)
            if self.cfg.run.test_after_fit and not self.run.section("fit").get("test"):
                best = self.run.checkpoint("best")
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=str(best))
            self._finish()
            return
        super()._run_subcommand(subcommand)

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
    """Entry point of the ``segbench`` console script.

    A user error ends it with one paragraph on stderr and exit code 1 (see
    :mod:`segbench.errors`); ``SEGBENCH_DEBUG=1`` raises it with its traceback instead.
    """
    configure_logging()
    from_python = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TOOLS:
            importlib.import_module(TOOLS[argv[0]]).main(list(argv[1:]))
            return
        check_yaml_files(argv)
        if from_python:
            # LightningCLI reads (and DDP re-launches) sys.argv, so make it say what was asked.
            with mock.patch.object(sys, "argv", [sys.argv[0], *argv]):
                SegbenchCLI()
        else:
            SegbenchCLI()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as err:
        known = errors.user_error(err)
        if known is None or errors.debug():
            raise
        log.error("segbench: error: %s", errors.user_message(known))
        sys.exit(1)


if __name__ == "__main__":
    main()
