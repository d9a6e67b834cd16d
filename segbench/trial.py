"""A tuning trial as its run sees it: the Optuna study file that ``segbench tune`` shares with its
fits, and the callback that reports each validation to the trial and ends a run its pruner gives
up on.

``segbench tune`` (:mod:`segbench.study.tune`) keeps its study in a journal file
(``ROOT/GROUP/study.journal``: Optuna's :class:`~optuna.storages.journal.JournalFileBackend`, an
append-only log that many processes, on one machine or on a shared file system under SLURM, read
and write at once) and runs each trial as an ordinary ``segbench fit`` with ``run.study`` (that
file) and ``run.trial`` (the trial's number). :class:`TrialPruning` is then one of the fit's
callbacks.

Optuna is an optional dependency: ``pip install 'segbench[tune]'``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from segbench.errors import ConfigError, DivergenceError, UnavailableError
from segbench.rundir import RunDir

log = logging.getLogger("segbench")

#: The study's user attributes that the fits read: the metric the pruner watches, and the
#: pruner (Optuna keeps no pruner in its storage: each process that loads the study brings one).
METRIC_ATTR = "metric"
PRUNER_ATTR = "pruner"


def import_optuna() -> ModuleType:
    """``optuna``, or an error that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise UnavailableError(
            "segbench tune needs Optuna: pip install 'segbench[tune]' (make venv installs it)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def journal(path: str | Path) -> Any:
    """The study storage in the journal file ``path`` (created on first use)."""
    optuna = import_optuna()
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(spec: dict[str, Any]) -> Any:
    """The Optuna pruner of ``spec`` (``name``: median, hyperband, threshold or none; ``warmup``:
    epochs before a trial may be pruned; ``threshold``; ``direction``)."""
    optuna = import_optuna()
    name, warmup = spec["name"], int(spec.get("warmup", 0))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup + 1)
    if name == "threshold":
        if spec.get("threshold") is None:
            raise ConfigError("--pruner threshold needs --threshold (the worst value to go on)")
        side = "lower" if spec.get("direction", "maximize") == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{side: spec["threshold"]}, n_warmup_steps=warmup)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner {name!r}: median, hyperband, threshold or none")


class TrialPruning(Callback):
    """Report each validation's metric to an Optuna trial; stop the run when its pruner says so.

    The run then ends as any finished run does (its checkpoints, its ``metrics.json``), with
    ``trial.pruned_at_epoch`` recorded, and ``segbench tune`` tells the study it was pruned. A run
    that diverges records ``trial.diverged_at_step``: ``tune`` tells the study it was pruned too,
    so that the sampler learns the region is bad (Optuna's samplers ignore failed trials, and
    would propose the same diverging learning rates again).
    optuna-integration's ``PyTorchLightningPruningCallback`` raises ``TrialPruned`` out of
    ``trainer.fit`` instead (a crashed run, no record) and, under DDP, needs a database storage;
    here rank 0 reports and decides and every process stops with it.

    Args:
        run: the run directory (where the pruning is recorded).
        study_file: the study's journal file (``run.study``).
        number: the trial's number in the study (``run.trial``).
    """

    def __init__(self, run: RunDir, study_file: str | Path, number: int) -> None:
        optuna = import_optuna()
        if not Path(study_file).is_file():
            raise ConfigError(f"run.study {study_file}: no such study file")
        study = optuna.load_study(study_name=None, storage=journal(study_file))
        attrs = study.user_attrs
        study.pruner = make_pruner(attrs[PRUNER_ATTR])  # Optuna stores no pruner: the study's own
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise ConfigError(f"run.trial {number}: no such trial in {study_file}")
        self.trial = optuna.trial.Trial(study, found[0]._trial_id)
        self.metric: str = attrs[METRIC_ATTR]
        self.run, self.study_file, self.number = run, str(study_file), number
        self._optuna = optuna

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.run.update(
                lambda d: d.setdefault("trial", {}).update(
                    study=self.study_file, number=self.number, metric=self.metric
                )
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise ConfigError(f"tuning metric {self.metric}: not logged by this run")
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            with warnings.catch_warnings():
                # a resumed trial reports its epochs again: Optuna keeps the first report
                warnings.simplefilter("ignore", UserWarning)
                self.trial.report(float(value), step=epoch)
            prune = self.trial.should_prune()
        if not trainer.strategy.broadcast(prune):
            return
        trainer.should_stop = True
        log.info(
            "trial %d pruned at epoch %d (%s %.4f)", self.number, epoch, self.metric, float(value)
        )
        if trainer.is_global_zero:
            self.run.update(lambda d: d.setdefault("trial", {}).update(pruned_at_epoch=epoch))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, DivergenceError) and trainer.is_global_zero:
            step = trainer.global_step
            self.run.update(lambda d: d.setdefault("trial", {}).update(diverged_at_step=step))
