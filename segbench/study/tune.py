"""``segbench tune``: a hyperparameter search with Optuna, each trial an ordinary segbench run.

    segbench tune --config experiments/quickstart.yaml \\
        --space experiments/quickstart.tune.yaml --trials 16 --jobs 2

The search space is a YAML file beside the experiment (:class:`SearchSpace`): config keys and
the distribution each is drawn from, and the validation metric to optimise::

    metric: val/mIoU        # a validation metric the runs log
    mode: best              # its best epoch's value, or the last epoch's (last)
    direction: maximize
    space:
      model.optimizer.init_args.lr: {low: 0.005, high: 0.2, log: true}
      model.optimizer.init_args.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}
      model.net.init_args.width: {choices: [0.25, 0.5]}
      data.init_args.batch_size: {low: 8, high: 32, step: 8, type: int}

Each trial is ``segbench fit --config BASE... --KEY VALUE...`` in ``ROOT/GROUP/trial-NNN``
(its config, checkpoints and metrics, exact resume), launched as the sweep launches its fits
(``--jobs N`` here, ``--launcher slurm`` through submitit). The study lives in
``ROOT/GROUP/study.journal`` (Optuna's journal file, which several ``segbench tune`` processes
can share: start the same command on two machines and they split the trials); a killed ``tune``
is continued by the same command, which resumes the trials it left running (one whose run had
ended is told to the study as it ended, not trained again). The sampler (TPE by default)
proposes, seeded with ``--seed`` in a fresh study's first process and from the seed, the trials
held and the worker's slot in a process that continues or shares a study; the pruner (median by
default) stops trials that fall behind, from the metric each validation reports. Trial 0 is the
base config itself (its values of the space's keys), so the untuned recipe is measured under the
same budget.

At the end, in ``ROOT/GROUP/``: ``best.yaml`` (the best trial's values, a config that composes
after the base: ``segbench fit --config BASE --config ROOT/GROUP/best.yaml``, its first lines say
the whole command, which trains it in ``ROOT/GROUP/best``), ``trials.csv``,
``tune.md`` (every trial), and the figures: ``history.png`` (the metric per trial and the
best so far), ``importances.png`` (how much each key mattered, fANOVA) and ``parallel.png`` (each
trial as a line through its values). Tuning reads the validation split only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import shlex
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import yaml
from jsonargparse import Namespace
from tqdm import tqdm  # type: ignore[import-untyped]

from segbench.cli.lightning import FINISHED_MAY_DIFFER, build, parse_fit
from segbench.config import config_changes
from segbench.errors import BusyError, ConfigError, MissingFileError
from segbench.metrics import CLASS_METRICS, STAGE_METRICS
from segbench.options import command_parser
from segbench.rundir import RunDir, WriterLock, atomic_write_files, file_lock, text_writer
from segbench.study.launchers import add_launcher_options, make_launcher
from segbench.study.launchers.base import PlannedRun
from segbench.tables import markdown_table
from segbench.trial import METRIC_ATTR, PRUNER_ATTR, import_optuna, journal, make_pruner
from segbench.visualize import figure_writer, saved_writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")

STUDY_FILE = "study.journal"
#: The validation metrics every run logs, besides ``val/IoU/<class>`` and ``val/bIoU/<class>``.
VAL_METRICS = tuple(f"val/{m}" for m in STAGE_METRICS)
#: A trial's user attribute: the lock file of the ``segbench tune`` process running it.
WORKER_ATTR = "worker"
#: A trial's user attribute: its run diverged (told to the study as pruned).
DIVERGED_ATTR = "diverged"
#: The study's user attribute: what its trials train (:func:`trained_config`).
TRAINS_ATTR = "trains"
#: Config keys (prefixes) in which two commands' trials may differ and be trials of one study:
#: those in which a finished run may differ from its command (FINISHED_MAY_DIFFER: where it is
#: written and logged, the machine, the data's location), less how often it validates (the
#: pruner and a best-epoch objective read each validation); plus the test's settings (trials are
#: not tested) and the keys ``tune`` sets per trial.
_VALIDATES = ("trainer.check_val_every_n_epoch", "trainer.val_check_interval")
STUDY_MAY_DIFFER = (
    *(key for key in FINISHED_MAY_DIFFER if not key.startswith(_VALIDATES)),
    "model.test_protocol.", "trainer.limit_test_batches", "run.study", "run.trial",
)  # fmt: skip
#: How to go on when a study refuses a ``tune`` command (a tuned sweep says it its own way).
TUNE_OTHERWISE = (
    "continue it with the arguments it was made with (the same --config files and fit arguments "
    "after --), or tune into another --group"
)


# -- the search space ---------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """A search space file: the metric, how it is read, and each key's distribution.

    Args:
        path: the file.
        metric: the validation metric to optimise (``val/mIoU``, ``val/IoU/<class>``, ...).
        mode: ``best``: the best validation of the run; ``last``: its last.
        direction: ``maximize`` or ``minimize``.
        params: config key -> an Optuna distribution.
    """

    path: Path
    metric: str
    mode: Literal["best", "last"]
    direction: Literal["maximize", "minimize"]
    params: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"--space {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a mapping of metric, mode, direction and space")
        unknown = sorted(set(data) - {"metric", "mode", "direction", "space"})
        if unknown:
            raise ConfigError(
                f"{path}: unknown keys {', '.join(unknown)} (known: metric, mode, direction, space)"
            )
        metric = str(data.get("metric", "val/mIoU"))
        if not metric.startswith("val/"):
            raise ConfigError(
                f"{path}: metric {metric}: tuning reads validation metrics only (val/...): the "
                "test split is read once, after the recipe is chosen"
            )
        mode = data.get("mode", "best")
        if mode not in ("best", "last"):
            raise ConfigError(f"{path}: mode {mode!r}: best or last")
        direction = data.get("direction", "minimize" if metric == "val/loss" else "maximize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{path}: direction {direction!r}: maximize or minimize")
        space = data.get("space")
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{path}: space: give at least one config key and its distribution")
        params = {str(k): distribution(path, str(k), v) for k, v in space.items()}
        return cls(path, metric, mode, direction, params)

    def describe(self) -> dict[str, Any]:
        """What must not change between two ``tune`` processes of one study."""
        optuna = import_optuna()
        dist = optuna.distributions.distribution_to_json
        return {
            "metric": self.metric,
            "mode": self.mode,
            "direction": self.direction,
            "space": {k: dist(d) for k, d in self.params.items()},
        }


def distribution(path: Path, key: str, spec: Any) -> Any:
    """The Optuna distribution of ``key``'s ``spec``: ``{low, high[, log][, step][, type]}`` or
    ``{choices: [...]}``; errors name the file and the key."""
    optuna = import_optuna()
    where = f"{path}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: give {{low, high}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"{where}: choices is a non-empty list, alone")
        return optuna.distributions.CategoricalDistribution(spec["choices"])
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "type"})
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(
            f"{where}: give low and high (and log, step, type: float or int)"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: type {kind!r}: float or int")
    try:
        low, high = (float(spec["low"]), float(spec["high"]))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: low and high are numbers, got {spec['low']!r}, {spec['high']!r}"
        ) from None
    if not low < high:
        raise ConfigError(
            f"{where}: an empty range: low {spec['low']} is not below high {spec['high']}"
        )
    log_scale = bool(spec.get("log", False))
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {spec['low']}")
    step = spec.get("step")
    if step is not None and log_scale:
        raise ConfigError(f"{where}: step and log together: choose one")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: type int needs whole low and high")
        return optuna.distributions.IntDistribution(
            int(low), int(high), log=log_scale, step=int(step or 1)
        )
    return optuna.distributions.FloatDistribution(
        low, high, log=log_scale, step=None if step is None else float(step)
    )


def nested(params: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": 1}`` -> ``{"a": {"b": {"c": 1}}}``: a config that composes after the base."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def fit_overrides(params: dict[str, Any]) -> list[str]:
    """``--KEY VALUE`` per parameter, values as YAML reads them back."""
    out: list[str] = []
    for key, value in params.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out += [f"--{key}", text]
    return out


# -- checks before the first trial ----------------------------------------------------------------
def check_space(space: SearchSpace, fit_args: list[str]) -> dict[str, Any]:
    """Build the base config with each key set to a value of its range (an unknown key or a
    value the config refuses fails here, named), check that the runs log the metric, and return
    the base config's own values of the keys."""
    optuna = import_optuna()
    probe = {k: _a_value(d, optuna) for k, d in space.params.items()}
    log.info("checking the search space %s against the config", space.path)
    _, datamodule, _ = build(
        [*fit_args, *fit_overrides(probe)], refused=f"{space.path}: a trial's config does not parse"
    )
    names = getattr(datamodule, "class_names", ()) or ()
    classes = [f"val/{m}/{c}" for m in CLASS_METRICS for c in names]
    if space.metric not in (*VAL_METRICS, *classes):
        raise ConfigError(
            f"{space.path}: metric {space.metric} is not logged by these runs (they log "
            f"{', '.join(VAL_METRICS)} and val/{{{','.join(CLASS_METRICS)}}}/<class>: "
            f"{', '.join(names) or 'none'})"
        )
    _, _, base = build(fit_args)
    return {k: _get(base, k) for k in space.params}


def trained_config(fit_args: list[str], space: SearchSpace) -> dict[str, Any]:
    """What the trials of ``segbench fit FIT_ARGS`` train, as their study records it: the config
    the arguments parse to (:func:`~segbench.cli.lightning.parse_fit`), flattened, less the
    space's keys (each trial sets its own) and :data:`STUDY_MAY_DIFFER`."""
    return {
        key: value
        for key, value in parse_fit(fit_args).items()
        if key not in space.params and not key.startswith(STUDY_MAY_DIFFER)
    }


def _a_value(dist: Any, optuna: Any) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[0]
    return dist.low


def _inside(dist: Any, value: Any) -> bool:
    if hasattr(dist, "choices"):
        return value in dist.choices
    return isinstance(value, int | float) and dist.low <= value <= dist.high


def _get(cfg: Namespace, key: str) -> Any:
    try:
        return cfg[key]
    except KeyError:
        return None


# -- the study ----------------------------------------------------------------------------------
def make_sampler(name: str, seed: int, *, trials: int = 0, worker: int = 0) -> Any:
    """The sampler of a ``tune`` process that joins a study holding ``trials`` trials as worker
    ``worker`` (:func:`claim_slot`): seeded with ``seed`` for the first worker of a fresh study
    (a study of one process is reproducible from its seed), else with a seed drawn from the
    three. The seed alone would propose the values of the study's first trials again: in a
    continued study (TPE's first 10 trials are random draws) and in every worker started
    together."""
    optuna = import_optuna()
    if trials or worker:
        digest = hashlib.sha256(f"{seed}/{trials}/{worker}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def claim_slot(group_dir: Path) -> tuple[WriterLock, int]:
    """The lowest worker slot of the study in ``group_dir`` that no live ``tune`` process holds,
    and its lock (held until released or the process ends, however it ends): workers started
    together get slots 0, 1, ..., and a lone or restarted one slot 0. Its lock file stays:
    removing it while another process opens it would let two processes hold one slot."""
    slot = 0
    while True:
        lock = WriterLock(group_dir / f".tune-slot-{slot}", f"tune worker slot {slot}")
        try:
            return lock.acquire(), slot
        except BusyError:
            slot += 1


def join_study(
    group_dir: Path,
    group: str,
    space: SearchSpace,
    *,
    sampler: str,
    seed: int,
    pruner: dict[str, Any],
    trains: dict[str, Any],
    base: dict[str, Any] | None = None,
    otherwise: str = TUNE_OTHERWISE,
) -> tuple[Any, WriterLock]:
    """This process's part in the group's study: a worker slot (:func:`claim_slot`), the study
    (:func:`open_study`, checked against ``trains`` and the space) with a sampler seeded for this
    worker and the trials the study holds (:func:`make_sampler`), and, from the first worker of
    an empty study, ``base`` (the base config's values) queued as its first trial; only the
    first, or two workers started together would each queue it. Returns the study and the
    slot's lock, which the caller releases."""
    slot, worker = claim_slot(group_dir)
    try:
        study = open_study(
            group_dir, group, space, pruner=pruner, trains=trains, otherwise=otherwise
        )
        held = len(study.trials)
        study.sampler = make_sampler(sampler, seed, trials=held, worker=worker)
        if held or worker:
            log.info(
                "%s: worker %d joins a study of %d trial(s): its sampler is seeded from --seed "
                "%d, the trials and the worker",
                group,
                worker,
                held,
                seed,
            )
        if base is not None and not held and not worker:
            inside = {k: v for k, v in base.items() if _inside(space.params[k], v)}
            if len(inside) == len(base):
                study.enqueue_trial(inside)
            else:
                log.warning(
                    "the base config's values %s are not all inside the space: no base trial", base
                )
    except BaseException:
        slot.release()
        raise
    return study, slot


def open_study(
    group_dir: Path,
    group: str,
    space: SearchSpace,
    *,
    pruner: dict[str, Any],
    trains: dict[str, Any],
    otherwise: str = TUNE_OTHERWISE,
) -> Any:
    """The group's study: created with the space, the pruner (the trials' fits read them) and
    what its trials train (``trains``: :func:`trained_config`) recorded, or loaded and checked
    against them (:func:`check_trains`); ``otherwise`` ends a refusal, saying how to go on. Its
    sampler is Optuna's default until the caller sets one (:func:`join_study`)."""
    optuna = import_optuna()
    study = optuna.create_study(
        study_name=group,
        storage=journal(group_dir / STUDY_FILE),
        direction=space.direction,
        load_if_exists=True,
    )
    described = {**space.describe(), "pruner": pruner}
    recorded = study.user_attrs.get("search")
    if recorded is None:
        make_pruner(pruner)  # its options checked before anything is recorded
        study.set_user_attr("search", described)
        study.set_user_attr(METRIC_ATTR, space.metric)
        study.set_user_attr(PRUNER_ATTR, pruner)
        study.set_user_attr(TRAINS_ATTR, trains)
    elif recorded != described:
        changed = [k for k in described if recorded.get(k) != described[k]]
        raise ConfigError(
            f"{group_dir / STUDY_FILE} was made with another search ({', '.join(changed)} "
            f"differ from {space.path}): continue it with the same space, or tune into another "
            "--group"
        )
    elif not check_trains(study, trains, group_dir / STUDY_FILE, otherwise):
        log.warning(
            "%s: made before studies recorded what their trials train; recorded now from this "
            "command, its %d trial(s) taken as trained the same",
            group_dir / STUDY_FILE,
            len(study.trials),
        )
        study.set_user_attr(TRAINS_ATTR, trains)
    return study


def check_trains(study: Any, trains: dict[str, Any], where: Path, otherwise: str) -> bool:
    """Whether ``study`` records what its trials train (a study made before it did has no
    record); a record other than ``trains`` is a :class:`ConfigError` naming the keys and
    ending with ``otherwise``: trials of another budget, seed or data would be compared with
    the study's as one search, and its best trial chosen across both."""
    recorded = study.user_attrs.get(TRAINS_ATTR)
    if recorded is None:
        return False
    changes = config_changes(recorded, trains, ())
    if changes:
        said = "; ".join(
            f"{key} {old!r} (study) vs {new!r} (this command)"
            for key, (old, new) in changes.items()
        )
        raise ConfigError(
            f"{where}: its trials were trained with other settings than this command's trials "
            f"would be: {said}. Trials of both would be compared as one search; {otherwise}."
        )
    return True


def check_study(
    group_dir: Path, fit_args: list[str], space: SearchSpace, otherwise: str = TUNE_OTHERWISE
) -> None:
    """The study in ``group_dir``, if there is one, against the trials ``segbench fit
    FIT_ARGS`` would train (:func:`check_trains`), read only: a tuned sweep checks every
    variant's study before it tunes any."""
    if not (group_dir / STUDY_FILE).is_file():
        return
    optuna = import_optuna()
    study = optuna.load_study(study_name=group_dir.name, storage=journal(group_dir / STUDY_FILE))
    check_trains(study, trained_config(fit_args, space), group_dir / STUDY_FILE, otherwise)


def objective(run: RunDir, space: SearchSpace) -> tuple[str, float | None, int | None]:
    """``(state, value, pruned_at_epoch)`` of a trial's run from its ``metrics.json``: a
    diverged run counts as pruned (at epoch -1), a run that did not finish as failed."""
    if not run.metrics_file.is_file():
        return "fail", None, None
    fit = run.section("fit")
    record = run.read().get("trial", {})
    if record.get("diverged_at_step") is not None:
        return "pruned", None, -1
    pruned = record.get("pruned_at_epoch")
    section = fit.get("best_val" if space.mode == "best" else "val") or {}
    value = section.get(space.metric)
    if pruned is not None:
        return "pruned", value, pruned
    if not fit.get("finished") or value is None or not math.isfinite(value):
        return "fail", value, None
    return "complete", float(value), None


@dataclass
class Tuner:
    """One ``segbench tune`` process: asks the study for trials, runs them, tells the results."""

    study: Any
    space: SearchSpace
    group: str
    root: Path
    fit_args: list[str]
    launcher: Any
    jobs: int
    worker: WriterLock

    @property
    def group_dir(self) -> Path:
        return self.root / self.group

    def run_dir(self, number: int) -> RunDir:
        return RunDir(self.group_dir / f"trial-{number:03d}")

    def command(self, trial: Any, params: dict[str, Any], resume: bool) -> list[str]:
        run = self.run_dir(trial.number)
        cmd = [sys.executable, "-m", "segbench.cli", "fit", *self.fit_args, *fit_overrides(params)]
        cmd += ["--run.group", self.group, "--run.name", run.path.name]
        cmd += ["--run.root", str(self.root), "--run.study", str(self.group_dir / STUDY_FILE)]
        cmd += ["--run.trial", str(trial.number), "--run.test_after_fit", "false"]
        cmd += ["--ckpt_path", "last"] if resume else ["--run.overwrite", "true"]
        return [*cmd, *self.launcher.fit_args]

    def orphans(self) -> list[Any]:
        """Running trials whose ``tune`` process is gone (killed): this one takes them over."""
        optuna = import_optuna()
        found = []
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            lock = t.user_attrs.get(WORKER_ATTR)
            if lock == str(self.worker.path):
                found.append(t)
                continue
            if lock:
                try:
                    WriterLock(Path(lock), "tune worker").acquire().release()
                except BusyError:
                    continue  # another tune process runs it
            found.append(t)
        return found

    def ended(self, frozen: Any) -> bool:
        """Whether the run of a trial left running had ended all the same (complete, pruned or
        diverged: :func:`objective`), trained with this trial's values: its ``tune`` stopped
        between the fit's end and telling the study. Resumed from its ``last.ckpt``, a pruned
        run would train on and be pruned again, epochs later than the study is told."""
        run = self.run_dir(frozen.number)
        if objective(run, self.space)[0] == "fail":
            return False
        data = run.read()
        config = data.get("config") or {}
        return (data.get("trial") or {}).get("number") == frozen.number and all(
            config.get(key) == value for key, value in frozen.params.items()
        )

    def counted(self) -> int:
        optuna = import_optuna()
        s = optuna.trial.TrialState
        states = (s.COMPLETE, s.PRUNED, s.FAIL, s.RUNNING)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def round(self, n_trials: int, progress: Any) -> bool:
        """Run one round of at most ``jobs`` trials; False when the budget is spent."""
        optuna = import_optuna()
        batch: list[tuple[Any, dict[str, Any], bool]] = []
        for frozen in self.orphans():
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            if self.ended(frozen):
                log.info(
                    "trial %d: left running by a stopped tune after its run had ended: told "
                    "now, not trained again",
                    frozen.number,
                )
                self.tell(trial)
                progress.update(1)
                continue
            if len(batch) == self.jobs:
                continue
            trial.set_user_attr(WORKER_ATTR, str(self.worker.path))
            state = self.run_dir(frozen.number).state()
            log.info("trial %d: left running by a stopped tune, resumed", frozen.number)
            batch.append((trial, dict(frozen.params), state == "partial"))
        while len(batch) < self.jobs and self.counted() < n_trials:
            trial = self.study.ask(self.space.params)
            trial.set_user_attr(WORKER_ATTR, str(self.worker.path))
            batch.append((trial, dict(trial.params), False))
        if not batch:
            return False
        planned = [
            PlannedRun(
                self.run_dir(t.number).path.name,
                self.run_dir(t.number).path,
                self.command(t, params, resume),
                resume,
                t.number + 1,
                n_trials,
                self.group,
            )
            for t, params, resume in batch
        ]
        self.launcher.launch(planned)
        for trial, _, _ in batch:
            self.tell(trial)
            progress.update(1)
        return True

    def tell(self, trial: Any) -> None:
        optuna = import_optuna()
        state, value, pruned = objective(self.run_dir(trial.number), self.space)
        s = optuna.trial.TrialState
        if state == "complete":
            self.study.tell(trial, value)
            log.info("trial %d: %s %.4f", trial.number, self.space.metric, value)
        elif state == "pruned":
            if pruned == -1:
                trial.set_user_attr(DIVERGED_ATTR, True)
            self.study.tell(trial, state=s.PRUNED)
            log.info(
                "trial %d: %s",
                trial.number,
                "diverged (told as pruned)" if pruned == -1 else f"pruned at epoch {pruned}",
            )
        else:
            self.study.tell(trial, state=s.FAIL)
            log.warning(
                "trial %d failed (no finished run with %s): see %s",
                trial.number,
                self.space.metric,
                self.run_dir(trial.number).path,
            )


# -- what the study found -------------------------------------------------------------------------
def remove_dead_workers(group_dir: Path, study: Any) -> None:
    """Remove the worker files (``.tune-<host>-<pid>.worker``) of ``tune`` processes that died
    without removing theirs (``kill -9``, a lost node), once no running trial names them: such
    a name is how a live process tells a dead worker's trial to take over (:meth:`Tuner.orphans`).
    A file is removed while this process holds its lock, and only once its holder has written
    its name in it (a worker opens the file, locks it, then writes), so no live worker's is."""
    optuna = import_optuna()
    named = {
        t.user_attrs.get(WORKER_ATTR)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    }
    for path in group_dir.glob(".tune-*.worker"):
        try:
            if str(path) in named or not path.stat().st_size:
                continue  # a running trial's, or a worker's not yet locked (then it names itself)
        except FileNotFoundError:
            continue  # removed by another process meanwhile
        try:
            lock = WriterLock(path, "tune worker").acquire()
        except BusyError:
            continue  # a live worker's
        path.unlink(missing_ok=True)
        lock.release()


def write_results(study: Any, space: SearchSpace, group_dir: Path, fit_args: list[str]) -> None:
    """best.yaml, trials.csv, tune.md and the three figures into ``group_dir``, as one version
    (:func:`segbench.rundir.atomic_write_files`), one process at a time: a kill part-way, or two
    workers ending together, left a tune.md naming another best trial than best.yaml's."""
    with file_lock(group_dir / ".tune-results.lock"):
        atomic_write_files(_results(study, space, group_dir, fit_args))


def _results(
    study: Any, space: SearchSpace, group_dir: Path, fit_args: list[str]
) -> dict[Path, Callable[[BinaryIO], object] | None]:
    """What :func:`write_results` writes: each file's path and its ``write(file)``."""
    optuna = import_optuna()
    s = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    keys = list(space.params)
    rows = []
    for t in trials:
        pruned: Any = t.last_step if t.state == s.PRUNED else None
        if t.user_attrs.get(DIVERGED_ATTR):
            pruned = "diverged"
        values = [t.params.get(k) for k in keys]
        rows.append([t.number, t.state.name.lower(), t.value, *values, pruned])
    header = ["trial", "state", f"{space.metric} ({space.mode})", *keys, "pruned at epoch"]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    writes = {group_dir / "trials.csv": text_writer(buffer.getvalue())}
    complete = [t for t in trials if t.state == s.COMPLETE]
    counts = {
        state: sum(t.state == state for t in trials)
        for state in (s.COMPLETE, s.PRUNED, s.FAIL, s.RUNNING)
    }
    running = counts[s.RUNNING]
    still = (
        f" {running} still running, in another `tune` process or left by a stopped one (the "
        "same command continues it); the last process to end rewrites this page."
        if running
        else ""
    )
    lines = [
        f"# segbench tune: {group_dir.name}",
        "",
        f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: {counts[s.COMPLETE]} complete, "
        f"{counts[s.PRUNED]} pruned "
        f"({sum(bool(t.user_attrs.get(DIVERGED_ATTR)) for t in trials)} of them diverged), "
        f"{counts[s.FAIL]} failed. Objective: {space.direction} {space.metric} ({space.mode} "
        f"epoch), on the validation split. Search space: `{space.path}`.{still}",
        "",
    ]
    if complete:
        best = study.best_trial
        text = yaml.safe_dump(nested(best.params), sort_keys=False)
        # The run goes beside the trials (ROOT/GROUP/best): under the base config's own name it
        # would meet that config's earlier run, and fit refuses a run that has checkpoints.
        where = ["--run.root", str(group_dir.parent), "--run.group", group_dir.name]
        best_yaml = ["--config", str(group_dir / "best.yaml")]
        header_text = (
            f"# The best trial of {group_dir.name} (trial {best.number}: {space.metric} "
            f"{best.value:.4f}, {space.mode} epoch). Compose it after the base config:\n"
            f"#   segbench fit {shlex.join(fit_args)} "
            f"{shlex.join([*best_yaml, *where, '--run.name', 'best'])}\n"
        )
        writes[group_dir / "best.yaml"] = text_writer(header_text + text)
        lines += [
            f"Best: trial {best.number}, {space.metric} **{best.value:.4f}**: "
            + ", ".join(f"`{k}` = {_show(best.params[k])}" for k in keys)
            + " (`best.yaml`). Trial 0 is the base config's own values.",
            "",
        ]
    shown = [["–" if v is None else _show(v) for v in row] for row in rows]
    lines += [markdown_table(header, shown), ""]
    writes[group_dir / "tune.md"] = text_writer("\n".join(lines))
    return {**writes, **_figures(study, group_dir, len(complete), len(keys))}


def best_of(group_dir: Path) -> dict[str, Any] | None:
    """The best trial of the study in ``group_dir`` as data (``trial``, ``value``, ``metric``,
    ``params``, ``trials`` counted, ``config``: its ``best.yaml``), or ``None`` when no trial
    completed."""
    optuna = import_optuna()
    study = optuna.load_study(study_name=group_dir.name, storage=journal(group_dir / STUDY_FILE))
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    return {
        "trial": best.number,
        "value": best.value,
        "metric": study.user_attrs.get(METRIC_ATTR),
        "params": dict(best.params),
        "trials": len(study.trials),
        "config": str(group_dir / "best.yaml"),
    }


def _show(value: Any) -> str:
    return (
        f"{value:.4g}" if isinstance(value, float) and not float(value).is_integer() else str(value)
    )


def _short_key(key: str) -> str:
    """A config key as a figure's label: ``model.optimizer.init_args.lr`` -> ``optimizer.lr``."""
    return key.replace(".init_args.", ".").removeprefix("model.net.").removeprefix("model.")


def draw_history(fig: Figure, study: Any) -> None:
    """Each trial's value (pruned ones at their last validation, as crosses) and the best so
    far, against the trial's number."""
    from matplotlib.ticker import MaxNLocator

    optuna = import_optuna()
    states = optuna.trial.TrialState
    metric = study.user_attrs.get(METRIC_ATTR) or "objective"
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ax = fig.subplots()
    done = [(t.number, t.value) for t in study.trials if t.state == states.COMPLETE]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)])
              for t in study.trials
              if t.state == states.PRUNED and t.intermediate_values]  # fmt: skip
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="#4c72b0", label="trial (completed)")
        best, steps = None, []
        for number, value in done:
            if best is None or (value > best if maximize else value < best):
                best = value
            steps.append((number, best))
        ax.step(*zip(*steps, strict=True), where="post", color="#dd8452",
                label=f"best so far ({'highest' if maximize else 'lowest'})")  # fmt: skip
    if pruned:
        ax.plot(*zip(*pruned, strict=True), "x", color="grey", label="trial (pruned, last value)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: {metric} of each trial")
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def draw_importances(fig: Figure, study: Any) -> None:
    """How much of the metric's variance each key explains (Optuna's fANOVA)."""
    optuna = import_optuna()
    metric = study.user_attrs.get(METRIC_ATTR) or "objective"
    importances = optuna.importance.get_param_importances(study)
    names = [_short_key(k) for k in importances]
    ax = fig.subplots()
    y = list(range(len(names)))
    ax.barh(y, list(importances.values()), color="#4c72b0")
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # the most important on top
    ax.set_xlim(0, max(1.0, *importances.values()) * 1.05)
    for i, v in enumerate(importances.values()):
        ax.annotate(f"{v:.2f}", (v, i), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)  # fmt: skip
    ax.set_xlabel(f"importance for {metric} (fANOVA; they sum to 1)")
    ax.set_title(f"{study.study_name}: importance of each searched key")
    ax.grid(axis="x", alpha=0.3)


def _figures(
    study: Any, group_dir: Path, complete: int, n_keys: int
) -> dict[Path, Callable[[BinaryIO], object]]:
    """The study's figures, drawn now: each one's path and its ``write(file)``."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    optuna = import_optuna()
    writes: dict[Path, Callable[[BinaryIO], object]] = {}
    drawn: dict[str, Any] = {"history.png": draw_history}
    if complete >= 2 and n_keys >= 2:
        drawn["importances.png"] = draw_importances
    for name, draw in drawn.items():
        fig = Figure(figsize=(8, 0.4 * n_keys + 3) if name == "importances.png" else (8, 4.5))
        try:
            draw(fig, study)
        except (ValueError, RuntimeError) as err:  # e.g. importances of constant values
            log.warning("%s: not drawn (%s)", name, err)
            continue
        writes[group_dir / name] = figure_writer(fig)
    if complete < 2:
        return writes
    metric = study.user_attrs.get(METRIC_ATTR) or "objective"
    # Optuna's parallel coordinates, in segbench's style (its plots set ggplot for the process),
    # with the keys' names shortened rather than cut ("model.optimizer.i...").
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # "experimental" warnings of optuna's matplotlib API
        plt.style.use("default")
        try:
            ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target_name=metric)
        except (ValueError, RuntimeError) as err:
            log.warning("parallel.png: not drawn (%s)", err)
            return writes
        params = sorted({k for t in study.trials if t.state.is_finished() for k in t.params})
        labels = [metric, *(_short_key(k) for k in params)]
        if len(ax.get_xticks()) == len(labels):  # optuna's order: the metric, then sorted keys
            ax.set_xticks(ax.get_xticks(), labels, rotation=20, ha="right")
        ax.set_title(f"{study.study_name}: each trial through its values, coloured by {metric}")
        for lines in ax.collections:  # Blues drew the worst trial white, on white
            lines.set_cmap("viridis")
        fig = ax.figure
        fig.set_size_inches(max(8, 2.5 * (len(params) + 1)), 5)
        writes[group_dir / "parallel.png"] = saved_writer(fig)  # saved in optuna's style, in it
        plt.close(fig)
    return writes


# -- the command ----------------------------------------------------------------------------------
def parser() -> Any:
    p = command_parser(
        "segbench tune",
        __doc__ or "",
        usage="%(prog)s --config BASE.yaml [...] --space SPACE.yaml [--trials N] [--jobs N] "
        "[options] [-- FIT ARGUMENTS]   (--help: every option)",
    )
    p.add_argument("--config", nargs="+", required=True, help="the base config(s)", type=str)
    p.add_argument("--space", required=True, help="the search space file (YAML)", type=str)
    p.add_argument(
        "--group", help="the study's name and folder (default: <space file stem>)", type=str
    )
    p.add_argument("--trials", type=int, default=16, help="trials in the study, all processes")
    p.add_argument("--root", default="runs", help="trials go to ROOT/GROUP/trial-NNN", type=str)
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", type=str)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the sampler's seed (of a fresh study's first process; a process that continues or "
        "shares a study draws its own from it)",
    )
    p.add_argument(
        "--pruner",
        choices=("median", "hyperband", "threshold", "none"),
        default="median",
        type=str,
        help="median: stop a trial below the median of the others at the same epoch; "
        "hyperband; threshold: below --threshold; none",
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="epochs every trial trains before it may be pruned"
    )
    p.add_argument("--threshold", type=float, help="--pruner threshold: the worst value kept")
    p.add_argument(
        "--base_trial",
        type=bool,
        default=True,
        help="trial 0 is the base config's own values (the untuned recipe)",
    )
    add_launcher_options(p)
    return p


def main(argv: list[str]) -> None:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = parser().parse_args(argv)
    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    if args.no_wait:
        raise ConfigError("--no_wait: segbench tune waits for each round (it asks for the next)")
    space = SearchSpace.load(args.space)
    for path in args.config:
        if not Path(path).is_file():
            raise MissingFileError(f"--config {path}: no such file")
    group = args.group or Path(args.space).name.split(".")[0] + "-tune"
    fit_args = [a for c in args.config for a in ("--config", c)] + extra
    group_dir = run_study(
        fit_args=fit_args,
        space=space,
        group=group,
        root=Path(args.root),
        trials=args.trials,
        launcher=make_launcher(args, group),
        jobs=args.jobs,
        sampler=args.sampler,
        seed=args.seed,
        pruner=args.pruner,
        warmup=args.warmup,
        threshold=args.threshold,
        base_trial=args.base_trial,
    )
    sys.stdout.write((group_dir / "tune.md").read_text())
    sys.stdout.write(f"\nstudy: {group_dir / STUDY_FILE}; files: {group_dir}\n")


def run_study(
    *,
    fit_args: list[str],
    space: SearchSpace,
    group: str,
    root: Path,
    trials: int,
    launcher: Any,
    jobs: int,
    sampler: str,
    seed: int,
    pruner: str,
    warmup: int,
    threshold: float | None = None,
    base_trial: bool = True,
    otherwise: str = TUNE_OTHERWISE,
) -> Path:
    """Run (or continue) the study ``ROOT/GROUP`` of ``trials`` trials of ``segbench fit
    FIT_ARGS``, and write what it found (:func:`write_results`); returns its folder. The space is
    checked against the config before the first trial, and an existing study against what these
    trials train (:func:`open_study`; ``otherwise`` says how to go on when it is refused).
    ``pruner``, ``warmup``, ``threshold``: as ``segbench tune``'s options."""
    base_values = check_space(space, fit_args)
    group_dir = root / group
    optuna = import_optuna()
    spec = {"name": pruner, "warmup": warmup, "threshold": threshold, "direction": space.direction}
    study, slot = join_study(group_dir, group, space, sampler=sampler, seed=seed, pruner=spec,
                             trains=trained_config(fit_args, space),
                             base=base_values if base_trial else None,
                             otherwise=otherwise)  # fmt: skip
    s = optuna.trial.TrialState
    done = len(study.get_trials(deepcopy=False, states=(s.COMPLETE, s.PRUNED, s.FAIL)))
    try:
        worker = WriterLock(
            group_dir / f".tune-{socket.gethostname()}-{os.getpid()}.worker", "tune worker"
        ).acquire()
        tuner = Tuner(study, space, group, root, fit_args, launcher, jobs, worker)
        try:
            with tqdm(total=trials, initial=min(done, trials), desc=f"{group}: trials") as bar:
                while tuner.round(trials, bar):
                    pass
        finally:
            worker.release()
            worker.path.unlink(missing_ok=True)
            remove_dead_workers(group_dir, study)
    finally:
        slot.release()
    write_results(study, space, group_dir, fit_args)
    return group_dir
