"""Studies rendered for people: markdown tables (runs, claims), a CSV, and figures drawn on a
figure they are given (:func:`segbench.visualize.drawing_writer` saves them)."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbench.study.ablation import Claim
from segbench.study.runs import CURVE_KEYS, Row, count_runs, learning_curve, report_scale
from segbench.study.verdicts import Judgement, judgement_of_data
from segbench.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("segbench")


def _short(key: str) -> str:
    return key.replace(".init_args.", ".").removeprefix("model.net.").removeprefix("model.")


def _fmt(mean: float | None, std: float | None, n: int, scale: float) -> str:
    if mean is None:
        return "–"
    if n > 1 and std is not None:
        return f"{mean * scale:.2f} ± {std * scale:.2f}"
    return f"{mean * scale:.2f}"


def _config_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the runs table of a report's data
    (:func:`segbench.study.runs.report_data`)."""
    differing, provenance, metrics = data["differing"], data["provenance"], data["metrics"]
    paper_metrics = data["paper"]["metrics"] if data["paper"] else []
    header = [
        "run",
        *(_short(k) for k in differing),
        *(k.removeprefix("provenance.") for k in provenance),
        "n",
        *(f"{m} (%)" if report_scale(m) == 100 else m for m in metrics),
        *(f"paper {m}" for m in paper_metrics),
    ]
    cells = []
    for row in data["rows"]:
        # A float to 4 significant digits, as the tuned table shows it: a tuned learning rate
        # in full (0.0978988814188657) made the runs table wider than a page.
        line = [row["label"], *(_config_value(row["config"].get(k)) for k in differing)]
        line += [row["provenance"][k] for k in provenance]
        line.append(str(row["n"]))
        for m in metrics:
            stat = row["metrics"][m]
            line.append(_fmt(stat["mean"], stat["std"], stat["n"], report_scale(m)))
        line += [str(row["paper"].get(m, "–")) for m in paper_metrics]
        cells.append(line)
    return header, cells


def render_report(
    data: dict[str, Any],
    claims: Sequence[Claim] = (),
    links_from: Path | None = None,
    root: Path = Path("."),
) -> str:
    """A report's markdown, from its data: the runs table, the runs that did not finish, the
    paper's source, and the verdicts on ``claims`` (those the data judged); the files of the
    repository ``root`` that the claims' paper cells name are linked relative to the folder
    ``links_from`` of the file the report goes into (:func:`claims_table`)."""
    text = markdown_table(*build_table(data))
    stopped = data["unfinished"]
    if stopped:  # their numbers are in the table: say which are not final
        text += f"\n**Not finished: {len(stopped)} of {count_runs(data)} runs** (their numbers "
        text += "above are from where they stopped): "
        text += "; ".join(f"{r['name']} {r['state']}" for r in stopped) + ".\n"
    if data["paper"] and data["paper"]["source"]:
        text += f"\nPaper numbers: {data['paper']['source']}.\n"
    tuned = data.get("tuned")
    if tuned:
        text += "\n" + tuned_section(tuned)
    by_id = {c.id: c for c in claims}
    judged = [judgement_of_data(by_id[e["id"]], e) for e in data.get("claims", [])
              if e["id"] in by_id]  # fmt: skip
    if judged:
        heading = "Claims, each variant at its own tuned setting" if tuned else "Claims"
        text += f"\n## {heading}\n\n" + claims_table(judged, links_from=links_from, root=root)
    if tuned and judged:
        text += "\n" + before_after_table(judged, tuned)
    return text


def tuned_section(tuned: dict[str, Any]) -> str:
    """A tuned sweep's tuning (:func:`segbench.study.sweep.tuned_data`): how, and the setting
    each variant got."""
    variants = tuned["variants"]
    keys = list(dict.fromkeys(k for v in variants.values() for k in v.get("params", {})))
    metric = next((v["metric"] for v in variants.values() if v.get("metric")), "val")
    budget = f" with `{' '.join(tuned['fit_args'])}`" if tuned.get("fit_args") else ""
    text = (
        "## Tuned: each variant at its own setting\n\n"
        f"Each variant was tuned on the validation split before the claim seeds were trained: "
        f"`segbench tune`, {tuned['trials']} trials per variant{budget} at seed "
        f"{tuned['seed']} (trial 0 is the recipe's own values), space `{tuned['space']}`; the "
        "claim runs train the recipe at the best trial's values and read the test split once, "
        "after.\n\n"
    )
    header = ["variant", *(_short(k) for k in keys), f"{metric} (best trial)", "trial", "trials"]
    rows = [
        [name, *(_value(v.get("params", {}).get(k)) for k in keys),
         f"{v['value']:.4f}" if v.get("value") is not None else "–",
         str(v.get("trial", "–")), str(v.get("trials", "–"))]
        for name, v in variants.items()
    ]  # fmt: skip
    return text + markdown_table(header, rows)


def _value(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def before_after_rows(judged: Sequence[Judgement], tuned: dict[str, Any]) -> list[list[str]]:
    """A row per claim of a tuned sweep: its verdict at the recipe's shared setting (as
    published for ``tuned['shared_group']``), then with each variant tuned."""
    shared = {e["id"]: e for e in tuned.get("shared_claims", [])}
    rows = []
    for j in judged:
        before = shared.get(j.claim.id)
        rows.append([
            j.claim.id,
            _interval(judgement_of_data(j.claim, before)) if before else "not published",
            f"**{before['verdict']}**" if before else "–",
            _interval(j),
            f"**{j.verdict}**",
        ])  # fmt: skip
    return rows


#: The columns of :func:`before_after_rows`.
BEFORE_AFTER = ["claim", "a - b, shared setting", "verdict", "a - b, tuned", "verdict"]


def before_after_table(judged: Sequence[Judgement], tuned: dict[str, Any]) -> str:
    """Each claim at the recipe's shared setting beside the same claim with each variant
    tuned (:func:`before_after_rows`)."""
    group, extra = tuned["shared_group"], " ".join(tuned.get("shared_fit_args") or ())
    if extra:
        said = (
            f"The runs were given `{extra}` after `--`: the shared setting's verdicts are those "
            f"of the sweep `{group}` given the same, reported in `{tuned['shared_source']}`"
            + ("" if tuned.get("shared_claims") else
               f" (there is none: `segbench sweep --ablation {tuned.get('ablation', group)} "
               f"-- {extra}` makes it)")
        )  # fmt: skip
    else:
        said = (
            f"The shared setting's verdicts are those of the sweep `{group}` as published in "
            "this page's data"
        )
    return f"## Before and after tuning\n\n{said}.\n\n" + markdown_table(
        BEFORE_AFTER, before_after_rows(judged, tuned)
    )


def report_csv(data: dict[str, Any]) -> str:
    """The runs table of a report's data as CSV: mean, std and n of each metric in columns of
    their own (values as logged)."""
    stats = [f"{m}_{s}" for m in data["metrics"] for s in ("mean", "std", "n")]
    lines = [["run", *data["differing"], "n", *stats]]
    for row in data["rows"]:
        values = [row["metrics"][m][s] for m in data["metrics"] for s in ("mean", "std", "n")]
        lines.append(
            [row["label"], *(row["config"].get(k) for k in data["differing"]), row["n"]]
            + ["" if v is None else v for v in values]
        )
    text = io.StringIO()
    csv.writer(text).writerows(lines)
    return text.getvalue()


#: The most rows :func:`bars_size` gives room of their own; more share it (smaller labels).
MAX_BAR_ROWS = 40


def bars_size(rows: Sequence[Row]) -> tuple[float, float]:
    """The figure size (inches) of :func:`draw_bars` for these rows: a row a third of an inch
    up to :data:`MAX_BAR_ROWS` rows, no taller beyond."""
    return 7, 0.35 * min(len(rows), MAX_BAR_ROWS) + 1.5


def draw_bars(fig: Figure, rows: Sequence[Row], metric: str, title: str) -> None:
    """A point per row: the mean of ``metric`` over its seeds, with ±std error bars and its
    value and ``n`` written past the error bar (a dot, not a bar: the axis is zoomed on the
    values, and a bar's length from a cut axis would overstate the differences)."""
    scale = report_scale(metric)
    stats = [row.mean_std(metric) for row in rows]
    means = [(m or 0.0) * scale for m, _, _ in stats]
    errs = [(s or 0.0) * scale for _, s, _ in stats]
    ax = fig.subplots()
    y = list(range(len(rows)))
    ax.errorbar(means, y, xerr=errs, fmt="o", ms=5, capsize=3, color="#4c72b0", ecolor="black",
                elinewidth=1)  # fmt: skip
    fontsize = 9 if len(rows) <= 20 else 7
    ax.set_yticks(y, [r.label for r in rows], fontsize=fontsize)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    ax.set_xlabel(f"{metric} (%)" if scale == 100 else metric)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if means:
        lo = min(m - e for m, e in zip(means, errs, strict=True))
        hi = max(m + e for m, e in zip(means, errs, strict=True))
        pad = max(hi - lo, 1e-3 * scale)
        # room on the right for the value written past each error bar
        ax.set_xlim(max(0.0, lo - 0.1 * pad) if lo >= 0 else lo - 0.1 * pad, hi + 0.45 * pad)
    for i, (m, e, (_, _, n)) in enumerate(zip(means, errs, stats, strict=True)):
        ax.annotate(f"{m:.1f} (n={n})", (m + e, i), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=min(8, fontsize))  # fmt: skip


def curves_size(keys: Sequence[str] = CURVE_KEYS) -> tuple[float, float]:
    """The figure size (inches) of :func:`draw_curves` with these keys."""
    return 5.5 * len(keys), 4


def has_curves(rows: Sequence[Row], keys: Sequence[str] = CURVE_KEYS) -> bool:
    """Whether any run of ``rows`` logged a per-epoch value of ``keys``."""
    return any(learning_curve(r.path, key) for key in keys for row in rows for r in row.runs)


def draw_curves(
    fig: Figure, rows: Sequence[Row], keys: Sequence[str] = CURVE_KEYS, title: str = ""
) -> None:
    """One panel per key: each row's per-epoch mean over its seeds, ±std shaded (n > 1)."""
    from matplotlib.ticker import MaxNLocator

    curves = {(key, i): row.curves(key) for key in keys for i, row in enumerate(rows)}
    axes = fig.subplots(1, len(keys), squeeze=False)
    styles = ("-", "--", ":", "-.")  # past the 10 colours of the cycle, the next line style
    for ax, key in zip(axes[0], keys, strict=True):
        scale = report_scale(key)
        for i, row in enumerate(rows):
            runs = curves[key, i]
            epochs = sorted({e for c in runs for e in c})
            if not epochs:
                continue
            per_epoch = [[c[e] * scale for c in runs if e in c] for e in epochs]
            mean = [statistics.fmean(v) for v in per_epoch]
            (line,) = ax.plot(epochs, mean, styles[i // 10 % len(styles)], marker="o", ms=3,
                              label=f"{row.label} (n={len(runs)})")  # fmt: skip
            if len(runs) > 1:
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{key} (%)" if scale == 100 else key)
        ax.grid(alpha=0.3)
    entries: dict[str, Any] = {}  # every row's line once, from whichever panel has it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    if handles:  # beside the panels, not over a panel's curves
        axes[0][-1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                           borderaxespad=0, ncols=1 + (len(handles) - 1) // 24)  # fmt: skip
    if title:
        fig.suptitle(title)


_SYMBOL = {"greater": ">", "less": "<", "equal": "≈"}


def _fmt_stat(stat: tuple[float | None, float | None, int]) -> str:
    mean, std, n = stat
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f} (n={n})" if std is not None else f"{mean:.2f} (n={n})"


def _interval(j: Judgement) -> str:
    if j.difference is None:
        return "–"
    if j.low is None or j.high is None:
        return f"{j.difference:+.2f}"
    level = "90%" if j.claim.direction == "equal" else "95%"
    return f"{j.difference:+.2f} [{j.low:+.2f}, {j.high:+.2f}] ({level})"


def _flat(j: Judgement) -> str:
    if j.flat is None:
        return "–"
    gains = " / ".join(f"{g:+.1f}" for g in j.gains)
    return ("yes" if j.flat else "**no**") + f" ({gains} in the last quarter)"


#: A repository file named in a claim's paper or source (``docs/papers/gald.md``).
REPO_PATH = re.compile(r"\b(?:docs|experiments|segbench)/[\w./-]*\w\.(?:md|yaml|json|py)\b")


def link_paths(text: str, links_from: Path, root: Path = Path(".")) -> str:
    """``text`` with each file of the repository ``root`` it names (``docs/papers/gald.md``)
    linked relative to the folder ``links_from``, where the table goes: the link works on
    GitHub, and the docs' hook turns it into the site's page. A path that is not a file there
    stays text."""

    def link(m: re.Match[str]) -> str:
        path = m.group(0)
        if not (root / path).is_file():
            return path
        return f"[{path}]({Path(os.path.relpath(root / path, links_from)).as_posix()})"

    return REPO_PATH.sub(link, text)


def claims_table(
    judgements: Sequence[Judgement],
    *,
    group: str | None = None,
    holm: tuple[int, Sequence[str]] | None = None,
    links_from: Path | None = None,
    root: Path = Path("."),
) -> str:
    """The markdown table of the verdicts (one row per claim); ``holm``: the size of the family
    and each claim's verdict under Holm's correction over it, as a column after the verdict;
    ``links_from``: the folder of the file the table goes into, to link the files of the
    repository ``root`` that the paper cells name (:func:`link_paths`; text without it)."""
    header = ["claim", "paper", "compared", "a", "b", "a - b", "test", "verdict", "flat",
              "condition"]  # fmt: skip
    if holm is not None:
        header.insert(header.index("verdict") + 1, f"Holm ({holm[0]} claims)")
    if group is not None:
        header.insert(0, "ablation")
    rows = []
    for n, j in enumerate(judgements):
        c = j.claim
        verdict = f"**{j.verdict}**"
        if j.detectable is not None:
            verdict += f" (detectable: {j.detectable:.2f})"
        if j.note:
            verdict += f"; {j.note}"
        margin = f" (±{c.margin:g})" if c.direction == "equal" else ""
        paper = f"{c.paper}; {c.source}" if c.source else c.paper
        cells = [
            f"{c.claim} ({c.id})",
            link_paths(paper, links_from, root) if links_from is not None else paper,
            f"{c.metric_label}: {c.a} {_SYMBOL[c.direction]} {c.b}{margin}",
            _fmt_stat(j.a),
            _fmt_stat(j.b),
            _interval(j),
            j.test or "–",
            verdict,
            *([holm[1][n]] if holm is not None else []),
            _flat(j),
            (c.condition.rstrip(". ") + (f". Measured: {c.measured}" if c.measured else "")) or "–",
        ]
        if group is not None:
            cells.insert(0, group)
        rows.append([cell.replace("|", "/") for cell in cells])
    return markdown_table(header, rows)


def merge_tables(text: str) -> str:
    """One table from several with the same header (their header lines dropped)."""
    lines = text.splitlines()
    if not lines:
        return text
    header = lines[:2]
    body = [line for line in lines if line not in header]
    return "\n".join(header + body) + "\n"
