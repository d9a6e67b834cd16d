"""Studies rendered for people: markdown tables (runs, claims), a CSV, and figures drawn on a
figure they are given (:func:`segbench.visualize.save_figure` saves them)."""

from __future__ import annotations

import csv
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segbench.study.runs import CURVE_KEYS, Row, learning_curve, report_scale
from segbench.study.verdicts import Judgement
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
        *(f"{m} (%)" if report_scale(m) == 100 else m for m in metrics),
        *(f"paper {m}" for m in paper_metrics),
    ]
    cells = []
    for row in rows:
        n = len(row.runs)
        line = [row.label, *(str(row.config.get(k)) for k in differing)]
        line += [_distinct(row, k) for k in provenance]
        line.append(str(n))
        line += [_fmt(*row.mean_std(m), report_scale(m)) for m in metrics]
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


def bars_size(rows: Sequence[Row]) -> tuple[float, float]:
    """The figure size (inches) of :func:`draw_bars` for these rows."""
    return 7, 0.5 * len(rows) + 1.5


def draw_bars(fig: Figure, rows: Sequence[Row], metric: str, title: str) -> None:
    """One bar per row: the mean of ``metric`` over its seeds, ±std error bars."""
    scale = report_scale(metric)
    stats = [row.mean_std(metric) for row in rows]
    means = [(m or 0.0) * scale for m, _, _ in stats]
    errs = [(s or 0.0) * scale for _, s, _ in stats]
    ax = fig.subplots()
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

    curves = {
        (key, i): [c for r in row.runs if (c := learning_curve(r.path, key))]
        for key in keys
        for i, row in enumerate(rows)
    }
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        scale = report_scale(key)
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


def claims_table(judgements: Sequence[Judgement], *, group: str | None = None) -> str:
    """The markdown table of the verdicts (one row per claim)."""
    header = ["claim", "paper", "compared", "a", "b", "a - b", "test", "verdict", "flat",
              "condition"]  # fmt: skip
    if group is not None:
        header.insert(0, "ablation")
    rows = []
    for j in judgements:
        c = j.claim
        verdict = f"**{j.verdict}**"
        if j.detectable is not None:
            verdict += f" (detectable: {j.detectable:.2f})"
        if j.note:
            verdict += f"; {j.note}"
        margin = f" (±{c.margin:g})" if c.direction == "equal" else ""
        cells = [
            f"{c.claim} ({c.id})",
            f"{c.paper}; {c.source}" if c.source else c.paper,
            f"{c.metric_label}: {c.a} {_SYMBOL[c.direction]} {c.b}{margin}",
            _fmt_stat(j.a),
            _fmt_stat(j.b),
            _interval(j),
            j.test or "–",
            verdict,
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
