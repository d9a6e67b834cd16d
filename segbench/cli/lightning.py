"""LightningCLI for ``segbench fit/validate/test/predict``, and :func:`build` (a config's task and
data module as ``segbench fit`` parses them, for tools and notebooks).

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

import contextlib
import io
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import yaml
from jsonargparse import Namespace, class_from_function
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LambdaCallback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from segbench.callbacks import (
    BestCheckpoint,
    ExactResume,
    LastCheckpoint,
    PredictionWriter,
    ResumeWithChanges,
    RunFiles,
    SegmentationVisualizer,
)
from segbench.cli.commands import COMMANDS
from segbench.config import (
    LINKS,
    RunConfig,
    absolute_paths,
    config_changes,
    config_files,
    flatten,
    locate_keys,
)
from segbench.data.base import SegmentationDataModule
from segbench.data.files import IMAGE_SUFFIXES, find_images
from segbench.errors import CheckpointError, ConfigError, SegbenchError, listed
from segbench.loggers import CSVMode, check_loggers, choose_wandb_mode, make_loggers, mlflow_uri
from segbench.numerics import SegbenchTrainer
from segbench.options import plain_choices
from segbench.rundir import (
    RunCheckpointIO,
    RunDir,
    WriterLock,
    atomic_write_text,
)
from segbench.task import DEFAULT_OPTIMIZER, SegmentationTask
from segbench.trial import TrialPruning

log = logging.getLogger("segbench")


def is_rank_zero() -> bool:
    """Whether this is the first process (Lightning keeps the rank on ``rank_zero_only``)."""
    return getattr(rank_zero_only, "rank", 0) == 0


class SaveRunConfig(SaveConfigCallback):
    """Write ``config.yaml`` into the run directory and log it, flat (one key per switch, so every
    switch is a filterable column on W&B), to every logger: once training starts, after a
    resume's checkpoint has loaded, so that a resume refused on the way (another network, a
    missing file) leaves the run's record as it was."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Nothing yet (Lightning's callback saves here): see :meth:`on_train_start`."""

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run = RunDir(trainer.default_root_dir)
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.config, self.parser.dump(self.config, skip_none=False))
            flat = flatten(self.config)
            for logger in trainer.loggers:
                logger.log_hyperparams(flat)
        self.already_saved = trainer.strategy.broadcast(True)


#: Keys the data module sets (through LINKS); a value given by hand would be silently replaced.
_LINKED = tuple(target for _, target in LINKS)

#: Config keys (prefixes) a resume may change: where the files go and how they are logged, how
#: often it validates, checkpoints and logs, evaluation-only settings, the loader's processes
#: (the data order does not depend on them), values the data module links in, and the resume's
#: own arguments. Anything else would mix two recipes in one run.
RESUME_MAY_CHANGE = (
    "ckpt_path", "config", "run.root", "run.group", "run.name",  # the same run, however named
    "run.overwrite", "run.wandb", "run.tags", "run.project", "run.loggers", "run.mlflow_uri",
    "run.test_after_fit", "run.checkpoint_every_", "run.effective_batch",
    "run.resume_with_changes",
    "trainer.callbacks", "trainer.logger", "trainer.enable_", "trainer.log_every_n_steps",
    "trainer.profiler", "trainer.num_sanity_val_steps", "trainer.limit_val_batches",
    "trainer.limit_test_batches", "trainer.limit_predict_batches",
    "trainer.check_val_every_n_epoch", "trainer.val_check_interval", "trainer.default_root_dir",
    "data.init_args.num_workers", "data.init_args.val_batch_size", "data.init_args.render_workers",
    "model.val_protocol.", "model.test_protocol.", "model.boundary_ratio", "model.compile",
    *_LINKED,
)  # fmt: skip
#: Config keys (prefixes) in which a finished run's record may differ from the fit command a sweep
#: would launch for it and still be that command's run: a resume's (RESUME_MAY_CHANGE), less the
#: evaluation settings its metrics were read with, plus the machine it ran on and where its data
#: lay (the same CamVid elsewhere).
_EVALUATION = ("model.val_protocol", "model.test_protocol", "model.boundary_ratio",
               "trainer.limit_val_batches", "trainer.limit_test_batches")  # fmt: skip
FINISHED_MAY_DIFFER = (
    *(key for key in RESUME_MAY_CHANGE if not key.startswith(_EVALUATION)),
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "data.init_args.root", "data.init_args.cache",
)  # fmt: skip
#: Training limits: a resume may change them where the learning-rate schedule has no end.
LIMITS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_")
#: Keys no resume can change, even with ``run.resume_with_changes``: the checkpoint's weights,
#: optimiser state and random generators are made for them.
RESUME_FIXED = (
    "model.net.", "model.optimizer.class_path", "seed_everything", "model.init_from",
    "model.bias_",  # the optimiser's parameter groups
)  # fmt: skip


class _Parser(LightningArgumentParser):
    """jsonargparse's errors, plus where the key at fault was given (the command-line argument,
    or the file and line of a config file's key), under a one-line usage."""

    config_files: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        where = locate_keys(message, type(self).config_files, type(self).argv)
        super().error(plain_choices(message) + (f"\n  found in: {where}" if where else ""), ex)

    def print_usage(self, file: Any = None) -> None:
        # An error's usage: argparse's lists every key (about 90 lines) above the error itself.
        sub = getattr(self, "_subcommands_action", None)
        commands = f"{{{','.join(sub.choices)}}} " if sub is not None else ""
        (file or sys.stdout).write(
            f"usage: {self.prog} {commands}[--config FILE.yaml] [--KEY VALUE ...]\n"
        )


class SegbenchCLI(LightningCLI):
    """LightningCLI with segbench's task, data base class, links and run directory."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # Lightning's, building only the parser of the command asked for (each takes about
        # 0.1 s of every command's start); all four for ``segbench --help`` or a mistyped one.
        # ``segbench --help`` lists each command by what it does here (_SAID, to its first
        # ``(`` or ``:``), not by the first line of Lightning's Trainer method.
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        commands = parser.add_subcommands()
        trainer = self.trainer_class
        trainer = trainer if isinstance(trainer, type) else class_from_function(trainer)
        asked = _Parser.argv[:1] if _Parser.argv[:1] and _Parser.argv[0] in _SAID else _SAID
        for name in asked:
            sub = self._prepare_subcommand_parser(
                trainer, name, **{"description": _SAID[name], **kwargs.get(name, {})}
            )
            self._subcommand_parsers[name] = sub
            commands.add_subcommand(name, sub, help=re.split(r" \(|:", _SAID[name], maxsplit=1)[0])

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", SegmentationTask)
        kwargs.setdefault("trainer_class", SegbenchTrainer)
        kwargs.setdefault("datamodule_class", SegmentationDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "parser_kwargs",
            {"description": _DESCRIPTION, "allow_abbrev": False}
            | {command: {"description": said} for command, said in _SAID.items()},
        )
        kwargs.setdefault("parser_class", _Parser)
        _Parser.argv = tuple(str(a) for a in (args or sys.argv[1:]))
        _Parser.config_files = tuple(config_files(list(_Parser.argv)))
        self._aside: Path | None = None
        self._made_dir: Path | None = None  # the run directory a fresh fit made, until it trains
        self._writer: WriterLock | None = None
        self._reader: WriterLock | None = None  # held to the process's end
        self._smoke_dir: Path | None = None
        self._skip_fit = ""
        self._test_after_skip = False
        self._ckpt_progress: tuple[int, int] | None = None
        self._ckpt_mid_epoch = False
        self._resume_changes: dict[str, list[Any]] = {}
        self._ckpt_classes: list[str] | None = None
        try:
            try:
                super().__init__(args=args, run=run, **kwargs)
            except SIGTERMException:  # a SystemExit with code 0: Lightning's clean stop
                self._exit_if_terminated()
                raise
            except SystemExit:  # exit code 1 after a KeyboardInterrupt (a second Ctrl-C), ...
                self._exit_if_terminated()
                raise
            self._exit_if_terminated()
        except BaseException:
            self._put_back()
            raise
        finally:
            if self._writer is not None:
                self._writer.release()
            if self._reader is not None:
                self._reader.release(remove=True)
            if self._smoke_dir is not None:
                shutil.rmtree(self._smoke_dir, ignore_errors=True)

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # The method's own arguments (--ckpt_path, ...) are headed by its docstring's first
        # paragraph, which predict's cuts off at "Useful to:": headed by the method instead.
        own = set(self._subcommand_method_arguments[subcommand])
        for group in parser._action_groups:
            if any(action.dest in own for action in group._group_actions):
                group.title, group.description = f"arguments of Trainer.{subcommand}", None
        if subcommand == "predict":
            add_predict_arguments(parser)
        return parser

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
                    "fast_dev_run: a smoke test; its files go to %s (removed afterwards), %s is "
                    "left alone",
                    self._smoke_dir,
                    RunDir.of(self.cfg.run),
                )
            return RunDir(self._smoke_dir)
        return RunDir.of(self.cfg.run)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # A data folder or model.init_from given relative to where this command starts is
        # recorded absolute (the run's config.yaml, metrics.json, the loggers' hyper-parameters),
        # so that a validate, test or resume from another folder reads what the run read.
        sub = self.config.get("subcommand")
        absolute_paths(self.config[sub] if sub else self.config)

    def _parse_ckpt_path(self) -> None:
        # "best" / "last" name the files of this run's directory, also in a fresh process
        # (``segbench test --config runs/g/n/config.yaml --ckpt_path best``). Any checkpoint is
        # checked (weights only, complete, a Lightning checkpoint) before Lightning reads it, and
        # a fit's is one of its own run's.
        sub = self.config.get("subcommand")
        if not sub or not self.config[sub].get("ckpt_path"):
            return
        cfg = self.config[sub]
        self._run_at_its_config(cfg.run)
        if sub != "fit":  # before its checkpoint is read: no --run.overwrite moves it meanwhile
            self._reader = RunDir.of(cfg.run).reader()
        if cfg.ckpt_path in ("best", "last"):
            cfg.ckpt_path = str(RunDir.of(cfg.run).require_checkpoint(cfg.ckpt_path))
        elif not Path(cfg.ckpt_path).is_file():
            raise CheckpointError(f"--ckpt_path {cfg.ckpt_path}: no such file")
        checkpoint = RunCheckpointIO().load_checkpoint(cfg.ckpt_path)
        if sub == "fit":
            self._check_own_checkpoint(Path(cfg.ckpt_path), RunDir.of(cfg.run))
        fit_loop = checkpoint["loops"]["fit_loop"]
        self._ckpt_progress = (
            fit_loop["epoch_progress"]["current"]["processed"],
            checkpoint.get("global_step", 0),
        )
        loaders = fit_loop.get("state_dict", {}).get("combined_loader") or [{}]
        self._ckpt_mid_epoch = not loaders[0].get("epoch_finished", True)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        self._ckpt_classes = hparams.get("class_names")
        if sub == "fit":
            # A resume is checked against the run's record (_check_resume), which refuses what
            # differs or, with run.resume_with_changes, applies it: the checkpoint's
            # hyper-parameters must not silently put the old values back first.
            return
        # An evaluation takes the task's hyper-parameters from the checkpoint (what the weights
        # were trained with), as Lightning does, except those it may change (RESUME_MAY_CHANGE:
        # the evaluation settings, model.compile, the data module's links): for them the
        # command line and the config files win.
        kept = {
            key: value
            for key, value in hparams.items()
            if key != "_instantiator" and not f"model.{key}.".startswith(RESUME_MAY_CHANGE)
        }
        overridden = config_changes(
            flatten(kept, "model."), flatten(self.config[sub].model, "model."), ()
        )
        if overridden:
            log.warning(
                "%s: the checkpoint's task settings hold, as its weights were trained with them; "
                "ignored: %s",
                sub,
                "; ".join(
                    f"{k} {new!r} (checkpoint: {old!r})" for k, (old, new) in overridden.items()
                ),
            )
        if kept:
            self.config = self.parser.parse_object({sub: {"model": kept}}, self.config)

    @staticmethod
    def _run_at_its_config(run: Namespace) -> None:
        """A run's ``config.yaml`` names its run by ``run.root`` (relative to where it was made),
        ``run.group`` and ``run.name``: given from another folder, or from a copy of the run, they
        name another directory, whose checkpoints and ``metrics.json`` would be used instead. A
        command with a checkpoint whose config files include a run directory's ``config.yaml``
        works on that directory, unless the command line or a later file sets the run's
        location."""
        files = [Path(f) for f in _Parser.config_files]
        runs = [
            i
            for i, f in enumerate(files)
            if f.name == RunDir.CONFIG and RunDir(f.parent).metrics_file.is_file()
        ]
        if not runs:
            return
        here = files[runs[-1]].parent
        located = ("--run.root", "--run.group", "--run.name")
        if any(a == "--run" or a.startswith(located) for a in _Parser.argv):
            return
        for later in files[runs[-1] + 1 :]:
            with contextlib.suppress(OSError, yaml.YAMLError):
                section = (yaml.safe_load(later.read_text()) or {}).get("run") or {}
                if isinstance(section, dict) and {"root", "group", "name"} & section.keys():
                    return
        named = RunDir.of(run).path
        if named.resolve() == here.resolve():
            return
        log.info(
            "the run is %s, whose config.yaml is given (its run.root/group/name name %s from here)",
            here,
            named,
        )
        run.root, run.group, run.name = str(here.parent.parent), here.parent.name, here.name

    @staticmethod
    def _check_own_checkpoint(path: Path, run: RunDir) -> None:
        """``fit --ckpt_path`` resumes the run that ``run.*`` names, from one of its own
        checkpoints: the run's record, its ``metrics.csv`` and its loggers continue from that
        checkpoint's step, and the resume is checked against that record. A checkpoint of another
        run directory has no record there to continue or to check against (a finished one would
        be reported as trained while the run named does not exist): refused, saying how to
        resume that run or start a new one from its weights."""
        if path.resolve().parent == run.checkpoints.resolve():
            return
        owner = path.resolve().parent.parent
        raise ConfigError(
            f"--ckpt_path {path}: not a checkpoint of {run.path} (the run this fit writes); a "
            f"fit resumes its own run from {run.checkpoints}. To resume the run it belongs to: "
            f"--config {shlex.quote(str(owner / RunDir.CONFIG))} --ckpt_path last; to start a "
            f"new run from its weights: --model.init_from {shlex.quote(str(path))} without "
            "--ckpt_path."
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.cfg
        if self.subcommand in ("validate", "test", "predict") and not cfg.get("ckpt_path"):
            made = (
                f"label maps would be written to {cfg.get('out') or self.run.predictions}"
                if self.subcommand == "predict"
                else f"scores would be recorded in {self.run.metrics_file}"
            )
            raise ConfigError(
                f"segbench {self.subcommand} without --ckpt_path: the network would be "
                f"untrained (model.init_from initialises a fit only) and its {made}. Pass the "
                "weights: --ckpt_path best or last (the run's own checkpoints) or --ckpt_path "
                "PATH (a checkpoint file)."
            )
        for key in _LINKED:
            if cfg.get(key) is not None:
                raise ConfigError(
                    f"{key} = {cfg.get(key)!r}: set by the data module (its class list) and "
                    "linked into the task and the network; remove it from the config and "
                    "the command line"
                )
        # predict logs nothing, so it starts no logger (instantiate_trainer): they rewrote the
        # run's hparams.yaml and opened a W&B run, and failed on a run this user may read but
        # not write (someone else's, a read-only copy) even with --out elsewhere.
        loggers = cfg.run.loggers if self.subcommand != "predict" else []
        check_loggers(loggers)
        mode = choose_wandb_mode(cfg.run.wandb if "wandb" in loggers else "disabled")
        cfg.run.wandb = mode
        if mode in ("online", "offline"):
            os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_CONSOLE", "off")  # keep W&B off our progress bars
        out = cfg.get("out") if self.subcommand == "predict" else None
        if out and Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"--out {out}: a file, not a folder; the predictions need a folder")
        if self.subcommand == "fit":
            self._claim_run_dir()
        if self.subcommand == "fit" and self._ckpt_progress is not None:
            self._check_resume()
            self._check_finished(*self._ckpt_progress)  # on every process: all skip, or none
        elif self.subcommand == "fit":
            self._prepare_run_dir()

    def _check_resume(self) -> None:
        """A resume continues the run as it was configured. The checkpoint brings its optimiser
        state and learning-rate schedule back over whatever the command line says, so a changed
        learning rate would be ignored while ``config.yaml`` recorded it, a changed network would
        not load, other changes would mix two recipes in one run. A resume whose config differs
        from the run's recorded one (``metrics.json`` ``config``) in anything but
        :data:`RESUME_MAY_CHANGE` is refused, naming the keys. Training longer
        (``trainer.max_epochs`` / ``max_steps``) is allowed where the schedule has no end
        (``constant``, ``step``): a ``poly`` or ``cosine`` schedule, laid out for the run's own
        limits, is at learning rate 0 there."""
        recorded = self.run.section("config")
        if not recorded:  # a checkpoint of another run, or a run made before records
            return
        new = flatten(self.cfg)
        schedule = new.get("model.lr_schedule", "poly")
        may_change = RESUME_MAY_CHANGE + (() if schedule in ("poly", "cosine") else LIMITS)
        changes = config_changes(recorded, new, may_change)
        changed = [f"{key} {old!r} -> {value!r}" for key, (old, value) in changes.items()]
        if not changed:
            return
        if self.cfg.run.resume_with_changes:
            fixed = [c for c in changed if c.startswith(RESUME_FIXED)]
            if fixed:
                raise ConfigError(
                    f"resuming {self.run.path}: {'; '.join(fixed)} cannot change on a resume, "
                    "even with run.resume_with_changes (the checkpoint's weights, optimiser state "
                    "and random generators are made for them). Start a new run from its weights: "
                    f"--model.init_from {self.run.checkpoint('last')} --run.name NEW"
                )
            batch = "data.init_args.batch_size"
            if self._ckpt_mid_epoch and batch in recorded and recorded[batch] != new.get(batch):
                raise ConfigError(
                    f"resuming {self.run.path}: {batch} {recorded[batch]} -> {new.get(batch)} "
                    "in the middle of an epoch: the checkpoint counts that epoch's progress in "
                    f"batches of {recorded[batch]}, so the rest of the epoch would be skipped "
                    "or drawn twice. Resume with the batch size it was trained with until the "
                    "epoch ends (the checkpoint written at each epoch's end takes the change), "
                    f"or start a new run from its weights: --model.init_from "
                    f"{self.run.checkpoint('last')} --run.name NEW"
                )
            self._resume_changes = changes
            log.info(
                "resuming %s with changes (run.resume_with_changes): %s. They apply from the "
                "checkpoint's step on; the optimiser's settings and the %s schedule are rebuilt "
                "from the new config.",
                self.run.path,
                "; ".join(changed),
                schedule,
            )
            return
        limits_only = all(c.startswith(LIMITS) for c in changed)
        raise ConfigError(
            f"resuming {self.run.path} with other settings than it was trained with: "
            f"{'; '.join(changed)}. "
            + (
                f"Its {schedule} learning-rate schedule (in the checkpoint) was laid out for the "
                "run's own limits, reaching learning rate 0 at their end: training longer "
                "would run at learning rate 0, stopping sooner would end before it decays. "
                if limits_only
                else "The checkpoint's optimiser state and schedule would win over some of "
                "them while the run's record said otherwise. "
            )
            + "Resume with the run's own settings (--config "
            f"{self.run.config} --ckpt_path last); to continue this run with the changes "
            "applied from here on (the schedule laid out anew, recorded in metrics.json), add "
            "--run.resume_with_changes true; or start a new run from its weights "
            f"(--model.init_from {self.run.checkpoint('last')} --run.name NEW)."
        )

    def _check_finished(self, epochs: int, steps: int) -> None:
        """A resumed run whose checkpoint is the end of training under the config's limits
        trains nothing (it only tests, if the test after fit is missing)."""
        trainer = self.cfg.trainer
        max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
        if max_epochs is None and max_steps in (None, -1):
            max_epochs = 1000  # Lightning's default
        if not (
            (max_epochs not in (None, -1) and epochs >= max_epochs)
            or (max_steps not in (None, -1) and steps >= max_steps)
        ):
            return
        self._skip_fit = (
            f"{self.run.path} finished training at epoch {epochs}, step {steps} "
            f"(trainer.max_epochs {max_epochs}, max_steps {max_steps}): nothing to resume"
        )
        self._test_after_skip = bool(self.cfg.run.test_after_fit) and not self.run.section(
            "fit"
        ).get("test")
        if self._test_after_skip:
            self._skip_fit += "; testing the best checkpoint, which had not been tested"

    def _exit_if_terminated(self) -> None:
        """A fit stopped by a signal (SIGTERM from ``kill``, ``timeout`` or a scheduler; SIGINT
        from Ctrl-C) is not a success: Lightning stops it cleanly (exit code 0), so say so in
        ``metrics.json`` (this attempt's ``provenance.attempts[-1].interrupted``), say where it
        stopped and whether it can resume, and exit 128 + the signal's number (143, 130), which a
        sweep reports as failed. :class:`segbench.callbacks.LastCheckpoint` saved the step it
        stopped at, unless a second Ctrl-C stopped it at once."""
        trainer = getattr(self, "trainer", None)  # neither is set before the config parses
        if getattr(self, "subcommand", None) != "fit" or trainer is None:
            return
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        at_once = last is not None and last.stopped_at_once
        if not (trainer.received_sigterm or at_once):
            return
        name = (last.interrupted_by if last is not None else None) or "SIGTERM"
        if is_rank_zero():  # this attempt's record (fit.finished is already false)
            self.run.update(_mark_attempt("interrupted", name))
        step = trainer.global_step
        if at_once:
            where = "at once, by a second Ctrl-C: the steps since its last checkpoint are lost"
        elif last is None:
            where = f"at step {step} (checkpointing is off: not saved)"
        elif last.saved_step == step:
            where = f"at step {step}, saved there"
        else:  # the signal came after the step's save point, before Lightning's own check
            since = "the last checkpoint" if last.saved_step is None else f"step {last.saved_step}"
            where = (
                f"at step {step}, just after that step's save point, so not saved there: a "
                f"resume trains again from {since}"
            )
        advice = (
            "resume it with the same command and --ckpt_path last"
            if self.run.checkpoint("last").is_file()
            else "it has no checkpoint to resume: the same command starts it again"
        )
        log.error("%s: stopped by %s %s; %s", self.run.path, name, where, advice)
        raise SystemExit(128 + signal.Signals[name].value)

    @rank_zero_only
    def _claim_run_dir(self) -> None:
        """One ``fit`` writes a run directory at a time (fresh, resumed or overwriting): a
        second is refused before it touches anything, naming the process that holds it. (A smoke
        test writes to a temporary directory of its own: nothing to claim.)"""
        if not self.cfg.trainer.get("fast_dev_run"):
            self._writer = self.run.writer()

    @rank_zero_only
    def _prepare_run_dir(self) -> None:
        """A fresh fit starts from an empty directory (an earlier run is refused, or set aside
        with ``--run.overwrite``)."""
        run = self.run
        if not run.path.exists():
            self._made_dir = run.path
            return
        if run.has_checkpoints() and not self.cfg.run.overwrite:
            raise SegbenchError(
                f"{run.path} holds checkpoints of an earlier run. Resume it with "
                "--ckpt_path last, start over with --run.overwrite true (it is moved aside and "
                "deleted once the new run trains), or choose another --run.name."
            )
        # A test, predict or tool reading the run's checkpoints: refused, naming it.
        with run.refuse_readers() if run.has_checkpoints() else contextlib.nullcontext():
            self._aside = run.set_aside()  # deleted once training starts
        log.info("moved the earlier files of %s aside to %s", run.path, self._aside)

    def _discard_aside(self, *_: Any) -> None:
        """Training started: the files set aside go, and the run directory stays."""
        self._made_dir = None
        if self._aside is not None:
            RunDir.discard(self._aside)
            self._aside = None

    def _put_back(self) -> None:
        """A fresh fit failed before training: the directory is as it was before the command
        (its earlier files put back, or the directory it made removed with its logger files)."""
        if self._aside is not None and self._aside.exists():
            RunDir.of(self.cfg.run).put_back(self._aside)
            log.info("the new run failed before training; the directory's earlier files are back")
            self._aside = None
        elif self._made_dir is not None and not RunDir(self._made_dir).has_checkpoints():
            shutil.rmtree(self._made_dir, ignore_errors=True)
            self._made_dir = None

    def _loggers(self) -> list[Logger]:
        resume = bool(self.cfg.get("ckpt_path")) or self.subcommand != "fit"
        mode: CSVMode = "append" if self.subcommand != "fit" else "resume" if resume else "new"
        names = list(self.cfg.run.loggers)
        if not is_rank_zero():  # W&B, TensorBoard and MLflow write from the first process only
            names = [n for n in names if n == "csv"]
        return make_loggers(
            names,
            run=self.run,
            run_cfg=self.cfg.run,
            csv_mode=mode,
            resume=resume,
            purge_step=self._ckpt_progress[1] if self._ckpt_progress else None,
            data=type(self.datamodule).__name__,
        )

    def _check_classes(self) -> None:
        """A checkpoint is evaluated, predicted with or resumed only on the classes it was
        trained on (its hyper-parameters' ``class_names``, in order): on another data set's its
        scores and label maps would name the wrong classes, even when their number is the same.
        (``model.init_from``, a deliberate transfer, is not checked.)"""
        theirs = self._ckpt_classes
        ours = getattr(self.datamodule, "class_names", None)
        if theirs is None or ours is None or list(theirs) == list(ours):
            return
        raise CheckpointError(
            f"{self.cfg.ckpt_path} was trained on other classes than the data module "
            f"({type(self.datamodule).__name__}) has: {_brief(theirs)} in the checkpoint, "
            f"{_brief(ours)} here. Use it with the config of the run that trained it "
            "(--config RUN/config.yaml), or train on this data set from its weights with "
            "--model.init_from."
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._check_classes()  # before any logger or file of the run is made
        if self.subcommand == "predict" and self.cfg.images:
            find_images(self.cfg.images)  # a misspelt --images fails here, not after W&B starts
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        run, cfg = self.run, self.cfg.run
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers() if self.subcommand != "predict" else False
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
                data=flatten(self.cfg.data, "data."),
            ),
            SegmentationVisualizer(run.path),
            ExactResume(),
            LambdaCallback(on_train_start=self._discard_aside),
        ]
        if self._resume_changes:
            callbacks.append(ResumeWithChanges(run, self._resume_changes))
        if self.subcommand == "fit" and (cfg.study is not None or cfg.trial is not None):
            if cfg.study is None or cfg.trial is None:
                raise ConfigError("run.study and run.trial are given together (segbench tune)")
            callbacks.append(TrialPruning(run, cfg.study, cfg.trial))
        if self.subcommand == "predict":
            self.datamodule.predict_images = self.cfg.images
            self.datamodule.predict_max_pixels = self.cfg.max_megapixels * 1e6
            self.datamodule.predict_tile = self.cfg.tile
            self.model.predict_tiles(
                self.cfg.tile, self.cfg.max_megapixels * 1e6, self.cfg.save_probs
            )
            # Lightning cannot tell which files a batch of images held (each loader item is a
            # whole batch); the writer names them from the batch itself.
            warnings.filterwarnings("ignore", "Couldn't infer the batch indices", UserWarning)
            out = self.cfg.out or run.predictions
            writer = PredictionWriter(
                out, overlays=self.cfg.overlays, save_probs=self.cfg.save_probs
            )
            callbacks.append(writer)
        if trainer_cfg.get("enable_checkpointing") is not False:
            # A fit finds checkpoints in the run only when it resumes them (a fresh fit into a
            # run that has some is refused), so Lightning's warning is noise here.
            warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
            callbacks.append(BestCheckpoint(run.checkpoints))
            callbacks.append(
                LastCheckpoint(
                    run.checkpoint("last"),
                    every_n_steps=cfg.checkpoint_every_n_steps,
                    every_minutes=cfg.checkpoint_every_minutes,
                )
            )
        kwargs["callbacks"] = callbacks
        # Lightning's own use of torch's pytree API (lightning/pytorch/utilities/_pytree.py),
        # deprecated in torch 2.14: printed at every fit, nothing a user can act on.
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        # Under DDP Lightning advises sync_dist=True for every value logged at an epoch's end:
        # about 100 lines a run. The evaluation's values are torchmetrics results, already
        # reduced over the processes, and the evaluation's step is the same on each (the
        # training values are logged with sync_dist); the advice on a subclass's own values
        # stays.
        warnings.filterwarnings(
            "ignore", r"It is recommended to use `self\.log\('(val/|test/|step')"
        )
        # Mixed precision keeps the parameters in float32, which the summary's size assumes
        # when it warns that it cannot tell.
        warnings.filterwarnings("ignore", r"Precision \S+-mixed is not supported by the model summ")
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "fit" and self._skip_fit:
            log.info(self._skip_fit)
            if self._test_after_skip:
                best = self.run.checkpoint("best")
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=str(best))
            self._finish()
            return
        if subcommand == "fit" and self._ckpt_progress is not None:
            self.model.resuming = True  # every weight comes from the checkpoint
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
            if isinstance(logger, WandbLogger) and is_rank_zero():
                logger.experiment.finish()
        self._report()

    @rank_zero_only
    def _report(self) -> None:
        metrics = self.trainer.callback_metrics
        shown = {
            k: float(v)
            for k, v in metrics.items()
            if k.split("/")[-1] in {"mIoU", "pixel_acc", "mean_acc", "fwIoU", "bIoU", "ECE"}
        }
        lines = [f"  {k:<16} {v:.4f}" for k, v in sorted(shown.items())]
        lines.append(f"run directory: {self.run_dir.resolve()}")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and os.environ.get("WANDB_MODE") == "offline":
                # Commands to copy: each path quoted for the shell (a space or a quote in it).
                lines.append(
                    f"W&B (offline): {self.run_dir.resolve() / 'wandb'}; upload with "
                    f"`wandb sync {shlex.quote(str(self.run_dir / 'wandb'))}/offline-run-*`"
                )
            elif isinstance(logger, TensorBoardLogger):
                logdir = shlex.quote(str(Path(self.cfg.run.root)))
                lines.append(f"TensorBoard: tensorboard --logdir {logdir}")
            elif isinstance(logger, MLFlowLogger):
                uri = mlflow_uri(self.cfg.run.root, self.cfg.run.mlflow_uri)
                ui = f" (mlflow ui --backend-store-uri {shlex.quote(uri)})"
                lines.append(
                    f"MLflow: experiment {self.cfg.run.group!r}, run {logger.run_id} in {uri}"
                    + ("" if self.cfg.run.mlflow_uri else ui)
                )
        log.info("\n".join(lines))


def add_predict_arguments(parser: LightningArgumentParser) -> None:
    """``segbench predict``'s own options: what to predict and what to write."""
    parser.add_argument(
        "--images",
        nargs="+",
        type=str,
        default=None,
        help="image files, folders (searched recursively) or quoted globs to predict, any size, "
        f"no masks, of the types {' '.join(IMAGE_SUFFIXES)}; default: the data module's test "
        "split",
    )
    parser.add_argument(
        "--out",
        type=Path | None,
        default=None,
        help="folder of the predictions (default: the run directory's predictions/)",
    )
    parser.add_argument(
        "--overlays",
        type=bool,
        default=True,
        help="also write <name>_overlay.png: the image blended with the class colours, a legend",
    )
    parser.add_argument(
        "--save_probs",
        type=bool,
        default=False,
        help="also write <name>_probs.npy: the class probabilities, float16 K x H x W",
    )
    parser.add_argument(
        "--max_megapixels",
        type=float,
        default=40.0,
        help="images larger than this (width x height / 1e6) are skipped and reported before "
        "anything is predicted: predicting a whole image holds ~150-180 bytes a pixel (40 MP: "
        "~7 GB); predict larger ones in tiles (--tile), or raise this where the memory is there",
    )
    parser.add_argument(
        "--tile",
        type=int | None,
        default=None,
        help="predict images over --max_megapixels in tiles of TILE x TILE pixels, each seen "
        "with TILE/4 pixels of context on every side (cut off afterwards), in memory bounded by "
        "the tile (~40 bytes a pixel for the image and its labels, 2 more per class with "
        "--save_probs) instead of skipping them; a network with global context (ParseNet, "
        "GALD) then sees a tile's context, not the image's",
    )
    # Predictions go to files; kept in memory as well, a large folder would fill it.
    parser.set_defaults(return_predictions=False)


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


class _ParseOnly(_BuildOnly):
    """Parse exactly like ``segbench fit``, building nothing."""

    def instantiate_classes(self) -> None:
        pass


def parse_fit(args: list[str]) -> dict[str, Any]:
    """The config ``segbench fit args`` would train, flattened as a run's ``metrics.json`` records
    it (its ``config`` section), from the parser alone: no network, data or trainer is built."""
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = _ParseOnly(args=["fit", *args])
    return flatten(cli.cfg)


def build(
    args: list[str], refused: str | None = None
) -> tuple[SegmentationTask, SegmentationDataModule, Namespace]:
    """Build the task and data module of a config without a trainer, data or logger.

    ``args`` are ``segbench fit`` arguments, e.g. ``["--config", "experiments/quickstart.yaml"]``.
    With ``refused`` (how a study or a sweep checks its fits' arguments once, before launching
    any), arguments the parser refuses are a :class:`ConfigError` that begins with ``refused``
    and ends with the parser's error, which names the key, instead of its exit.
    """
    printed = io.StringIO()
    try:
        # The arguments come from the caller, not sys.argv (which LightningCLI would warn about).
        with mock.patch.object(sys, "argv", sys.argv[:1]), contextlib.ExitStack() as stack:
            if refused is not None:
                stack.enter_context(contextlib.redirect_stderr(printed))
            cli = _BuildOnly(args=["fit", *args])
    except SystemExit as exit_:
        if refused is None:
            raise
        text = printed.getvalue()
        error = text[text.rfind("error:") :] if "error:" in text else text[-2000:]
        raise ConfigError(
            f"{refused}: {error.strip().removeprefix('error: ')} (segbench fit --help: its keys)"
        ) from exit_
    sys.stderr.write(printed.getvalue())  # what else it printed: warnings
    return cli.model, cli.datamodule, cli.cfg


_DESCRIPTION = (
    "segbench: semantic segmentation experiments (FCN, ParseNet, DRN, GALD, DUpsampling).\n"
    "Training and evaluation: segbench {fit,validate,test,predict} --config FILE.yaml.\n"
    "Tools: " + ", ".join(f"segbench {t} --help" for t in COMMANDS) + "."
)


#: What each of Lightning's commands does in segbench, for its ``--help`` (Lightning's own is the
#: Trainer method's docstring, cut at its first line: ``predict`` ended in "Useful to").
_SAID = {
    "fit": "Train a run: the network, data and trainer of the --config files (and --KEY VALUE "
    "changes), into run.root/run.group/run.name; --ckpt_path last resumes it where it stopped "
    "(bit-exactly).",
    "validate": "Score a run's checkpoint on the validation split (--config RUN/config.yaml "
    "--ckpt_path best|last|PATH) with its val_protocol; the result goes into the run's "
    "metrics.json.",
    "test": "Score a run's checkpoint on the test split (--config RUN/config.yaml --ckpt_path "
    "best|last|PATH) with its test_protocol; the result goes into the run's metrics.json.",
    "predict": "Label images with a run's checkpoint (--config RUN/config.yaml --ckpt_path best "
    "--images FILES/FOLDERS/GLOBS, default the test split): a palette PNG of class indices per "
    "image, an overlay, and with --save_probs the class probabilities.",
}


def _brief(names: Any) -> str:
    """``[sky, grass, water, sand, road, ...] (11 classes)``."""
    return f"[{listed(names, 5)}] ({len(names)} classes)"


def _mark_attempt(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A ``metrics.json`` change: ``key = value`` in the latest attempt of the provenance."""

    def change(data: dict[str, Any]) -> None:
        attempts = data.setdefault("provenance", {}).setdefault("attempts", [{}])
        attempts[-1][key] = value

    return change
