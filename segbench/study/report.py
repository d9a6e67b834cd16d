"""``segbench report RUNS... [--out PREFIX] [--metrics ...] [--paper FILE]``: runs side by side.

Reads the ``metrics.json`` of each run (a run directory, a directory of runs, or a glob) and
prints a markdown table: one row per configuration, the config keys that differ between runs as
columns, then the metrics. Runs whose configs differ only by the seed form one row with
``mean ± std`` (sample standard deviation) and the number of seeds ``n``. ``--out PREFIX`` also
writes ``PREFIX.md``, ``PREFIX.csv`` (means, stds and n in separate columns), ``PREFIX.json``
(the same rows as data, with every run's metrics), ``PREFIX.png``
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

import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segbench.errors import MissingFileError
from segbench.options import command_parser
from segbench.rundir import atomic_write_json
from segbench.study.ablation import Claim
from segbench.study.render import (
    bars_size,
    build_table,
    claims_table,
    curves_size,
    draw_bars,
    draw_curves,
    has_curves,
    write_csv,
)
from segbench.study.runs import (
    DEFAULT_METRICS,
    METRICS_FILE,
    find_runs,
    group_runs,
    load_paper,
    load_run,
    rows_as_data,
)
from segbench.study.verdicts import judge_claims
from segbench.tables import markdown_table
from segbench.visualize import save_figure

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
    """Build the report; write the files if ``out`` is given; return the markdown.

    ``claims`` (an ablation's, see :mod:`segbench.study.verdicts`) add a table of verdicts."""
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
                "--metrics %s: no run here logs it, its column stays empty%s",
                m,
                f" (did you mean {' or '.join(near)}?)" if near else "",
            )
    metrics = list(metrics) if metrics else [m for m in DEFAULT_METRICS if m in available]
    ref = load_paper(paper)
    header, cells = build_table(rows, differing, metrics, ref, provenance)
    text = markdown_table(header, cells)
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
        atomic_write_json(
            prefix.with_suffix(".json"),
            {"title": title, "metrics": metrics, "rows": rows_as_data(rows, differing, metrics)},
        )
        if metrics:
            save_figure(lambda fig: draw_bars(fig, rows, metrics[0], title or prefix.name),
                        prefix.with_suffix(".png"), bars_size(rows))  # fmt: skip
        if has_curves(rows):
            save_figure(lambda fig: draw_curves(fig, rows, title=title or prefix.name),
                        prefix.with_name(prefix.name + "_curves.png"), curves_size())  # fmt: skip
    return text


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
        help="write PREFIX.md, PREFIX.csv, PREFIX.json (the rows as data), PREFIX.png and "
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
