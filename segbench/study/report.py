"""``segbench report RUNS... [--out PREFIX] [--metrics ...] [--paper FILE]``: runs side by side.

Reads the ``metrics.json`` of each run (a run directory, a directory of runs, or a glob) and prints
a markdown table: one row per configuration, the config keys that differ between runs as columns,
then the metrics. Runs whose configs differ only by the seed form one row with ``mean ± std``
(sample standard deviation) and the number of seeds ``n``; runs of one seed made again (under other
names) count once, as their mean, with a warning naming them. ``--out PREFIX`` also writes
``PREFIX.json`` (the report as data, with every run's metrics: the markdown is rendered from it),
``PREFIX.md``, ``PREFIX.csv`` (means, stds and n in separate columns), ``PREFIX.png`` (a bar chart
of the first metric with ±std error bars) and ``PREFIX_curves.png`` (validation mIoU and training
loss per epoch, mean ± std over the seeds of each row, from each run's ``metrics.csv``: is a variant
still climbing when training stops?).

Validation metrics are those of the best epoch (by val/mIoU), test metrics those of the best
checkpoint: the test after fit, or for a run fitted without it a later ``segbench test`` of one of
its checkpoints on its own data (a warning says when it is not the best; a test of another run's
checkpoint or of other data is left out, with a warning that says why); numbers that analysis
tools stored after training (``"analysis"`` in metrics.json, e.g. ``gridding/impulse`` from
``segbench gridding --record``) are columns like any metric.
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

import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbench.errors import MissingFileError
from segbench.options import command_parser
from segbench.rundir import atomic_write_files, json_writer, text_writer
from segbench.study.ablation import Claim
from segbench.study.render import (
    bars_size,
    curves_size,
    draw_bars,
    draw_curves,
    has_curves,
    render_report,
    report_csv,
)
from segbench.study.runs import (
    DEFAULT_METRICS,
    METRICS_FILE,
    find_runs,
    group_runs,
    load_paper,
    load_run,
    report_data,
)
from segbench.study.verdicts import judge_claims, judgement_data
from segbench.visualize import drawing_writer

log = logging.getLogger("segbench")


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
    """The markdown report of the runs under ``paths`` (what ``segbench report`` prints),
    rendered from its data (:func:`build_report`, whose arguments it takes)."""
    data = build_report(paths, metrics=metrics, out=out, paper=paper, title=title,
                        provenance=provenance, claims=claims)  # fmt: skip
    return render_report(data, claims)


def build_report(
    paths: Sequence[str],
    *,
    metrics: Sequence[str] | None = None,
    out: str | None = None,
    paper: str | None = None,
    title: str | None = None,
    provenance: Sequence[str] = (),
    claims: Sequence[Claim] = (),
    tuned: dict[str, Any] | None = None,
    fit_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The report of the runs under ``paths`` as data (:func:`segbench.study.runs.report_data`,
    with the verdicts on ``claims``, see :mod:`segbench.study.verdicts`); its files written if
    ``out`` is given. :func:`segbench.study.render.render_report` gives its markdown. ``tuned``:
    how a tuned sweep tuned each variant (:func:`segbench.study.sweep.tuned_data`), kept in the
    data and said in the report. ``fit_args``: the fit arguments a sweep gave its runs after
    ``--``, kept in the data (a tuned sweep compares only with a report of the same)."""
    files = find_runs(paths)
    if not files:
        raise MissingFileError(f"no {METRICS_FILE} under {list(paths)}")
    runs = [load_run(f) for f in files]
    rows, differing = group_runs(runs)
    available = {m for r in runs for m in r.metrics}
    unknown = [m for m in metrics or () if m not in available]
    if unknown:  # a typo would be an empty column, without a word
        for m in unknown:
            near = difflib.get_close_matches(m, sorted(available), n=2)
            log.warning(
                "--metrics %s: no run here has it, its column stays empty%s",
                m,
                f" (did you mean {' or '.join(near)}?)" if near else "",
            )
    metrics = list(metrics) if metrics else [m for m in DEFAULT_METRICS if m in available]
    data = report_data(rows, differing, metrics, paper=load_paper(paper),
                       provenance=provenance, title=title)  # fmt: skip
    data["claims"] = [judgement_data(j) for j in judge_claims(claims, rows)]
    if tuned:
        data["tuned"] = tuned
    if fit_args:
        data["fit_args"] = list(fit_args)
    if data["unfinished"]:
        log.warning("%d of %d runs did not finish training", len(data["unfinished"]), len(runs))
    if out:
        prefix = Path(out)
        heading = f"# {title}\n\n" if title else ""
        # One version of the report (rundir.atomic_write_files): a kill leaves the earlier files
        # or part of these, and a figure this report has not (no metric, no curves) is removed
        # rather than left from an earlier report beside this one's table.
        atomic_write_files({
            prefix.with_suffix(".json"): json_writer(data),
            prefix.with_suffix(".md"): text_writer(heading + render_report(data, claims)),
            prefix.with_suffix(".csv"): text_writer(report_csv(data)),
            prefix.with_suffix(".png"): drawing_writer(
                lambda fig: draw_bars(fig, rows, metrics[0], title or prefix.name), bars_size(rows)
            ) if metrics else None,
            prefix.with_name(prefix.name + "_curves.png"): drawing_writer(
                lambda fig: draw_curves(fig, rows, title=title or prefix.name), curves_size()
            ) if has_curves(rows) else None,
        })  # fmt: skip
    return data


def main(argv: list[str]) -> None:
    parser = command_parser("segbench report", __doc__ or "")
    parser.add_argument(
        "runs", nargs="+", type=str, help="run directories, parents of runs, or globs"
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        type=str,
        help=f"columns (default: {' '.join(DEFAULT_METRICS)}"
        "); any logged key, e.g. test/IoU/boat, params, train_images_per_s",
    )
    parser.add_argument(
        "--out",
        type=str,
        help="write PREFIX.json (the report as data), PREFIX.md, PREFIX.csv, PREFIX.png and "
        "PREFIX_curves.png",
    )
    parser.add_argument(
        "--paper", type=str, help="YAML file of published numbers to show alongside"
    )
    parser.add_argument("--title", type=str, help="title of the written report and plot")
    parser.add_argument(
        "--provenance",
        nargs="+",
        type=str,
        default=[],
        help="provenance columns: the values of each row's runs, e.g. effective_batch "
        "world_size precision versions.torch commit dirty (see metrics.json 'provenance')",
    )
    args = parser.parse_args(argv)
    text = report(args.runs, metrics=args.metrics, out=args.out, paper=args.paper,
                  title=args.title, provenance=args.provenance)  # fmt: skip
    sys.stdout.write(text)
