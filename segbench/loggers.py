"""The loggers' side of a run: which loggers (``run.loggers``), a CSV logger that survives
resuming, MLflow's run kept across resumes, W&B's mode, and the pictures every logger gets.

**Which**: ``run.loggers`` lists any of ``wandb``, ``tensorboard``, ``mlflow``, ``csv``
(:func:`make_loggers`); the CSV run record is written whatever the list says, since the report's
learning curves and the claims' "flat" column read it. TensorBoard writes its event files into
``<run>/tensorboard/``; a resume purges the steps logged after the checkpoint (as the CSV does).
MLflow logs into a store shared by every run under ``run.root`` (``sqlite:///<root>/mlflow.db``,
artifacts in ``<root>/mlflow-artifacts``; no server) or into ``run.mlflow_uri``: experiment =
the run's group, run name = its name, tags = its tags; a resume continues the same MLflow run
(its id is kept in the run directory, ``mlflow_run_id``).

**Pictures**: :func:`log_validation_pictures` gives every logger that shows images the
validation examples, the confusion matrix and the per-class IoU table.

**metrics.csv**: one row per step, whatever happened before.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts in a non-empty directory
(Lightning 2.6: "Previous log files in this directory will be deleted"), so resuming a run in its
own directory would wipe its history. It also only knows the columns logged by the current
process, so rewriting the header for a new column would drop the earlier columns. This writer
keeps the file and starts from its header: rows are only ever appended, or re-written with more
columns, never fewer; every rewrite is atomic. Every write is made under the run's record lock
(:meth:`segbench.rundir.RunDir.record_lock`) in the columns of the file as it is then, so two
commands writing one run at once (a ``segbench test`` of a run still training) keep each other's
rows and columns; ``hparams.yaml`` is written whole too, by the fit (a ``validate`` or ``test``
leaves the fit's as it is; ``predict`` starts no logger).

**W&B** never blocks a run: :func:`choose_wandb_mode` never picks a mode that prompts for a key or
waits on a server that does not answer (see ``run.wandb`` in :class:`segbench.config.RunConfig`).

Three modes: ``"new"`` (a fresh ``fit``: a new file), ``"append"`` (``validate`` / ``test``
on a trained run: its rows are added, the training history is kept) and ``"resume"``
(``fit --ckpt_path``): the rows that the interrupted attempt logged after its checkpoint are
dropped first, those with a step at or past the first step the resumed run logs. Those steps are
trained and logged again, so the file ends with one row per step, as if never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch import Tensor

from segbench.errors import ConfigError, SegbenchError
from segbench.rundir import RunDir, atomic_paths, atomic_write_text, file_lock
from segbench.visualize import confusion_figure, figure_to_array

log = logging.getLogger("segbench")

CSVMode = Literal["new", "append", "resume"]


def _write_rows(path: str, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _header(path: str) -> list[str]:
    """The columns of the CSV file at ``path`` as they are now (``[]`` if there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, *, mode: CSVMode) -> None:
        super().__init__(log_dir)
        self._run = RunDir(log_dir)
        self._drop_from_first_step = mode == "resume"
        self._keeps_hparams = mode == "append"
        self._written_ahead: tuple[dict[str, float], int | None] | None = None
        if mode == "new" and os.path.isfile(self.metrics_file_path):
            os.remove(self.metrics_file_path)  # a fresh run never continues an old file

    def _check_log_dir_exists(self) -> None:
        """Keep what the directory holds (the base class deletes ``metrics.csv``)."""

    def log_hparams(self, params: dict[str, Any]) -> None:
        """``hparams.yaml`` written whole (Lightning truncates it, then writes: a kill between
        the two left it empty). A ``validate`` or ``test`` (mode ``append``) leaves the
        fit's file as it is: it logs only the task's hyper-parameters, and its file replaced the
        fit's, which also holds the run's whole config (found with a ``segbench validate`` of a
        run beside its fit: 162 lines became 31). It writes one only where the run has none."""
        self.hparams.update(params)
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if self._keeps_hparams and os.path.isfile(path):
            return
        with atomic_paths(path) as (tmp,):
            save_hparams_to_yaml(tmp, self.hparams)

    def save(self) -> None:
        """Append the rows logged since the last save, under the run's record lock.

        Another command may write the same file meanwhile (a ``segbench test`` of a run still
        training): the columns are those of the file as it is now, widened by this writer's new
        keys (the whole file rewritten once, atomically, when they are), so no command's rows
        land under another's columns and no rewrite drops rows or columns another has written.
        Lightning's writer keeps the columns it knew when it started, so one command's new
        column shifted the other's values into the wrong columns, or made its rewrite fail.
        """
        if not self.metrics:
            return
        with self._run.record_lock():
            header = _header(self.metrics_file_path)
            fieldnames = sorted(set(header).union(*self.metrics))
            if header and fieldnames != header:
                self._rewrite_with_new_header(fieldnames)
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=fieldnames)
            if not header:
                writer.writeheader()
            writer.writerows(self.metrics)
            with open(self.metrics_file_path, "a", newline="") as f:
                f.write(buffer.getvalue())  # one write: whole rows, even beside another writer
        self.metrics_keys = fieldnames
        self.metrics = []

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._written_ahead is not None:
            ahead, self._written_ahead = self._written_ahead, None
            if (dict(metrics_dict), step) == ahead:
                return  # already in the file: written before the checkpoint
        if self._drop_from_first_step and step is not None:
            self._drop_from_first_step = False
            self._drop_rows_from(step)
        super().log_metrics(metrics_dict, step)

    def write_ahead(self, metrics_dict: dict[str, float], step: int) -> None:
        """Write a row now that Lightning will log after a checkpoint, and skip it then.

        Lightning logs a step's (and an epoch's) values after the callbacks' hook that saves
        the checkpoint of that state; a kill between the two would lose the row, as the resumed
        run starts logging after it. Written first, the row is on disk whenever its checkpoint is.
        """
        self.log_metrics(metrics_dict, step)
        self.save()
        self._written_ahead = (dict(metrics_dict), step)

    def _drop_rows_from(self, step: int) -> None:
        with self._run.record_lock():
            if not os.path.isfile(self.metrics_file_path):
                return
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                fieldnames = list(reader.fieldnames or [])
                rows = list(reader)
            kept = [r for r in rows if not (r.get("step") and int(float(r["step"])) >= step)]
            if len(kept) < len(rows):
                _write_rows(self.metrics_file_path, fieldnames, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        _write_rows(self.metrics_file_path, fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` is new, appended to, or resumed (see the module)."""

    def __init__(self, *args: object, mode: CSVMode = "new", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._mode: CSVMode = mode

    @property
    def experiment(self) -> _ResumableWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir, mode=self._mode)
        assert isinstance(self._experiment, _ResumableWriter)
        return self._experiment


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


def _unwritable(folder: Path) -> str | None:
    """Why this user cannot write ``folder`` or make it (the nearest existing folder above it
    decides), else ``None``; nothing is made."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def wandb_folders_problem() -> str | None:
    """Why W&B could not write the folders it keeps outside the run, else ``None``: its data
    folder (where it stages the tables and pictures a run logs: a run that cannot write there
    fails at its first validation) and its cache. Both default to the home folder (the XDG
    folders under it)."""
    from wandb import env

    for variable, folder in (
        (env.DATA_DIR, Path(env.get_data_dir())),
        (env.CACHE_DIR, Path(env.get_cache_dir())),
    ):
        why = _unwritable(folder)
        if why is not None:
            return f"its folder {folder} ({variable}): {why}"
    return None


def choose_wandb_mode(requested: str) -> str:
    """The W&B mode to run in; never one that prompts or waits on an unreachable server, or
    that cannot write its folders (:func:`wandb_folders_problem`): ``auto`` then logs without
    W&B, saying so, and ``online`` or ``offline`` fail at once."""
    mode = _wandb_mode(requested)
    if mode == "disabled":
        return mode
    why = wandb_folders_problem()
    if why is None:
        return mode
    advice = (
        "set WANDB_DATA_DIR and WANDB_CACHE_DIR (or XDG_DATA_HOME and XDG_CACHE_HOME) to "
        "folders this user can write"
    )
    if requested == "auto":
        log.warning("W&B cannot write %s: logging without W&B (%s)", why, advice)
        return "disabled"
    raise ConfigError(
        f"run.wandb {requested}: W&B cannot write {why}; {advice}, or use run.wandb disabled"
    )


def _wandb_mode(requested: str) -> str:
    if requested == "disabled":
        return "disabled"
    env = os.environ.get("WANDB_MODE")
    if requested == "auto" and env in ("offline", "disabled"):
        return env
    if requested == "offline":
        return "offline"
    key = wandb_key_available()
    if requested == "auto" and env == "online" and not key:
        # WANDB_MODE=online in the environment asks for online logging where it can be had;
        # without a key wandb itself would fail at start, so auto stays offline, and says why.
        log.warning("W&B: WANDB_MODE=online but no API key: logging offline (run.wandb auto)")
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


LoggerName = Literal["wandb", "tensorboard", "mlflow", "csv"]

#: The package each optional logger needs, and the extra that installs it.
_NEEDS = {"tensorboard": ("tensorboard", "loggers"), "mlflow": ("mlflow", "loggers")}


def check_loggers(names: Sequence[str]) -> None:
    """Fail before anything runs if a listed logger's package is not installed, saying how."""
    for name in names:
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][0]) is None:
            package, extra = _NEEDS[name]
            raise ConfigError(
                f"run.loggers: {name} needs the {package} package: pip install "
                f"'segbench[{extra}]' (make venv installs it), or leave {name} out"
            )


def mlflow_uri(root: str | Path, uri: str | None) -> str:
    """The MLflow tracking URI: ``uri`` if given, else the local store under ``root``."""
    return uri or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _store_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """One process at a time creates or migrates a local SQLite store (``sqlite:///PATH``: a
    lock on ``PATH.lock``); a server (``http://``) needs none."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return file_lock(Path(uri.removeprefix("sqlite:///") + ".lock"))


class RunMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger for one segbench run.

    * A resume continues the run's own MLflow run: its id is written to ``id_file`` when the
      MLflow run is created and read back when ``resume`` is true.
    * The local SQLite store is created (its schema migrated, ~20 s once per store) by one
      process at a time, so runs started together (``segbench sweep --jobs N``, fits started
      by hand beside one another) share it: MLflow creates it when the client is made (in
      Lightning's ``__init__``) and again when the experiment is first used, both under the
      store's lock. (Under it only at the second, two of three fits started together on a new
      store died in its migration: 'duplicate column name', 'expected to match one row'.)
    * Hyperparameters are logged once: MLflow refuses to change a parameter's value, so a
      resume logs only keys new to the run, and a changed value
      (``run.resume_with_changes``) as the tag ``changed.<key>`` = ``old -> new``.
    * Only a ``fit`` ends the MLflow run (``ends_run``): a ``validate`` or ``test``
      logs into the fit's run and leaves its status as it is. (Ending it, one beside a fit still
      training marked the run FINISHED, and it stayed so when the fit was killed; a failed test
      marked a finished run FAILED.)
    """

    def __init__(
        self, *, id_file: Path, resume: bool, ends_run: bool = True, **kwargs: Any
    ) -> None:
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        with _store_lock(kwargs.get("tracking_uri") or ""):
            super().__init__(run_id=run_id, **kwargs)
        self._id_file = id_file
        self._id_written = run_id is not None
        self._ends_run = ends_run

    def finalize(self, status: str = "success") -> None:
        """Set the MLflow run's status (FINISHED, FAILED), for a ``fit`` only (``ends_run``)."""
        if self._ends_run:
            super().finalize(status)

    @property
    def experiment(self) -> Any:
        if not self._initialized:
            with _store_lock(self._tracking_uri or ""):
                client = super().experiment
        else:
            client = super().experiment
        if not self._id_written and self._run_id:
            atomic_write_text(self._id_file, self._run_id)
            self._id_written = True
        return client

    def log_hyperparams(self, params: Any) -> None:
        from mlflow.entities import Param, RunTag

        logged = self.experiment.get_run(self.run_id).data.params
        # Flattened and cut to 250 characters as Lightning's own MLFlowLogger does.
        flat = {k: str(v)[:250] for k, v in _flatten_dict(_convert_params(params)).items()}
        new = [Param(k, v) for k, v in flat.items() if k not in logged]
        changed = [
            RunTag(f"changed.{k}", f"{logged[k]} -> {v}")
            for k, v in flat.items()
            if k in logged and logged[k] != v
        ]
        for i in range(0, max(len(new), len(changed)), 100):  # MLflow's batch limit
            self.experiment.log_batch(
                self.run_id, params=new[i : i + 100], tags=changed[i : i + 100]
            )


def make_loggers(
    names: Sequence[str],
    *,
    run: RunDir,
    run_cfg: Any,
    csv_mode: CSVMode,
    resume: bool,
    purge_step: int | None,
    data: str | None = None,
) -> list[Logger]:
    """The loggers of ``run.loggers`` (see the module), the CSV run record always among them.
    A ``validate`` or ``test`` (``csv_mode`` ``append``) of a run that a fit is
    training now is not logged to W&B, whose run that fit is writing (said in a warning).

    ``run_cfg`` is the run section (:class:`segbench.config.RunConfig`); ``run_cfg.wandb`` is
    the W&B mode already chosen (``disabled``: no W&B logger). ``purge_step``: a resume's first
    step, from which TensorBoard hides what the interrupted attempt logged. ``data``: the data
    module's class name, a W&B tag ``data:<name>`` and MLflow's tag ``segbench.data``: a run
    is tagged with the data it trained on, which a later ``--config`` may have replaced.
    """
    check_loggers(names)
    loggers: list[Logger] = []
    # A validate or test (csv_mode append) logs into the fit's W&B run, under its id;
    # while a fit trains the run and logs there itself, a second process on that id is what W&B
    # says gives unexpected results (online: two writers of one run, the first to end marking it
    # finished; offline: two folders of one id, of which a sync may keep one history).
    training = run.training_by() if csv_mode == "append" else None
    if "wandb" in names and run_cfg.wandb != "disabled" and training:
        log.warning(
            "W&B: %s is being trained by %s, which logs to its W&B run: this command is not "
            "logged to W&B (one process per W&B run); its numbers go to %s and %s",
            run.path,
            training,
            run.metrics_file,
            run.csv,
        )
    elif "wandb" in names and run_cfg.wandb != "disabled":
        wandb_logger = WandbLogger(
            project=run_cfg.project,
            name=run_cfg.name,
            group=run_cfg.group,
            tags=[*run_cfg.tags, *([f"data:{data}"] if data else [])],
            save_dir=str(run.path),
            id=run.wandb_id(resume=resume),
            resume="allow",
            log_model=False,
        )
        # Lightning passes wandb.init an `anonymous` setting (None) that W&B no longer has, and
        # W&B printed "The anonymous setting has no effect" at every command: left out.
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    if "tensorboard" in names:
        loggers.append(
            TensorBoardLogger(
                save_dir=str(run.path),
                name="",
                version=RunDir.TENSORBOARD,
                default_hp_metric=False,
                purge_step=purge_step if resume else None,
            )
        )
    if "mlflow" in names:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        root = Path(run_cfg.root)
        tags = {"segbench.group": run_cfg.group, "segbench.run_dir": str(run.path)}
        tags.update({"segbench.data": data} if data else {})
        tags.update({f"tag.{t}": "true" for t in run_cfg.tags})
        loggers.append(
            RunMLFlowLogger(
                id_file=run.path / RunDir.MLFLOW_ID,
                resume=resume,
                ends_run=csv_mode != "append",  # a validate or test: the fit's run
                experiment_name=run_cfg.group,
                run_name=run_cfg.name,
                tracking_uri=mlflow_uri(root, run_cfg.mlflow_uri),
                artifact_location=None
                if run_cfg.mlflow_uri
                else (root.resolve() / "mlflow-artifacts").as_uri(),
                tags=tags,
                log_model=False,
            )
        )
    loggers.append(ResumableCSVLogger(save_dir=str(run.path), name="", version="", mode=csv_mode))
    return loggers


def log_validation_pictures(
    loggers: Sequence[Logger],
    *,
    step: int,
    examples: np.ndarray,
    masks: tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray]],
    confusion: Tensor | None,
    class_names: list[str],
    ignore_index: int,
    iou: dict[str, float],
) -> None:
    """Give each logger that shows pictures the validation examples figure (``H x W x 3`` uint8),
    the confusion matrix
    (rows normalised) and the per-class IoU table at ``step``; W&B also gets the examples as
    interactive mask overlays. Loggers that show none (CSV) are skipped, and nothing is drawn
    when no logger needs it."""
    shown = [lg for lg in loggers if isinstance(lg, WandbLogger | TensorBoardLogger | MLFlowLogger)]
    if not shown:
        return
    figure = examples
    matrix = None
    if confusion is not None:
        matrix = figure_to_array(confusion_figure(confusion.long().numpy(), class_names, "val"))
    rows = [[name, iou.get(name, float("nan"))] for name in class_names]
    for logger in shown:
        if isinstance(logger, WandbLogger):
            _log_wandb(logger, step, figure, matrix, rows, masks, class_names, ignore_index)
        elif isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            writer.add_image("val/examples", figure, step, dataformats="HWC")
            if matrix is not None:
                writer.add_image("val/confusion", matrix, step, dataformats="HWC")
            table = "| class | IoU |\n|---|---|\n" + "\n".join(
                f"| {name} | {value:.4f} |" for name, value in rows
            )
            writer.add_text("val/per_class_IoU", table, step)
        elif isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            client.log_image(run_id, figure, key="val/examples", step=step)
            if matrix is not None:
                client.log_image(run_id, matrix, key="val/confusion", step=step)
            client.log_table(
                run_id,
                data={
                    "step": [step] * len(rows),
                    "class": [r[0] for r in rows],
                    "IoU": [r[1] for r in rows],
                },
                artifact_file="val/per_class_IoU.json",
            )


def _log_wandb(
    logger: WandbLogger,
    step: int,
    figure: np.ndarray,
    matrix: np.ndarray | None,
    rows: list[list[Any]],
    masks: tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray]],
    class_names: list[str],
    ignore_index: int,
) -> None:
    import wandb

    labels = {i: name for i, name in enumerate(class_names)}
    labels[ignore_index] = "void"
    overlays = [
        wandb.Image(
            image,
            masks={
                "ground_truth": {"mask_data": t.astype(np.int32), "class_labels": labels},
                "predictions": {"mask_data": p.astype(np.int32), "class_labels": labels},
            },
        )
        for image, t, p in zip(*masks, strict=True)
    ]
    data: dict[str, Any] = {
        "val/examples": wandb.Image(figure),
        "val/overlays": overlays,
        "val/per_class_IoU": wandb.Table(columns=["class", "IoU"], data=rows),
        "trainer/global_step": step,
    }
    if matrix is not None:
        data["val/confusion"] = wandb.Image(matrix)
    logger.experiment.log(data)
