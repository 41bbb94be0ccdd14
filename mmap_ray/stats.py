"""Paired comparisons: two configurations on the same test images, or on the same seeds.

A difference in mean accuracy of half a point means nothing without its uncertainty, and two runs
evaluated on the same images share most of it (the same hard images, the same easy ones). Comparing
them image by image removes that shared part:

- `paired_bootstrap`: resample the images (within each task, so that the statistic stays the mean over
  tasks of per-task accuracy) with each image's two outcomes kept together; a percentile interval on the
  difference in mean accuracy.
- `mcnemar`: the exact two-sided test on the discordant images (right in one run, wrong in the other).
- `seed_interval`: a t interval on per-seed paired differences (same seed, same data, two settings).

An interval that contains 0 is "no detectable difference", which is a result, not a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Student t quantiles t(0.975, df) for df 1..30; above that the normal 1.96 is within 2% of the truth
T975 = tuple(
    float(t)
    for t in (
        "12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 "
        "2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042"
    ).split()
)


@dataclass(frozen=True)
class Difference:
    """A difference in accuracy (fractions: 0.012 is 1.2 points) with its 95% interval, over `n` pairs."""

    diff: float
    low: float
    high: float
    n: int

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:  # in points: '+1.2 [-0.3, +2.7]'
        return f"{100 * self.diff:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    @property
    def verdict(self) -> str:
        return f"{'better' if self.diff > 0 else 'worse'}" if self.detectable else "no detectable difference"


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 10_000, seed: int = 0
) -> Difference:
    """Mean accuracy of `a` minus that of `b`, with a 95% paired bootstrap interval.

    a, b: (N,) per-image correctness (bool or 0/1) of two runs on the same N images, in the same order.
    groups: (N,) task of each image; the statistic is the unweighted mean over tasks of the per-task
        difference (as `accuracy` reports the mean), and images are resampled within their task.
    """
    a, b = np.asarray(a, dtype=np.int8), np.asarray(b, dtype=np.int8)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty 1-d arrays, got {a.shape} and {b.shape}")
    groups = np.zeros(len(a), dtype=np.int64) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    d = a - b  # (N,) in {-1, 0, 1}
    per_task, boot = [], np.zeros(n_boot)
    for g in np.unique(groups):
        dg = d[groups == g]
        n = len(dg)
        p = np.array([(dg == -1).sum(), (dg == 0).sum(), (dg == 1).sum()]) / n
        # resampling n images with replacement only changes how many of each kind: a multinomial draw
        counts = rng.multinomial(n, p, size=n_boot)  # (n_boot, 3)
        boot += (counts[:, 2] - counts[:, 0]) / n
        per_task.append(dg.mean())
    k = len(per_task)
    boot /= k
    low, high = np.quantile(boot, [0.025, 0.975])
    return Difference(float(np.mean(per_task)), float(low), float(high), len(a))


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(images only `a` gets right, images only `b` gets right, exact two-sided p-value)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(X <= k), X ~ Binomial(n, 1/2)
    return only_a, only_b, min(1.0, 2 * tail)


def seed_interval(diffs: np.ndarray) -> Difference | None:
    """The mean of per-seed paired differences with a 95% t interval (None with fewer than 2 seeds)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return None
    t = T975[len(d) - 2] if len(d) - 1 <= len(T975) else 1.96
    half = t * d.std(ddof=1) / math.sqrt(len(d))
    return Difference(float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d))
