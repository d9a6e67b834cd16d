"""A paper's claim as data, and the verdict a sweep's runs give on it.

An ablation declares the claims it tests in its ``ablation.yaml`` (:class:`Claim`)::

    claims:
      - id: fcn-8s-over-16s
        claim: "Fusing pool3 as well (FCN-8s) improves on FCN-16s"
        paper: "62.7 vs 62.4 mIoU (+0.3)"
        source: FCN, CVPR 2015, table 2 (VOC2011 val)
        metric: test/mIoU   # or a list: their mean per run (a group of classes)
        a: fcn8s            # variant labels (the variant file's name)
        b: fcn16s
        direction: greater  # the paper says a > b; or less, or equal (within +-margin)
        condition: "what must hold for the experiment to be able to show it"
        measured: "what segbench's tools measured of that condition, and the command"

:func:`judge` compares the runs of ``a`` and ``b`` seed by seed: the difference of means
``a - b`` with a 95% confidence interval from Student's t, **paired by seed** when both variants
ran the same seeds (in a sweep the seed fixes the data order and augmentation, so the pairs share
them and the spread between seeds cancels), otherwise **Welch's** unequal-variance t. The
verdict:

* *reproduced*: the interval excludes 0 in the paper's direction (for ``equal``: the 90%
  interval, i.e. two one-sided tests at 5%, lies within ``+-margin``);
* *contradicted*: it excludes 0 the other way (``equal``: the interval lies outside the margin);
* *inconclusive*: neither; the table then gives the smallest difference the sweep could have
  detected, ``(t_0.975 + t_0.80) x SE`` (a two-sided 5% test with 80% power at this spread).

Convergence is judged beside the verdict, not inside it: a variant is *flat* when its validation
mIoU (mean over seeds) gained less than :data:`FLAT_POINTS` points over the last quarter of its
epochs; a claim whose variants are not both flat says so (a longer schedule, ``SCALE=long``,
decides whether the difference is one of speed or of end point).

Numbers are shown in the metric's report scale (IoU and accuracies in percent).

``segbench claims [--root runs] [--scale cpu] [--out results/claims.md]`` judges every claim of
every ablation found (``experiments/*/*/ablation.yaml``) from the runs under
``ROOT/<group>[-<scale>]``: the five papers in one table. A sweep's report shows its own
ablation's claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scipy import stats

from segbench.errors import ConfigError

if TYPE_CHECKING:
    from segbench.analysis.sweep import Ablation

#: A validation curve that gains less than this (points of mIoU) over its last quarter is flat.
FLAT_POINTS = 1.0

Direction = Literal["greater", "less", "equal"]
Verdict = Literal["reproduced", "contradicted", "inconclusive", "not run"]

log = logging.getLogger("segbench")


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as an ablation tests it.

    Attributes:
        id: a short stable name (``fcn-8s-over-16s``), unique across the experiments.
        claim: the paper's statement, in a sentence.
        paper: the paper's number(s) behind it, as text.
        source: where the number stands (paper, table or section, data set).
        metric: the metric compared (a report column: ``test/mIoU``, ``test/IoU/pole``, ...),
            or a list of them, compared by their mean per run (CamVid's thin classes: Pole,
            SignSymbol, Pedestrian, Bicyclist).
        a: the variant expected to be better (``direction: greater``), by its label.
        b: the variant it is compared with.
        direction: ``greater`` (a > b), ``less`` (a < b) or ``equal`` (within ``margin``).
        margin: for ``equal``: the largest difference counted as equal, in the metric's report
            scale (points for IoU).
        condition: what must be true for this experiment to be able to show the claim.
        measured: what was measured of that condition, with the command that measured it.
    """

    id: str
    claim: str
    metric: str | tuple[str, ...]
    a: str
    b: str
    direction: Direction = "greater"
    paper: str = ""
    source: str = ""
    margin: float | None = None
    condition: str = ""
    measured: str = ""

    @classmethod
    def load(cls, data: dict[str, Any], where: str) -> Claim:
        """A claim from its ``ablation.yaml`` entry; errors name the file and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: each claim is a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown claim key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("id", "claim", "metric", "a", "b") if k not in data]
        if missing:
            raise ConfigError(f"{where}: claim {data.get('id', '?')} lacks {missing}")
        if isinstance(data["metric"], list):
            if not data["metric"] or not all(isinstance(m, str) for m in data["metric"]):
                raise ConfigError(f"{where}: claim {data['id']}: metric is a name or a list of "
                                  f"names, got {data['metric']!r}")  # fmt: skip
            data = {**data, "metric": tuple(data["metric"])}
        claim = cls(**{k: v for k, v in data.items()})
        if claim.direction not in ("greater", "less", "equal"):
            raise ConfigError(
                f"{where}: claim {claim.id}: direction is greater, less or equal, "
                f"got {claim.direction!r}"
            )
        if claim.direction == "equal" and not (claim.margin and claim.margin > 0):
            raise ConfigError(f"{where}: claim {claim.id}: direction equal needs a margin > 0")
        return claim

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric(s) compared: one, or those whose mean per run is compared."""
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def metric_label(self) -> str:
        """The compared metric as the tables show it."""
        if len(self.metrics) == 1:
            return self.metrics[0]
        prefix = re.match(r".*/", self.metrics[0])
        common = prefix.group(0) if prefix and all(
            m.startswith(prefix.group(0)) for m in self.metrics) else ""  # fmt: skip
        return f"mean {common}{{{', '.join(m.removeprefix(common) for m in self.metrics)}}}"


@dataclass(frozen=True)
class Judgement:
    """What the runs say of one claim (values in the metric's report scale)."""

    claim: Claim
    verdict: Verdict
    #: ``(mean, std, n)`` of ``a`` and of ``b``.
    a: tuple[float | None, float | None, int]
    b: tuple[float | None, float | None, int]
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    #: ``"paired t"`` or ``"Welch t"`` (and the degrees of freedom).
    test: str = ""
    #: The smallest difference the sweep could have detected (80% power), if inconclusive.
    detectable: float | None = None
    note: str = ""
    #: Points of val mIoU that ``a`` and ``b`` gained over their last quarter of epochs.
    gains: tuple[float | None, float | None] = (None, None)

    @property
    def flat(self) -> bool | None:
        """Both variants' curves flat (``None``: no curve)."""
        if None in self.gains:
            return None
        return all(g < FLAT_POINTS for g in self.gains)  # type: ignore[operator]


def last_quarter_gain(curves: Sequence[dict[int, float]]) -> float | None:
    """Points of mIoU gained over the last quarter of the epochs (at least one epoch) by the
    mean of ``curves`` (``{epoch: value}``, one per seed, values as fractions)."""
    epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if len(epochs) < 2:
        return None
    k = max(1, round(len(epochs) / 4))
    mean = [statistics.fmean(c[e] for c in curves) for e in epochs]
    return 100 * (mean[-1] - mean[-1 - k])


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def judge(
    claim: Claim,
    a: dict[Any, float],
    b: dict[Any, float],
    scale: float = 1.0,
) -> Judgement:
    """The verdict on ``claim`` from the runs of its two variants (``{seed: value}`` each)."""
    a = {s: v * scale for s, v in a.items()}
    b = {s: v * scale for s, v in b.items()}
    sa, sb = _mean_std(list(a.values())), _mean_std(list(b.values()))
    if sa[2] == 0 or sb[2] == 0:
        return Judgement(claim, "not run", sa, sb, note="no finished run of " + (
            claim.a if sa[2] == 0 else claim.b))  # fmt: skip
    paired = set(a) == set(b) and len(a) >= 2
    if paired:
        diffs = [a[s] - b[s] for s in sorted(a)]
        d, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
        se, df = sd / math.sqrt(n), n - 1
        test = f"paired t ({n} seeds)"
    elif len(a) >= 2 and len(b) >= 2:
        xa, xb = list(a.values()), list(b.values())
        d = statistics.fmean(xa) - statistics.fmean(xb)
        va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1)) if se > 0 else 1.0
        test = f"Welch t (df {df:.1f})"
    else:
        d = statistics.fmean(a.values()) - statistics.fmean(b.values())
        return Judgement(claim, "inconclusive", sa, sb, d,
                         note="needs 2 or more seeds of each variant")  # fmt: skip
    confidence = 0.90 if claim.direction == "equal" else 0.95
    half = stats.t.ppf(0.5 + confidence / 2, df) * se if se > 0 else 0.0
    low, high = d - half, d + half
    if claim.direction == "equal":
        margin = float(claim.margin or 0)
        if -margin < low and high < margin:
            verdict: Verdict = "reproduced"
        elif low > margin or high < -margin:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
    else:
        sign = 1 if claim.direction == "greater" else -1
        if sign * low > 0 and sign * high > 0:
            verdict = "reproduced"
        elif sign * low < 0 and sign * high < 0:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
    detectable = None
    if verdict == "inconclusive" and se > 0:
        detectable = (stats.t.ppf(0.975, df) + stats.t.ppf(0.80, df)) * se
    return Judgement(claim, verdict, sa, sb, d, low, high, test, detectable)


def _fmt(stat: tuple[float | None, float | None, int]) -> str:
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
    gains = " / ".join(f"{g:+.1f}" for g in j.gains)  # type: ignore[str-format]
    return ("yes" if j.flat else "**no**") + f" ({gains} in the last quarter)"


_SYMBOL = {"greater": ">", "less": "<", "equal": "≈"}


def claims_table(judgements: Sequence[Judgement], *, group: str | None = None) -> str:
    """The markdown table of the verdicts (one row per claim)."""
    header = ["claim", "paper", "compared", "a", "b", "a - b", "test", "verdict", "flat",
              "condition"]  # fmt: skip
    if group is not None:
        header.insert(0, "ablation")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
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
            _fmt(j.a),
            _fmt(j.b),
            _interval(j),
            j.test or "–",
            verdict,
            _flat(j),
            (c.condition.rstrip(". ") + (f". Measured: {c.measured}" if c.measured else "")) or "–",
        ]
        if group is not None:
            cells.insert(0, group)
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def judge_ablations(
    experiments: Path, root: Path, scale: str = "cpu"
) -> list[tuple[Ablation, Judgement]]:
    """``(ablation, judgement)`` of every claim of every ablation under ``experiments``, from
    the finished runs under ``root``."""
    from segbench.analysis.report import find_runs, group_runs, judge_claims, load_run
    from segbench.analysis.sweep import find_ablations

    out: list[tuple[Ablation, Judgement]] = []
    for ablation in find_ablations(experiments).values():
        claims = ablation.claims
        if not claims:
            continue
        group = ablation.group + ("" if scale == "cpu" else f"-{scale}")
        files = find_runs([str(root / group)]) if (root / group).is_dir() else []
        rows, _ = group_runs([load_run(f) for f in files]) if files else ([], [])
        judged = judge_claims(claims, rows)
        if scale != "cpu":  # the row says which schedule decided it (it may sit beside cpu rows)
            judged = [dataclasses.replace(j, test=f"{j.test}, SCALE={scale}") if j.test else j
                      for j in judged]  # fmt: skip
        out += [(ablation, j) for j in judged]
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="segbench claims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--experiments", default="experiments", help="where ablations are")
    parser.add_argument("--root", default="runs", help="the sweeps' runs: ROOT/<group>/...")
    parser.add_argument("--scale", default="cpu", help="cpu, or NAME for the -NAME groups")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument(
        "--into",
        help="also put the table between the <!-- sweep:claims --> marks of this markdown file "
        "(the README's five-paper table); a claim with no finished runs under --root keeps the "
        "row the file already has (runs stay on the machine that made them, tables do not)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="with --into: replace every row, also kept ones"
    )
    args = parser.parse_args(argv)
    judged = judge_ablations(Path(args.experiments), Path(args.root), args.scale)
    text = ""
    ablations = {a.path: a for a, _ in judged}  # in order, once each
    for ablation in ablations.values():
        # The ablation's name, linked to its paper's results (relative to where tables go).
        label = f"[{ablation.name}]({(ablation.folder.parent / 'RESULTS.md').as_posix()})"
        text += claims_table([j for a, j in judged if a is ablation], group=label)
    text = _merge_tables(text)
    verdicts = {j.claim.id: j.verdict for _, j in judged}
    if args.into and not args.fresh and Path(args.into).is_file():
        text, kept = _keep_decided_rows(text, verdicts, Path(args.into).read_text())
        verdicts.update(kept)
        if kept:
            log.info("claims without runs here, rows kept from %s: %s", args.into, ", ".join(kept))
    counts = {v: sum(x == v for x in verdicts.values()) for v in ("reproduced", "contradicted",
              "inconclusive", "not run")}  # fmt: skip
    text += "\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(judged)} claims\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.into:
        from segbench.analysis.sweep import write_results

        write_results(Path(args.into), "claims", text)
    sys.stdout.write(text)


_VERDICT = re.compile(r"\*\*(reproduced|contradicted|inconclusive|not run)\*\*")


def _claim_id(row: str) -> str | None:
    """The id of a claims-table row: the parenthesised name ending its claim cell."""
    cells = row.split(" | ")
    found = re.search(r"\(([\w.-]+)\)$", cells[1]) if len(cells) > 2 else None
    return found.group(1) if found else None


def _keep_decided_rows(
    text: str, verdicts: dict[str, str], previous: str
) -> tuple[str, dict[str, str]]:
    """``text`` with the row of each claim that has no runs (``not run``) replaced by its row in
    the ``previous`` file's claims table, where that row was decided; and those claims' verdicts.
    """
    begin, end = "<!-- sweep:claims", "<!-- /sweep:claims -->"
    if begin not in previous or end not in previous:
        return text, {}
    block = previous[previous.index(begin) : previous.index(end)]
    old = {}
    for row in block.splitlines():
        claim, verdict = _claim_id(row), _VERDICT.search(row)
        if claim and verdict and verdict.group(1) != "not run":
            old[claim] = (row, verdict.group(1))
    kept: dict[str, str] = {}
    lines = text.splitlines()
    for i, row in enumerate(lines):
        claim = _claim_id(row)
        if claim in old and verdicts.get(claim) == "not run":
            lines[i], kept[claim] = old[claim]
    return "\n".join(lines) + "\n", kept


def _merge_tables(text: str) -> str:
    """One table from several with the same header (their header lines dropped)."""
    lines = text.splitlines()
    if not lines:
        return text
    header = lines[:2]
    body = [line for line in lines if line not in header]
    return "\n".join(header + body) + "\n"
