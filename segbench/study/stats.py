"""Pure statistics of the studies: mean and spread over seeds, the difference of two variants
with its confidence interval (paired by seed, or Welch), and the gain of a learning curve over
its last quarter. Numbers in, numbers out: no runs, files or claims."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats

log = logging.getLogger("segbench")


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """``(mean, sample standard deviation, n)``; ``None`` where there are too few values."""
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def last_quarter_gain(curves: Sequence[dict[int, float]]) -> float | None:
    """Points of mIoU gained over the last quarter of the epochs (at least one epoch) by the
    mean of ``curves`` (``{epoch: value}``, one per seed, values as fractions)."""
    epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if len(epochs) < 2:
        return None
    k = max(1, round(len(epochs) / 4))
    mean = [statistics.fmean(c[e] for c in curves) for e in epochs]
    return 100 * (mean[-1] - mean[-1 - k])


@dataclass(frozen=True)
class Difference:
    """``a - b`` with its confidence interval (``low``, ``high``: ``None`` with fewer than two
    values of either side)."""

    value: float
    low: float | None = None
    high: float | None = None
    #: ``"paired t (n seeds)"`` or ``"Welch t (df ...)"``.
    test: str = ""
    se: float = 0.0
    df: float = 1.0

    def detectable(self) -> float | None:
        """The smallest difference a two-sided 5% test detects with 80% power at this spread,
        ``(t_0.975 + t_0.80) x SE`` (``None`` without a spread)."""
        if self.low is None or self.se <= 0:
            return None
        return float((stats.t.ppf(0.975, self.df) + stats.t.ppf(0.80, self.df)) * self.se)


def difference(a: dict[Any, float], b: dict[Any, float], confidence: float) -> Difference:
    """The difference of the means of ``a`` and ``b`` (``{seed: value}`` each, both non-empty)
    with its ``confidence`` interval from Student's t: **paired by seed** when both hold the
    same seeds (two or more), otherwise **Welch's** unequal-variance t."""
    if set(a) == set(b) and len(a) >= 2:
        diffs = [a[s] - b[s] for s in sorted(a)]
        d, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), len(diffs)
        se, df = sd / math.sqrt(n), float(n - 1)
        test = f"paired t ({n} seeds)"
    elif len(a) >= 2 and len(b) >= 2:
        xa, xb = list(a.values()), list(b.values())
        d = statistics.fmean(xa) - statistics.fmean(xb)
        va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1)) if se > 0 else 1.0
        test = f"Welch t (df {df:.1f})"
    else:
        return Difference(statistics.fmean(a.values()) - statistics.fmean(b.values()))
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * se) if se > 0 else 0.0
    return Difference(d, d - half, d + half, test, se, df)


def t_interval_p(
    value: float,
    low: float,
    high: float,
    df: float,
    confidence: float,
    test: Literal["difference", "equivalence", "beyond"] = "difference",
    margin: float = 0.0,
) -> float:
    """The p-value of a test on a difference read from its ``confidence`` interval ``[low,
    high]`` around ``value`` (Student's t, ``df`` degrees of freedom; the standard error is taken
    back from the width): ``difference``: two-sided, of a difference of 0; ``equivalence``: two
    one-sided tests of ``|difference| < margin``; ``beyond``: one-sided, of ``|difference| >
    margin``."""
    half = (high - low) / 2
    se = half / float(stats.t.ppf(0.5 + confidence / 2, df)) if half > 0 else 0.0
    size = abs(value)
    if se <= 0:  # no spread: the data decide with certainty
        holds = {"difference": size > 0, "equivalence": size < margin, "beyond": size > margin}
        return 0.0 if holds[test] else 1.0
    if test == "difference":
        return float(2 * stats.t.sf(size / se, df))
    if test == "equivalence":
        return float(
            max(stats.t.sf((value + margin) / se, df), stats.t.sf((margin - value) / se, df))
        )
    return float(stats.t.sf((size - margin) / se, df))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (``None``: not tested, left out of
    the family): the ``i``-th smallest of ``m`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``;
    a claim is decided at level ``alpha`` when its adjusted p-value is at most ``alpha``, which
    bounds the chance of any false decision in the family by ``alpha``."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
