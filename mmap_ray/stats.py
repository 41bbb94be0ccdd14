"""Paired comparisons: two configurations on the same test images, or on the same seeds.

A difference in mean accuracy of half a point means nothing without its uncertainty, and two runs
evaluated on the same images share most of it (the same hard images, the same easy ones). Comparing
them image by image removes that shared part:

- `paired_bootstrap`: resample the images (within each task, so that the statistic stays the mean over
  tasks of per-task accuracy) with each image's two outcomes kept together; a percentile interval on the
  difference in mean accuracy.
- `mcnemar`: the exact two-sided test on the discordant images (right in one run, wrong in the other).
- `seed_interval`: a t interval on per-seed paired differences (same seed, same data, two settings),
  with its two-sided p-value and the smallest effect those seeds could detect (80% power).
- `hierarchical_bootstrap`: the method's uncertainty from both sources: seeds resampled with replacement,
  then each drawn seed's test images within each task (a two-stage bootstrap); a percentile interval and a
  bootstrap p-value. Resampling images alone (`paired_bootstrap`) describes these checkpoints, not the
  method, and is not used for verdicts.
- `holm`: Holm's step-down adjustment of a family's p-values (each table's comparisons are one family).

An interval that contains 0 is "no detectable difference", which is a result, not a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

# Student t quantiles t(0.975, df) and t(0.80, df) for df 1..30; above that the normal's 1.96 and 0.842
T975 = tuple(
    float(t)
    for t in (
        "12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 "
        "2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042"
    ).split()
)
T80 = tuple(
    float(t)
    for t in (
        "1.376 1.061 0.978 0.941 0.920 0.906 0.896 0.889 0.883 0.879 0.876 0.873 0.870 0.868 0.866 "
        "0.865 0.863 0.862 0.861 0.860 0.859 0.858 0.858 0.857 0.856 0.856 0.855 0.855 0.854 0.854"
    ).split()
)


@dataclass(frozen=True)
class Difference:
    """A difference in accuracy in points (percent: 1.2 is 1.2 points) with its 95% interval, over `n` pairs."""

    diff: float
    low: float
    high: float
    n: int
    p: float | None = None  # two-sided p-value of no difference, where the method gives one
    mde: float | None = None  # smallest |difference| detectable with 80% power at this spread (seed t test)

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:  # '+1.2 [-0.3, +2.7]'
        return f"{self.diff:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"

    @property
    def verdict(self) -> str:
        return f"{'better' if self.diff > 0 else 'worse'}" if self.detectable else "no detectable difference"


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 10_000, seed: int = 0
) -> Difference:
    """Mean accuracy of `a` minus that of `b` in points, with a 95% paired bootstrap interval.

    a, b: (N,) per-image correctness (bool or 0/1) of two runs on the same N images, in the same order.
    groups: (N,) task of each image; the statistic is the unweighted mean over tasks of the per-task
        difference (as `accuracy` reports the mean), and images are resampled within their task.
    """
    a, b = np.asarray(a, dtype=np.int8), np.asarray(b, dtype=np.int8)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty 1-d arrays, got {a.shape} and {b.shape}")
    groups = np.zeros(len(a), dtype=np.int64) if groups is None else np.asarray(groups)
    # the two-stage bootstrap of one seed is the image bootstrap: its seed stage always draws that seed
    return replace(hierarchical_bootstrap([(a - b, groups)], n_boot, seed), n=len(a))


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(images only `a` gets right, images only `b` gets right, exact two-sided p-value)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    return only_a, only_b, min(1.0, 2 * binomial_half_cdf(k, n))


def binomial_half_cdf(k: int, n: int) -> float:
    """P(X <= k), X ~ Binomial(n, 1/2): exact integer sums up to n = 2,000; beyond, the same sum of terms in
    log space (relative error about 1e-12), as exact sums of n-bit integers take minutes at n = 100,000
    (two runs' discordant images on DomainNet's 175,000)."""
    if n <= 2000:
        return sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    i = np.arange(k + 1, dtype=np.float64)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    logs = math.lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) - n * math.log(2)  # (k + 1,) log pmf
    top = logs.max()
    return float(math.exp(top) * np.exp(logs - top).sum())


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (via the regularized incomplete beta)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)  # P(T > |t|)
    return 1 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + num * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1 - c * d) < 1e-12:
            break
    return front * (f - 1)


def seed_interval(diffs: np.ndarray) -> Difference | None:
    """The mean of per-seed paired differences (in points: the tables' accuracies are percent) with a 95%
    t interval, the two-sided t-test p-value and the minimum detectable effect at 80% power,
    (t(0.975) + t(0.80)) * sd / sqrt(n) (None with fewer than 2 seeds)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return None
    df = len(d) - 1
    t975, t80 = (T975[df - 1], T80[df - 1]) if df <= len(T975) else (1.96, 0.842)
    se = d.std(ddof=1) / math.sqrt(len(d))
    half = t975 * se
    p = (2 * (1 - t_cdf(abs(d.mean()) / se, df))) if se > 0 else float(d.mean() == 0)
    return Difference(
        float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d), p=min(1.0, p), mde=(t975 + t80) * se
    )


def hierarchical_bootstrap(
    seeds: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 10_000, seed: int = 0
) -> Difference:
    """The mean over seeds of each seed's accuracy difference (mean over tasks of a - b) in points, with a 95%
    two-stage bootstrap interval: seeds resampled with replacement, then each drawn seed's images within
    each task; p is the two-sided bootstrap p-value of no difference.

    seeds: per seed, (d, tasks) with d (N,) = a - b per image in {-1, 0, 1} and tasks (N,) each image's task.
    """
    if not seeds:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    rng = np.random.default_rng(seed)
    per_seed = np.zeros((len(seeds), n_boot))  # (S, n_boot): each seed's difference, images resampled
    point = []
    for s, (d, tasks) in enumerate(seeds):
        d, tasks = np.asarray(d, dtype=np.int8), np.asarray(tasks)
        means = []
        for task in np.unique(tasks):
            dt = d[tasks == task]
            n = len(dt)
            probs = np.array([(dt == -1).sum(), (dt == 0).sum(), (dt == 1).sum()]) / n
            counts = rng.multinomial(n, probs, size=n_boot)  # (n_boot, 3): resampled images by kind
            per_seed[s] += (counts[:, 2] - counts[:, 0]) / n
            means.append(dt.mean())
        per_seed[s] /= len(means)
        point.append(float(np.mean(means)))
    drawn = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))  # (n_boot, S): seeds with replacement
    boot = per_seed[drawn, np.arange(n_boot)[:, None]].mean(axis=1)  # (n_boot,)
    low, high = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return Difference(100 * float(np.mean(point)), 100 * float(low), 100 * float(high), len(seeds), p=p)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family (None stays None and is not counted)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
