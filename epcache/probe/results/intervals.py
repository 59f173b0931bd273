"""95% intervals for the accuracies a sweep reports, so a reader sees how far apart two configs really are.

A top-1 on a split of ``n`` images with ``k`` right is a binomial proportion: its interval is the
Wilson score interval, which stays inside [0, 1] and keeps its coverage near 0 % and 100 % (where
small holdouts live) unlike the normal "p ± z·se" interval. A mean over seeds or few-shot tries has
a handful of values and no binomial behind it: it gets a seeded percentile bootstrap over those
values, which needs no normality assumption and gives the same interval on every run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_METHOD", "CONFIDENCE", "INTERVAL_METHOD", "bootstrap_mean_ci", "intervals_overlap", "top1_interval",
    "wilson",
]

CONFIDENCE = 0.95
INTERVAL_METHOD = "wilson 95%"  # recorded once per row as metrics.interval: how every metrics.<split>.top1_ci is made
BOOTSTRAP_METHOD = "percentile bootstrap 95% over seeds/tries (10,000 resamples, seed 0)"


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes out of ``n`` trials, as fractions ``(lo, hi)``.

    ``z`` is the exact two-sided normal quantile (1.959963... at 95%), not the rounded 1.96, so
    the bounds agree with other implementations to float precision.
    """
    if n <= 0:
        raise ValueError(f"an interval needs at least one sample, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is not between 0 and n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exactly 0 / 1 where the algebra cancels to rounding noise
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def bootstrap_mean_ci(
    values: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (:data:`BOOTSTRAP_METHOD`).

    Seeded, so a summary printed twice shows the same interval. A single value has no spread to
    resample: its interval is the value itself.
    """
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def intervals_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two closed intervals share a point: the data cannot tell their configs apart at this level."""
    return a[0] <= b[1] and b[0] <= a[1]


def top1_interval(metrics: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """The 95% interval of a seed group's top-1 on one split, from its rows' metrics of that split.

    One seed: its Wilson interval (as recorded, or from ``n`` and ``top1`` for rows written before
    intervals); several seeds or tries: the seeded percentile bootstrap of their mean. The summary,
    the board and the checkpoint curve all print this one interval.
    """
    if len(metrics) == 1:
        m = metrics[0]
        ci = m.get("top1_ci")
        if ci is not None:
            return float(ci[0]), float(ci[1])
        return wilson(round(float(m["top1"]) * int(m["n"])), int(m["n"]))
    return bootstrap_mean_ci([float(m["top1"]) for m in metrics])
