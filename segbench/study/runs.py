"""Finished (and unfinished) runs as the studies read them: found under folders or globs, loaded
from their ``metrics.json`` (:class:`segbench.rundir.RunDir` owns the files), grouped into rows of
one configuration over seeds, and their learning curves from ``metrics.csv``."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segbench.config import LINKS, flatten
from segbench.errors import DataError
from segbench.rundir import RunDir
from segbench.study.stats import mean_std

log = logging.getLogger("segbench")


METRICS_FILE = RunDir.METRICS


#: Config keys that never distinguish variants: names, paths, bookkeeping, and the keys linked
#: from the data module (set in a resumed run's config only; the data keys say the same).
IGNORED_KEYS = re.compile(
    r"^(config|ckpt_path|seed_everything"
    r"|run\.(name|tags|root|overwrite|test_after_fit|wandb|resume_with_changes|checkpoint_every_\w+|study|trial)"
    r"|trainer\.(logger|callbacks|enable_progress_bar|default_root_dir)|data\.init_args\.root"
    r"|data\.init_args\.num_workers"
    + "".join("|" + re.escape(target) for _, target in LINKS)
    + ")$"
)


DEFAULT_METRICS = ("val/mIoU", "test/mIoU", "test/pixel_acc", "test/mean_acc", "test/fwIoU")


#: The per-epoch keys of the learning-curve figure.
CURVE_KEYS = ("val/mIoU", "train/loss_epoch")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, float | None]
    #: How the run was made, flat (``provenance.world_size``, ``provenance.versions.torch``).
    provenance: dict[str, Any] = field(default_factory=dict)
    #: ``None`` for a finished run, else what became of it (``"interrupted (SIGTERM) at
    #: epoch 3"``, ``"stopped at epoch 3"``, ``"never trained"``).
    unfinished: str | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("run.name", self.path.parent.name))

    @property
    def seed(self) -> Any:
        return self.config.get("seed_everything")


@dataclass
class Row:
    """Runs that share a configuration (up to the seed).

    Its statistics are over seeds, not runs: runs of one seed (the same run made again under
    another name) are one value, their mean, so that a repeated seed neither adds to ``n`` nor
    shrinks the spread (:func:`group_runs` warns of them)."""

    label: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def by_seed(self) -> dict[Any, list[Run]]:
        """The runs of each seed (a run without a recorded seed on its own)."""
        out: dict[Any, list[Run]] = {}
        for r in self.runs:
            out.setdefault(r.path if r.seed is None else r.seed, []).append(r)
        return out

    def seed_values(self, metrics: Sequence[str]) -> dict[Any, float]:
        """``{seed: value}``: a run's value is the mean of ``metrics`` (a run lacking one of
        them is left out), a seed's the mean of its runs'."""
        out: dict[Any, float] = {}
        for seed, runs in self.by_seed().items():
            values = []
            for r in runs:
                vs = [r.metrics.get(m) for m in metrics]
                if all(v is not None and not math.isnan(v) for v in vs):
                    values.append(sum(vs) / len(vs))  # type: ignore[arg-type]
            if values:
                out[seed] = sum(values) / len(values)
        return out

    def curves(self, key: str) -> list[dict[int, float]]:
        """A learning curve of ``key`` per seed (:func:`learning_curve`; of a repeated seed, its
        first run's that has one)."""
        out = []
        for runs in self.by_seed().values():
            found = [c for r in runs if (c := learning_curve(r.path, key))]
            out += found[:1]
        return out

    def values(self, metric: str) -> list[float]:
        """The metric's value of each seed."""
        return list(self.seed_values([metric]).values())

    def mean_std(self, metric: str) -> tuple[float | None, float | None, int]:
        return mean_std(self.values(metric))


def find_runs(paths: Iterable[str]) -> list[Path]:
    """The ``metrics.json`` files under the given runs, directories or globs, in order.

    Below a directory given, hidden folders are not searched: they are segbench's own, chiefly
    the earlier run that ``fit --run.overwrite`` (each new run of a sweep) moves aside to
    ``.NAME.replaced-TIME`` until the new one trains, which a report or ``claims`` read meanwhile
    (or for good, after a kill there) took for a run: the old model's numbers beside the new
    run's, under its name and seed. A hidden folder named on the command line is read."""
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for m in map(Path, matches):
            if m.is_file() and m.name == METRICS_FILE:
                found.append(m)
            elif (m / METRICS_FILE).is_file():
                found.append(m / METRICS_FILE)
            elif m.is_dir():
                found.extend(
                    sorted(
                        f
                        for f in m.rglob(METRICS_FILE)
                        if not any(part.startswith(".") for part in f.relative_to(m).parts)
                    )
                )
    unique: dict[Path, Path] = {}  # each file once, as first named
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def load_run(path: Path) -> Run:
    """A run's config, results and provenance, from its ``metrics.json`` (see :class:`RunDir`)."""
    run = RunDir(path.parent)
    data = run.read()
    for note in run.notes():
        log.warning("%s: %s", run.path, note)
    return Run(
        path.parent,
        data.get("config") or {},
        run.results(),
        flatten(data.get("provenance") or {}, "provenance."),
        unfinished(data, run),
    )


def unfinished(data: dict[str, Any], run: RunDir | None = None) -> str | None:
    """What became of a run whose training did not finish (``None`` if it did): the process
    training it now, when one does (``run`` given); and of a run that finished training whose
    fit is still running its test after fit (``run.test_after_fit``), which reads as finished
    without test numbers otherwise (found live: a report beside a sweep at that point showed
    the row finished, its test cells empty, without a word)."""
    fit = data.get("fit")
    if fit is None and (data.get("test") or data.get("validate")):
        return None
    if fit is not None and fit.get("finished", True):  # recorded before the key was: not known
        testing = (
            fit.get("finished")
            and not fit.get("test")
            and (data.get("config") or {}).get("run.test_after_fit")
            and run is not None
            and run.training_by()
        )
        return f"trained, its test after fit still running, by {testing}" if testing else None
    epochs = (fit or {}).get("completed_epochs")
    at = f" after {epochs} epoch{'s' * (epochs != 1)}" if epochs is not None else ""
    training = run.training_by() if run is not None else None
    if training:
        return f"still training{at}, by {training}"
    if fit is None:
        return "never trained"
    attempts = (data.get("provenance") or {}).get("attempts") or [{}]
    why = attempts[-1].get("interrupted")
    return f"interrupted ({why}){at}" if why else f"stopped{at} (killed, failed or running)"


def learning_curve(run_dir: Path, key: str = "val/mIoU") -> dict[int, float]:
    """``{epoch: value}`` of one per-epoch key in a run's ``metrics.csv`` (empty if none).

    A resumed run logs the epoch it resumed in again; the last value logged for an epoch wins.
    Rows without an epoch are left out: ``segbench validate`` / ``test`` of a checkpoint append
    their numbers so, at the checkpoint's step. Rows at step 0 too: runs evaluated before that
    have them as epoch 0, step 0 (which once replaced the first epoch's validation by the best
    checkpoint's on ``report``'s curves); training logs after at least one step.
    A last line without its end is left out: a run still training (a sweep's) may be appending
    it as the report reads, and its last value cut short read as another number ('0.4' of
    '0.4521').
    """
    path = RunDir(run_dir).csv
    curve: dict[int, float] = {}
    if path.is_file():
        with path.open(newline="") as f:
            text = f.read()
        whole = text[: text.rfind("\n") + 1]
        for row in csv.DictReader(io.StringIO(whole, newline="")):
            if row.get("step") in ("0", "0.0"):
                continue
            if row.get(key) and row.get("epoch"):
                curve[int(row["epoch"])] = float(row[key])
    return curve


def group_runs(runs: Sequence[Run]) -> tuple[list[Row], list[str]]:
    """Group runs by configuration; return the rows and the config keys that differ.

    A key differs when the runs that have it hold more than one value. A key that some runs lack
    (a switch added to segbench after they ran) and the others all set alike does not split them.
    """
    keys = sorted({k for r in runs for k in r.config if not IGNORED_KEYS.match(k)})
    differing = [
        k
        for k in keys
        if len({json.dumps(r.config[k], sort_keys=True) for r in runs if k in r.config}) > 1
    ]
    rows: dict[str, Row] = {}
    for r in runs:
        cfg = {k: r.config.get(k) for k in differing}
        sig = json.dumps(cfg, sort_keys=True, default=str)
        if sig not in rows:
            rows[sig] = Row(re.sub(r"-s\d+$", "", r.name), cfg)
        rows[sig].runs.append(r)
    for row in rows.values():
        for seed, same in row.by_seed().items():
            if len(same) > 1:
                log.warning(
                    "%s: %d runs of seed %s with the same config (%s): counted as one seed, "
                    "the mean of their values", row.label, len(same), seed,
                    ", ".join(str(r.path) for r in same),
                )  # fmt: skip
    return list(rows.values()), differing


def report_scale(metric: str) -> float:
    """Ratios are shown in percent, like the papers; counts and seconds as they are."""
    return 100.0 if re.search(r"(IoU|acc|ECE)", metric) else 1.0


def load_paper(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "key" not in data or "rows" not in data:
        raise DataError(
            f"{path}: expected a mapping with 'key' and 'rows' (see segbench report --help)"
        )
    return data


def report_data(
    rows: Sequence[Row],
    differing: Sequence[str],
    metrics: Sequence[str],
    *,
    paper: dict[str, Any] | None = None,
    provenance: Sequence[str] = (),
    title: str | None = None,
) -> dict[str, Any]:
    """A report as data (``segbench report``'s PREFIX.json, a paper's ``RESULTS.json``): what its
    page is rendered from (:func:`segbench.study.render.render_report`), with every run's metrics.

    Keys: ``title``; ``metrics`` (the columns); ``differing`` (the config keys that tell rows
    apart); ``provenance`` (keys shown as the set of each row's values); ``paper`` (``source``
    and ``metrics`` of the published numbers, or ``None``); ``rows``: each row's ``label``,
    ``config`` (its differing keys), ``n`` (seeds: runs of one seed count once, see :class:`Row`),
    ``metrics`` (``mean``/``std``/``n`` over its seeds, values as logged: fractions for IoU and
    accuracies), ``paper`` (the published numbers
    of its configuration), ``provenance`` and ``runs`` (name, path, seed, whether it finished,
    every logged metric); ``unfinished``: the runs that did not finish, and what became of them.
    ``claims`` (their judgements, :func:`segbench.study.verdicts.judgement_data`) is added by
    the report. The data has been through JSON, so that it renders alike in memory and read
    back."""
    paper_metrics = sorted({m for r in (paper or {}).get("rows", {}).values() for m in r})
    data = {
        "title": title,
        "metrics": list(metrics),
        "differing": list(differing),
        "provenance": list(provenance),
        "paper": {"source": paper.get("source"), "metrics": paper_metrics} if paper else None,
        "rows": [
            {
                "label": row.label,
                "config": {k: row.config.get(k) for k in differing},
                "n": len(row.by_seed()),
                "metrics": {
                    m: dict(zip(("mean", "std", "n"), row.mean_std(m), strict=True))
                    for m in metrics
                },
                "paper": _paper_numbers(row, paper),
                "provenance": {k: _distinct(row, k) for k in provenance},
                "runs": [
                    {
                        "name": run.name,
                        "path": str(run.path),
                        "seed": run.seed,
                        "unfinished": run.unfinished,
                        "metrics": run.metrics,
                    }
                    for run in row.runs
                ],
            }
            for row in rows
        ],
        "unfinished": [
            {"name": r.name, "state": r.unfinished}
            for row in rows
            for r in row.runs
            if r.unfinished
        ],
    }
    return json.loads(json.dumps(data, default=str))


def _paper_numbers(row: Row, paper: dict[str, Any] | None) -> dict[str, Any]:
    """The published numbers of ``row``'s configuration (``paper``: see ``segbench report``)."""
    if not paper:
        return {}
    value = row.label if paper["key"] == "variant" else row.runs[0].config.get(paper["key"])
    return dict(paper["rows"].get(value) or paper["rows"].get(str(value)) or {})


def _distinct(row: Row, key: str) -> str:
    """The values of a provenance key over ``row``'s runs, as one cell."""
    key = key if key.startswith("provenance.") else f"provenance.{key}"
    return ", ".join(sorted({str(r.provenance.get(key, "–")) for r in row.runs}))


def count_runs(data: dict[str, Any]) -> int:
    """How many runs a report's data reports (a seed made twice counts once)."""
    return sum(int(row["n"]) for row in data["rows"])
