"""The verdict a sweep's runs give on a claim.

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

Numbers are in the metric's report scale (IoU and accuracies in percent).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segbench.errors import ConfigError
from segbench.study.ablation import Ablation, Claim, find_ablations
from segbench.study.plan import fit_command, recipe_mismatches
from segbench.study.runs import (
    CURVE_KEYS,
    Row,
    find_runs,
    group_runs,
    load_run,
    report_scale,
)
from segbench.study.stats import difference, holm, last_quarter_gain, mean_std, t_interval_p

log = logging.getLogger("segbench")


#: A validation curve that gains less than this (points of mIoU) over its last quarter is flat.
FLAT_POINTS = 1.0


Verdict = Literal["reproduced", "contradicted", "inconclusive", "not run"]
VERDICTS: tuple[Verdict, ...] = ("reproduced", "contradicted", "inconclusive", "not run")


def verdict_counts(verdicts: Iterable[str]) -> dict[str, int]:
    """How many claims have each verdict, in the order of :data:`VERDICTS`."""
    counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v] += 1
    return counts


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


def judge(
    claim: Claim,
    a: dict[Any, float],
    b: dict[Any, float],
    scale: float = 1.0,
) -> Judgement:
    """The verdict on ``claim`` from the runs of its two variants (``{seed: value}`` each)."""
    a = {s: v * scale for s, v in a.items()}
    b = {s: v * scale for s, v in b.items()}
    sa, sb = mean_std(list(a.values())), mean_std(list(b.values()))
    if sa[2] == 0 or sb[2] == 0:
        return Judgement(claim, "not run", sa, sb, note="no finished run of " + (
            claim.a if sa[2] == 0 else claim.b))  # fmt: skip
    confidence = 0.90 if claim.direction == "equal" else 0.95
    diff = difference(a, b, confidence)
    if diff.low is None or diff.high is None:
        return Judgement(claim, "inconclusive", sa, sb, diff.value,
                         note="needs 2 or more seeds of each variant")  # fmt: skip
    low, high = diff.low, diff.high
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
    detectable = diff.detectable() if verdict == "inconclusive" else None
    return Judgement(claim, verdict, sa, sb, diff.value, low, high, diff.test, detectable)


def seed_values(rows: Sequence[Row], label: str, metrics: Sequence[str]) -> dict[Any, float]:
    """``{seed: value}`` over the runs of the row labelled ``label``: the mean of ``metrics`` (one
    or more; a run lacking one of them is left out), a repeated seed's runs averaged
    (:meth:`Row.seed_values`)."""
    values: dict[Any, float] = {}
    for row in rows:
        if row.label == label:
            values.update(row.seed_values(metrics))
    return values


def judge_claims(claims: Sequence[Claim], rows: Sequence[Row]) -> list[Judgement]:
    """Each claim's verdict from the finished runs of its two variants, with their curves'
    last-quarter gains.

    A run that has not finished training (still training, in a sweep that is writing its runs;
    stopped or interrupted) is left out, and the verdict's note names it: its numbers are of a
    model not trained to the recipe's end (a ``segbench test`` of its best checkpoint while it
    trains, which the report shows as not finished), and were counted as a seed of the verdict
    without a word."""
    left_out: dict[str, list[str]] = {}
    for row in rows:
        for r in row.runs:
            if r.unfinished:
                left_out.setdefault(row.label, []).append(f"{r.name} ({r.unfinished})")
    rows = [
        dataclasses.replace(row, runs=[r for r in row.runs if not r.unfinished]) for row in rows
    ]

    def gain(label: str) -> float | None:
        return last_quarter_gain(
            [c for row in rows if row.label == label for c in row.curves(CURVE_KEYS[0])]
        )

    out = []
    for c in claims:
        j = judge(c, seed_values(rows, c.a, c.metrics), seed_values(rows, c.b, c.metrics),
                  report_scale(c.metrics[0]))  # fmt: skip
        if j.verdict == "not run":
            j = dataclasses.replace(j, note=not_run_note(c, rows))
        unfinished = [name for label in (c.a, c.b) for name in left_out.get(label, [])]
        if unfinished:
            said = f"not finished, left out: {'; '.join(unfinished)}"
            j = dataclasses.replace(j, note=f"{j.note}; {said}" if j.note else said)
        out.append(dataclasses.replace(j, gains=(gain(c.a), gain(c.b))))
    return out


def not_run_note(claim: Claim, rows: Sequence[Row]) -> str:
    """Why ``claim`` has no verdict: a variant without runs, or runs that lack its metric."""
    for label in (claim.a, claim.b):
        runs = [r for row in rows if row.label == label for r in row.runs]
        if not runs:
            return f"no finished run of {label}"
        missing = [m for m in claim.metrics if all(r.metrics.get(m) is None for r in runs)]
        if missing:
            return f"no run of {label} has {', '.join(missing)}"
    return ""


def judge_ablations(
    experiments: Path, root: Path, scale: str = "cpu", *, recipe_only: bool = True
) -> list[tuple[Ablation, Judgement]]:
    """``(ablation, judgement)`` of every claim of every ablation under ``experiments``, from
    the finished runs under ``root``: its recipe's runs only (:func:`check_recipe_runs`) unless
    ``recipe_only`` is false."""
    out: list[tuple[Ablation, Judgement]] = []
    for ablation in find_ablations(experiments).values():
        claims = ablation.claims
        if not claims:
            continue
        group = ablation.group_at(scale)
        files = find_runs([str(root / group)]) if (root / group).is_dir() else []
        if files and recipe_only:
            check_recipe_runs(ablation, scale, root, [Path(f).parent for f in files])
        rows, _ = group_runs([load_run(f) for f in files]) if files else ([], [])
        judged = judge_claims(claims, rows)
        if scale != "cpu":  # the row says which schedule decided it (it may sit beside cpu rows)
            judged = [dataclasses.replace(j, test=f"{j.test}, SCALE={scale}") if j.test else j
                      for j in judged]  # fmt: skip
        out += [(ablation, j) for j in judged]
    return out


def check_recipe_runs(ablation: Ablation, scale: str, root: Path, run_dirs: list[Path]) -> None:
    """The runs that would judge ``ablation``'s claims are its recipe's: each ``VARIANT-sSEED``
    was trained as the recipe's fit command (:func:`~segbench.study.plan.fit_command`, no
    arguments after ``--``) would train it (:func:`~segbench.study.plan.recipe_mismatches`). A
    smoke sweep's runs, under the recipe's names, would otherwise decide its verdicts. Raises a
    :class:`ConfigError` naming each run that is not, and the keys."""
    try:
        base, variants = ablation.configs(scale)
    except ConfigError:  # no recipe at that scale to compare with
        return
    by_stem = {Path(v).stem: v for v in variants}
    finished = []
    for run_dir in run_dirs:
        stem, _, seed = run_dir.name.rpartition("-s")
        if stem in by_stem and seed.isdigit():
            cmd = fit_command(base=base, variant=by_stem[stem], seed=int(seed),
                              group=run_dir.parent.name, root=str(root), extra=[],
                              resume=False)  # fmt: skip
            finished.append((run_dir, cmd))
    problems = recipe_mismatches(finished)
    if problems:
        raise ConfigError(
            f"{ablation.name}: {len(problems)} run(s) under {root / ablation.group_at(scale)} "
            "were not trained by the recipe, so its claims would be judged from them: "
            + " | ".join(problems)
            + ". Remove them (a smoke sweep's, with fit arguments after --, goes under the "
            "recipe's names), give --root where the recipe's runs are, or judge them as they "
            "are with --other_settings (never published)."
        )


def p_value(j: Judgement) -> float | None:
    """The p-value of ``j``'s test, read back from its interval (as the data keeps it: to 0.01):
    a difference of 0 (two-sided) for ``greater``/``less`` claims, equivalence within the margin
    for ``equal`` ones, or, for an ``equal`` claim judged contradicted, the one-sided test of a
    difference beyond the margin. ``None`` without an interval."""
    if j.difference is None or j.low is None or j.high is None or not j.test:
        return None
    found = re.search(r"\((\d+) seeds\)|\(df ([\d.]+)\)", j.test)
    if not found:
        return None
    df = float(found.group(1)) - 1 if found.group(1) else float(found.group(2))
    if j.claim.direction != "equal":
        return t_interval_p(j.difference, j.low, j.high, df, 0.95)
    margin = float(j.claim.margin or 0)
    if j.verdict == "contradicted":
        return t_interval_p(j.difference, j.low, j.high, df, 0.90, "beyond", margin)
    return t_interval_p(j.difference, j.low, j.high, df, 0.90, "equivalence", margin)


#: The familywise error rate of :func:`holm_verdicts`.
ALPHA = 0.05


def holm_verdicts(judgements: Sequence[Judgement]) -> list[Verdict]:
    """Each claim's verdict when the claims are judged together, with Holm's correction over the
    family (:func:`segbench.study.stats.holm`, at :data:`ALPHA`): a reproduced or contradicted
    verdict stands only if its test passes the corrected level, otherwise it is inconclusive;
    inconclusive and not-run claims stay as they are."""
    adjusted = holm([p_value(j) for j in judgements])
    out: list[Verdict] = []
    for j, p in zip(judgements, adjusted, strict=True):
        decided = j.verdict in ("reproduced", "contradicted")
        out.append(j.verdict if not decided or (p is not None and p <= ALPHA) else "inconclusive")
    return out


def judgement_data(j: Judgement, ablation: str | None = None) -> dict[str, Any]:
    """One judgement as data (``claims.json``, a report's ``claims``): the claim's id (and
    ``ablation``'s name, where given), the verdict and the numbers behind it. The claim's text,
    variants and condition stay in its ``ablation.yaml``."""

    def stat(s: tuple[float | None, float | None, int]) -> dict[str, Any]:
        return {"mean": s[0], "std": s[1], "n": s[2]}

    return {
        "id": j.claim.id,
        **({"ablation": ablation} if ablation is not None else {}),
        "verdict": j.verdict,
        "a": stat(j.a),
        "b": stat(j.b),
        "difference": j.difference,
        "low": j.low,
        "high": j.high,
        "test": j.test,
        "detectable": j.detectable,
        "note": j.note,
        "gains": list(j.gains),
    }


def judgement_of_data(claim: Claim, data: dict[str, Any]) -> Judgement:
    """The judgement ``data`` (from :func:`judgement_data`) holds on ``claim``."""

    def stat(s: dict[str, Any]) -> tuple[float | None, float | None, int]:
        return s["mean"], s["std"], int(s["n"])

    gains = data.get("gains") or (None, None)
    return Judgement(claim, data["verdict"], stat(data["a"]), stat(data["b"]),
                     data.get("difference"), data.get("low"), data.get("high"),
                     data.get("test", ""), data.get("detectable"), data.get("note", ""),
                     (gains[0], gains[1]))  # fmt: skip
