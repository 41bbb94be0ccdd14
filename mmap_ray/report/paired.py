"""Paired comparisons in a study's report: two trials of the same seed compared on the same test images.

Since every seed draws its own data (`StudyConfig.data_per_seed`), two configurations trained with the same
seed saw the same training data and are tested on the same images. A comparison is then made two ways:

- by seed: the per-seed differences of mean test accuracy, with a 95% t interval, its p-value and the
  smallest difference those seeds could detect with 80% power (`stats.seed_interval`);
- seeds + images: a two-stage bootstrap, seeds resampled and then each seed's paired test images within
  each task (`stats.hierarchical_bootstrap`): the method's uncertainty, not only these checkpoints'.

Each table's comparisons are one family: their by-seed p-values are Holm-adjusted (`stats.holm`). A
difference is called detectable only when its adjusted p is below 0.05 and the seeds + images interval
excludes 0 on the same side; otherwise the report says "no detectable difference". Also here: how stable
each affinity scheme's matrix is across seeds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..stats import Difference, hierarchical_bootstrap, holm, seed_interval
from .load import CONFIG_ID, completed


def compare_trials(
    trials: pd.DataFrame, predictions: pd.DataFrame, pairs: list[tuple[int, str, str]], metric: str = "test_mean"
) -> tuple[Difference | None, Difference | None]:
    """(by seed, seeds + images) differences of a minus b over `pairs` of (seed, config_id a, config_id b);
    the second is None when the predictions table lacks a trial of the pairs or their images differ."""
    acc = completed(trials).groupby([CONFIG_ID, "seed"])[metric].first()
    pairs = [(s, a, b) for s, a, b in pairs if (a, s) in acc.index and (b, s) in acc.index]
    by_seed = seed_interval(np.array([acc[a, s] - acc[b, s] for s, a, b in pairs])) if pairs else None
    if predictions.empty or not pairs:
        return by_seed, None
    keyed = predictions.set_index([CONFIG_ID, "seed"]).sort_index()
    seeds = []
    for s, a, b in pairs:
        if (a, s) not in keyed.index or (b, s) not in keyed.index:
            return by_seed, None
        pa, pb = keyed.loc[(a, s)], keyed.loc[(b, s)]
        both = pa.merge(pb, on=["task", "image"], suffixes=("_a", "_b"))
        if len(both) != len(pa) or len(both) != len(pb) or (both["label_a"] != both["label_b"]).any():
            return by_seed, None  # not the same images: no pairing
        d = both["correct_a"].to_numpy().astype(np.int8) - both["correct_b"].to_numpy().astype(np.int8)
        seeds.append((d, both["task"].astype(str).to_numpy()))
    return by_seed, hierarchical_bootstrap(seeds)


def verdict(by_seed: Difference | None, both: Difference | None, adjusted_p: float | None = None) -> str:
    """'better' / 'worse' when the (Holm-adjusted) by-seed p is below 0.05 and every available interval
    excludes 0 on the same side, else no detectable difference."""
    found = [d for d in (by_seed, both) if d is not None]
    if not found:
        return "–"
    p = adjusted_p if adjusted_p is not None else (by_seed.p if by_seed is not None else None)
    if p is not None and p >= 0.05:
        return "no detectable difference"
    if all(d.detectable for d in found) and len({d.diff > 0 for d in found}) == 1:
        return found[0].verdict
    return "no detectable difference"


def mde_text(by_seed: Difference | None) -> str:
    """The smallest difference the seeds could detect (80% power, at their observed paired spread)."""
    return f"{by_seed.mde:.1f}" if by_seed is not None and by_seed.mde is not None else "–"


def _trial_of(trials: pd.DataFrame, scheme: str, seed: int) -> str | None:
    """The config_id of the completed trial that `scheme` trained with `seed` (labels may name several)."""
    done = completed(trials)
    hit = done[(done["seed"] == seed) & done["scheme"].astype(str).str.split(", ").map(lambda s: scheme in s)]
    return str(hit[CONFIG_ID].iloc[0]) if len(hit) else None


def scheme_comparisons(
    trials: pd.DataFrame, predictions: pd.DataFrame, base: str = "single", metric: str = "test_mean"
) -> pd.DataFrame:
    """Each grouping scheme against `base`, paired by seed and by image (points, 95% intervals)."""
    from .load import scheme_names

    schemes = [s for s in scheme_names(completed(trials)["scheme"]) if s != base]
    seeds = sorted(int(s) for s in completed(trials)["seed"].unique())
    rows, found = [], []
    for scheme in schemes:
        pairs = [(s, a, b) for s in seeds if (a := _trial_of(trials, scheme, s)) and (b := _trial_of(trials, base, s))]
        if pairs:
            found.append((scheme, len(pairs), *compare_trials(trials, predictions, pairs, metric)))
    adjusted = holm([by_seed.p if by_seed is not None else None for _, _, by_seed, _ in found])
    for (scheme, n, by_seed, both), p in zip(found, adjusted):
        rows.append(
            {
                "scheme": scheme,
                "against": base,
                "seeds": n,
                "by seed (95% t)": str(by_seed) if by_seed else "–",
                "p (Holm)": f"{p:.3f}" if p is not None else "–",
                "seeds + images (95% bootstrap)": str(both) if both else "–",
                "detectable (80% power)": mde_text(by_seed),
                "verdict": verdict(by_seed, both, p),
            }
        )
    return pd.DataFrame(rows)


def affinity_stability(affinity: dict[str, dict]) -> pd.DataFrame:
    """Per affinity scheme: how alike its matrices are across seeds (Pearson correlation of the off-diagonal
    entries, mean and lowest over pairs of seeds)."""
    by_scheme: dict[str, list[np.ndarray]] = {}
    for key, saved in sorted(affinity.items()):
        scheme = key.rsplit("/", 1)[0]
        m = np.asarray(saved["matrix"], dtype=float)
        by_scheme.setdefault(scheme, []).append(m[~np.eye(len(m), dtype=bool)])
    rows = []
    for scheme, mats in by_scheme.items():
        corr = [
            float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(mats, 2) if a.std() > 0 and b.std() > 0
        ]
        rows.append(
            {
                "scheme": scheme,
                "seeds": len(mats),
                "correlation across seeds (mean)": float(np.mean(corr)) if corr else float("nan"),
                "(lowest)": float(np.min(corr)) if corr else float("nan"),
            }
        )
    return pd.DataFrame(rows)
