"""``segbench report RUNS... [--out PREFIX] [--metrics ...] [--paper FILE]``: runs side by side.

Reads the ``metrics.json`` of each run (a run directory, a directory of runs, or a glob) and
prints a markdown table: one row per configuration, the config keys that differ between runs as
columns, then the metrics. Runs whose configs differ only by the seed form one row with
``mean ± std`` (sample standard deviation) and the number of seeds ``n``. ``--out PREFIX`` also
writes ``PREFIX.md``, ``PREFIX.csv`` (means, stds and n in separate columns), ``PREFIX.png``
(a bar chart of the first metric with ±std error bars) and ``PREFIX_curves.png`` (validation mIoU
and training loss per epoch, mean ± std over the seeds of each row, from each run's
``metrics.csv``: is a variant still climbing when training stops?).

Validation metrics are those of the best epoch (by val/mIoU), test metrics those of the best
checkpoint; numbers that analysis tools stored after training (``"analysis"`` in metrics.json,
e.g. ``gridding/impulse`` from ``segbench gridding --record``) are columns like any metric.
``--paper FILE.yaml`` adds the published numbers next to ours::

    source: FCN, CVPR 2015, table 2 (VOC2011 val)
    key: model.net.init_args.variant        # the config key that identifies a row
    rows:
      32s: {mIoU: 59.4, pixel_acc: 89.1}
      8s: {mIoU: 62.7, pixel_acc: 90.3}

``key: variant`` identifies a row by its label instead (the run name without ``-s<seed>``: a
sweep's variant file name), for ablations whose variants differ in several keys at once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import glob
import json
import logging
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segbench.analysis.claims import Claim, Judgement, claims_table, judge, last_quarter_gain
from segbench.config import LINKS, flatten
from segbench.rundir import RunDir

log = logging.getLogger("segbench")

METRICS_FILE = RunDir.METRICS

#: Config keys that never distinguish variants: names, paths, bookkeeping, and the keys linked
#: from the data module (set in a resumed run's config only; the data keys say the same).
IGNORED_KEYS = re.compile(
    r"^(config|ckpt_path|seed_everything|run\.(name|tags|root|overwrite|test_after_fit|wandb)"
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
    """Runs that share a configuration (up to the seed)."""

    label: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [
            v for r in self.runs if (v := r.metrics.get(metric)) is not None and not math.isnan(v)
        ]

    def mean_std(self, metric: str) -> tuple[float | None, float | None, int]:
        vals = self.values(metric)
        if not vals:
            return None, None, 0
        std = statistics.stdev(vals) if len(vals) > 1 else None
        return statistics.fmean(vals), std, len(vals)


def find_runs(paths: Iterable[str]) -> list[Path]:
    """The ``metrics.json`` files under the given runs, directories or globs, in order."""
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for m in map(Path, matches):
            if m.is_file() and m.name == METRICS_FILE:
                found.append(m)
            elif (m / METRICS_FILE).is_file():
                found.append(m / METRICS_FILE)
            elif m.is_dir():
                found.extend(sorted(m.rglob(METRICS_FILE)))
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def load_run(path: Path) -> Run:
    """A run's config, results and provenance, from its ``metrics.json`` (see :class:`RunDir`)."""
    run = RunDir(path.parent)
    data = run.read()
    return Run(
        path.parent,
        data.get("config") or {},
        run.results(),
        flatten(data.get("provenance") or {}, "provenance."),
        unfinished(data),
    )


def unfinished(data: dict[str, Any]) -> str | None:
    """What became of a run whose training did not finish (``None`` if it did)."""
    fit = data.get("fit")
    if fit is None:
        return None if data.get("test") or data.get("validate") else "never trained"
    if fit.get("finished", True):  # runs recorded before the key was written: not known
        return None
    attempts = (data.get("provenance") or {}).get("attempts") or [{}]
    why = attempts[-1].get("interrupted")
    epochs = fit.get("completed_epochs")
    at = f" after {epochs} epoch{'s' * (epochs != 1)}" if epochs is not None else ""
    return f"interrupted ({why}){at}" if why else f"stopped{at} (killed, failed or running)"


def record_analysis(
    run_dir: str | Path, values: dict[str, float], *, tool: str, checkpoint: str | Path | None
) -> None:
    """Store an analysis tool's numbers in a run (its ``records`` section, with the checkpoint
    measured): :func:`load_run` reads them like logged metrics, so ``segbench report --metrics
    NAME`` shows them as columns. A tool's earlier record is replaced, other tools' kept."""
    run = RunDir(run_dir)
    if not run.metrics_file.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    run.record(tool, values, checkpoint=checkpoint)


def learning_curve(run_dir: Path, key: str = "val/mIoU") -> dict[int, float]:
    """``{epoch: value}`` of one per-epoch key in a run's ``metrics.csv`` (empty if none).

    A resumed run logs the epoch it resumed in again; the last value logged for an epoch wins.
    """
    path = RunDir(run_dir).csv
    curve: dict[int, float] = {}
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
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
    return list(rows.values()), differing


def _short(key: str) -> str:
    return key.replace(".init_args.", ".").removeprefix("model.net.").removeprefix("model.")


def _fmt(mean: float | None, std: float | None, n: int, scale: float) -> str:
    if mean is None:
        return "–"
    if n > 1 and std is not None:
        return f"{mean * scale:.2f} ± {std * scale:.2f}"
    return f"{mean * scale:.2f}"


def _scale(metric: str) -> float:
    """Ratios are shown in percent, like the papers; counts and seconds as they are."""
    return 100.0 if re.search(r"(IoU|acc)", metric) else 1.0


def load_paper(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "key" not in data or "rows" not in data:
        raise ValueError(
            f"{path}: expected a mapping with 'key' and 'rows' (see segbench report --help)"
        )
    return data


def build_table(
    rows: Sequence[Row],
    differing: Sequence[str],
    metrics: Sequence[str],
    paper: dict[str, Any] | None = None,
    provenance: Sequence[str] = (),
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the markdown table (``provenance``: keys shown as the set of values
    of each row's runs)."""
    paper_metrics = sorted({m for r in (paper or {}).get("rows", {}).values() for m in r})
    header = [
        "run",
        *(_short(k) for k in differing),
        *(k.removeprefix("provenance.") for k in provenance),
        "n",
        *(f"{m} (%)" if _scale(m) == 100 else m for m in metrics),
        *(f"paper {m}" for m in paper_metrics),
    ]
    cells = []
    for row in rows:
        n = len(row.runs)
        line = [row.label, *(str(row.config.get(k)) for k in differing)]
        line += [_distinct(row, k) for k in provenance]
        line.append(str(n))
        line += [_fmt(*row.mean_std(m), _scale(m)) for m in metrics]
        if paper:
            key = paper["key"]
            value = row.label if key == "variant" else row.runs[0].config.get(key)
            ref = paper["rows"].get(value) or paper["rows"].get(str(value)) or {}
            line += [str(ref.get(m, "–")) for m in paper_metrics]
        cells.append(line)
    return header, cells


def _distinct(row: Row, key: str) -> str:
    key = key if key.startswith("provenance.") else f"provenance.{key}"
    values = sorted({str(r.provenance.get(key, "–")) for r in row.runs})
    return ", ".join(values)


def markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def write_csv(
    path: Path, rows: Sequence[Row], differing: Sequence[str], metrics: Sequence[str]
) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["run", *differing, "n", *(f"{m}{s}" for m in metrics for s in ("_mean", "_std", "_n"))]
        )
        for row in rows:
            vals = []
            for m in metrics:
                mean, std, n = row.mean_std(m)
                vals += [mean, std, n]
            w.writerow(
                [
                    row.label,
                    *(row.config.get(k) for k in differing),
                    len(row.runs),
                    *("" if v is None else v for v in vals),
                ]
            )


def plot(path: Path, rows: Sequence[Row], metric: str, title: str) -> None:
    import matplotlib.pyplot as plt  # report() has chosen the Agg backend

    scale = _scale(metric)
    stats = [row.mean_std(metric) for row in rows]
    means = [(m or 0.0) * scale for m, _, _ in stats]
    errs = [(s or 0.0) * scale for _, s, _ in stats]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(list(y), means, xerr=errs, capsize=3, color="#4c72b0")
    ax.set_yticks(list(y), [r.label for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%)" if scale == 100 else metric)
    ax.set_title(title)
    lo = min(m - e for m, e in zip(means, errs, strict=True)) if means else 0
    ax.set_xlim(left=max(0.0, lo - 5 * scale / 100))
    for i, (m, (_, _, n)) in enumerate(zip(means, stats, strict=True)):
        ax.text(m, i, f" {m:.1f} (n={n})", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(rows: Sequence[Row], keys: Sequence[str] = CURVE_KEYS, title: str = ""):
    """One panel per key: each row's per-epoch mean over its seeds, ±std shaded (n > 1).

    Returns the matplotlib figure, or None when no run logged any of ``keys``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = {
        (key, i): [c for r in row.runs if (c := learning_curve(r.path, key))]
        for key in keys
        for i, row in enumerate(rows)
    }
    if not any(curves.values()):
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        scale = _scale(key)
        for i, row in enumerate(rows):
            runs = curves[key, i]
            epochs = sorted({e for c in runs for e in c})
            if not epochs:
                continue
            per_epoch = [[c[e] * scale for c in runs if e in c] for e in epochs]
            mean = [statistics.fmean(v) for v in per_epoch]
            (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=f"{row.label} (n={len(runs)})")
            if len(runs) > 1:
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{key} (%)" if scale == 100 else key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_values(rows: Sequence[Row], label: str, metrics: Sequence[str]) -> dict[Any, float]:
    """``{seed: value}`` over the runs of the row labelled ``label``: the mean of ``metrics`` (one
    or more; a run lacking one of them is left out)."""
    values: dict[Any, float] = {}
    for row in rows:
        if row.label == label:
            for run in row.runs:
                vs = [run.metrics.get(m) for m in metrics]
                if all(v is not None and not math.isnan(v) for v in vs):
                    values[run.seed] = sum(vs) / len(vs)  # type: ignore[arg-type]
    return values


def judge_claims(claims: Sequence[Claim], rows: Sequence[Row]) -> list[Judgement]:
    """Each claim's verdict from the rows of its two variants, with their curves' last-quarter
    gains."""

    def gain(label: str) -> float | None:
        runs = [r for row in rows if row.label == label for r in row.runs]
        curves = [c for r in runs if (c := learning_curve(r.path))]
        return last_quarter_gain(curves)

    out = []
    for c in claims:
        j = judge(c, seed_values(rows, c.a, c.metrics), seed_values(rows, c.b, c.metrics),
                  _scale(c.metrics[0]))  # fmt: skip
        out.append(dataclasses.replace(j, gains=(gain(c.a), gain(c.b))))
    return out


def report(
    paths: Sequence[str],
    *,
    metrics: Sequence[str] | None = None,
    out: str | None = None,
    paper: str | None = None,
    title: str | None = None,
    provenance: Sequence[str] = (),
    claims: Sequence[Claim] = (),
) -> str:
    """Build the report; write the files if ``out`` is given; return the markdown.

    ``claims`` (an ablation's, see :mod:`segbench.analysis.claims`) add a table of verdicts."""
    files = find_runs(paths)
    if not files:
        raise FileNotFoundError(f"no {METRICS_FILE} under {list(paths)}")
    runs = [load_run(f) for f in files]
    rows, differing = group_runs(runs)
    available = {m for r in runs for m in r.metrics}
    unknown = [m for m in metrics or () if m not in available]
    if unknown:  # a typo would be an empty column, without a word
        for m in unknown:
            near = difflib.get_close_matches(m, sorted(available), n=2)
            log.warning(
                "--metrics %s: no run here logs it, its column stays empty%s",
                m,
                f" (did you mean {' or '.join(near)}?)" if near else "",
            )
    metrics = list(metrics) if metrics else [m for m in DEFAULT_METRICS if m in available]
    ref = load_paper(paper)
    header, cells = build_table(rows, differing, metrics, ref, provenance)
    text = markdown(header, cells)
    stopped = [r for r in runs if r.unfinished]
    if stopped:  # their numbers are in the table: say which are not final
        text += f"\n**Not finished: {len(stopped)} of {len(runs)} runs** (their numbers above are "
        text += "from where they stopped): " + "; ".join(
            f"{r.name} {r.unfinished}" for r in stopped
        )
        text += ".\n"
        log.warning("%d of %d runs did not finish training", len(stopped), len(runs))
    if ref and ref.get("source"):
        text += f"\nPaper numbers: {ref['source']}.\n"
    if claims:
        text += "\n## Claims\n\n" + claims_table(judge_claims(claims, rows))
    if out:
        prefix = Path(out)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        heading = f"# {title}\n\n" if title else ""
        prefix.with_suffix(".md").write_text(heading + text)
        write_csv(prefix.with_suffix(".csv"), rows, differing, metrics)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if metrics:
            plot(prefix.with_suffix(".png"), rows, metrics[0], title or prefix.name)
        fig = plot_curves(rows, title=title or prefix.name)
        if fig is not None:
            fig.savefig(prefix.with_name(prefix.name + "_curves.png"), dpi=120)
            plt.close(fig)
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="segbench report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run directories, parents of runs, or globs")
    parser.add_argument(
        "--metrics",
        nargs="+",
        help=f"columns (default: {' '.join(DEFAULT_METRICS)}"
        "); any logged key, e.g. test/IoU/boat, params, train_images_per_s",
    )
    parser.add_argument(
        "--out", help="write PREFIX.md, PREFIX.csv, PREFIX.png and PREFIX_curves.png"
    )
    parser.add_argument("--paper", help="YAML file of published numbers to show alongside")
    parser.add_argument("--title", help="title of the written report and plot")
    parser.add_argument(
        "--provenance",
        nargs="+",
        default=[],
        help="provenance columns: the values of each row's runs, e.g. effective_batch "
        "world_size precision versions.torch commit dirty (see metrics.json 'provenance')",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(
        report(
            args.runs,
            metrics=args.metrics,
            out=args.out,
            paper=args.paper,
            title=args.title,
            provenance=args.provenance,
        )
    )
