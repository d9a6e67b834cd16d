"""The loggers' side of a run: a CSV logger that survives resuming, and W&B's mode.

**metrics.csv**: one row per step, whatever happened before.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts in a non-empty directory
(Lightning 2.6: "Previous log files in this directory will be deleted"), so resuming a run in its
own directory would wipe its history. It also only knows the columns logged by the current
process, so rewriting the header for a new column would drop the earlier columns. This writer
keeps the file and starts from its header: rows are only ever appended, or re-written with more
columns, never fewer; every rewrite is atomic.

**W&B** never blocks a run: :func:`choose_wandb_mode` never picks a mode that prompts for a key or
waits on a server that does not answer (see ``run.wandb`` in :class:`segbench.config.RunConfig`).

Three modes: ``"new"`` (a fresh ``fit``: a new file), ``"append"`` (``validate`` / ``test`` /
``predict`` on a trained run: its rows are added, the training history is kept) and ``"resume"``
(``fit --ckpt_path``): the rows that the interrupted attempt logged after its checkpoint are
dropped first, those with a step at or past the first step the resumed run logs. Those steps are
trained and logged again, so the file ends with one row per step, as if never interrupted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Literal

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from segbench.errors import ConfigError, SegbenchError
from segbench.rundir import atomic_write_text

log = logging.getLogger("segbench")

CSVMode = Literal["new", "append", "resume"]


def _write_rows(path: str, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, *, mode: CSVMode) -> None:
        super().__init__(log_dir)
        self._drop_from_first_step = mode == "resume"
        self._written_ahead: tuple[dict[str, float], int | None] | None = None
        if os.path.isfile(self.metrics_file_path):
            if mode != "new":
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])
            else:  # a fresh run never continues an old file
                os.remove(self.metrics_file_path)

    def _check_log_dir_exists(self) -> None:
        """Keep what the directory holds (the base class deletes ``metrics.csv``)."""

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


def choose_wandb_mode(requested: str) -> str:
    """The W&B mode to run in; never one that prompts or waits on an unreachable server."""
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
