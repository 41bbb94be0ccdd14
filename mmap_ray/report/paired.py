"""Paired comparisons in a study's report: two trials of the same seed compared on the same test images.

Since every seed draws its own data (`StudyConfig.data_per_seed`), two configurations trained with the same
seed saw the same training data and are tested on the same images. A comparison is then made two ways:

- by seed: the per-seed differences of mean test accuracy, with a 95% t interval (`stats.seed_interval`):
  training noise and test sampling together, but few pairs;
- by image: every test image of every seed, paired (`stats.paired_bootstrap`, resampled within each
  (seed, task)): test sampling only, many pairs.

A difference is called detectable only when both intervals exclude 0; otherwise the report says "no
detectable difference". Also here: how stable each affinity scheme's matrix is across seeds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ..stats import Difference, paired_bootstrap, seed_interval
from .load import CONFIG_ID, completed


def compare_trials(
    trials: pd.DataFrame, predictions: pd.DataFrame, pairs: list[tuple[int, str, str]], metric: str = "test_mean"
) -> tuple[Difference | None, Difference | None]:
    """(by seed, by image) differences of a minus b over `pairs` of (seed, config_id a, config_id b); by
    image is None when the predictions table lacks a trial of the pairs."""
    acc = completed(trials).groupby([CONFIG_ID, "seed"])[metric].first()
    pairs = [(s, a, b) for s, a, b in pairs if (a, s) in acc.index and (b, s) in acc.index]
    by_seed = seed_interval(np.array([acc[a, s] - acc[b, s] for s, a, b in pairs])) if pairs else None
    if predictions.empty or not pairs:
        return by_seed, None
    keyed = predictions.set_index([CONFIG_ID, "seed"]).sort_index()
    xs, ys, groups = [], [], []
    for s, a, b in pairs:
        if (a, s) not in keyed.index or (b, s) not in keyed.index:
            return by_seed, None
        pa, pb = keyed.loc[(a, s)], keyed.loc[(b, s)]
        both = pa.merge(pb, on=["task", "image"], suffixes=("_a", "_b"))
        if len(both) != len(pa) or len(both) != len(pb) or (both["label_a"] != both["label_b"]).any():
            return by_seed, None  # not the same images: no pairing
        xs.append(both["correct_a"].to_numpy())
        ys.append(both["correct_b"].to_numpy())
        groups.append((f"{s}/" + both["task"].astype(str)).to_numpy())
    by_image = paired_bootstrap(np.concatenate(xs), np.concatenate(ys), np.concatenate(groups))
    return by_seed, by_image


def verdict(by_seed: Difference | None, by_image: Difference | None) -> str:
    """'better' / 'worse' when every available interval excludes 0 on the same side, else no difference."""
    found = [d for d in (by_seed, by_image) if d is not None]
    if not found:
        return "–"
    if all(d.detectable for d in found) and len({d.diff > 0 for d in found}) == 1:
        return found[0].verdict
    return "no detectable difference"


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
    rows = []
    for scheme in schemes:
        pairs = [(s, a, b) for s in seeds if (a := _trial_of(trials, scheme, s)) and (b := _trial_of(trials, base, s))]
        if not pairs:
            continue
        by_seed, by_image = compare_trials(trials, predictions, pairs, metric)
        rows.append(
            {
                "scheme": scheme,
                "against": base,
                "seeds": len(pairs),
                "by seed (95% t)": str(by_seed) if by_seed else "–",
                "by image (95% bootstrap)": f"{by_image} (n={by_image.n})" if by_image else "–",
                "verdict": verdict(by_seed, by_image),
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
