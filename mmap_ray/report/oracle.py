"""The oracle: every partition of the tasks trained over the same seeds, and each grouping method scored
against it.

A grouping method is only as good as the partition it picks, and the only ground truth for that is to
train them all (`studies/grouping.py --preset oracle`: all 15 partitions of 4 tasks, or `oracle-k2`: the
7 with two groups, with the methods in the same study, so a partition a method picks is the same trial
as the oracle's and is trained once). From such a study:

- `oracle_ranking`: each partition's accuracy, mean ± std over seeds, ranked by the mean;
- `method_scores`: for each method (tag, the probes, random, ...) the partition it chose per seed, that
  partition's rank, its regret (the oracle-best partition's accuracy minus the chosen one's, paired by
  seed, with a 95% t interval, Holm-adjusted p over the table's methods, and a seeds + images bootstrap),
  the same regret **cross-fitted** (the best partition chosen on one half of the seeds and the regret
  scored on the other half, then the halves swapped: no winner's curse), the regret as a share of the
  oracle's spread (best minus worst partition), how often it chose a top-2 partition, how often the same
  one, what its choice cost against the oracle's training (seconds, and as a fraction), and, for a method
  that scores partitions from an affinity matrix, the rank correlation of its scores with the oracle's
  accuracies (`rank_correlation`): whether it orders the partitions as training does, beyond its pick.

The in-sample regret takes the oracle's best on the same seeds it scores, so it favours whichever
partition was lucky on those seeds; the cross-fitted one does not, and is the one to quote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..grouping import AFFINITY_SCHEMES, FIXED_SCHEMES, Partition, parse_groups, scheme_score
from ..stats import holm, seed_interval
from .load import CONFIG_ID, completed
from .paired import compare_trials


def _canonical(text: str, tasks: tuple[str, ...]) -> str:
    return str(Partition(tasks, parse_groups(text)))


def oracle_ranking(trials: pd.DataFrame, metric: str = "test_mean") -> pd.DataFrame | None:
    """(partition, mean, std, seeds, rank) over the completed trials, best first; None unless the trials
    hold at least two partitions of one configuration (an oracle study)."""
    t = completed(trials)
    t = t[t["partition"].notna() & t[metric].notna()] if len(t) else t
    if t.empty or t["partition"].nunique() < 2 or t["config_id"].nunique() != t["partition"].nunique():
        return None  # not every partition of one configuration: the other settings would differ too
    table = t.groupby("partition", observed=True)[metric].agg(mean="mean", std="std", seeds="count")
    table = table.sort_values("mean", ascending=False)
    table["rank"] = np.arange(1, len(table) + 1)
    return table.reset_index()


def method_scores(
    trials: pd.DataFrame,
    partitions: dict[str, str],
    seconds: dict[str, float] | None = None,
    metric: str = "test_mean",
    predictions: pd.DataFrame | None = None,
    affinity: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """One row per grouping method in `partitions` ("scheme/seed" -> the partition it chose).

    Columns: method, chosen (per seed), rank (of each choice in the oracle ranking), regret (points, mean
    over seeds with a 95% t interval; its Holm-adjusted p over the methods; the seeds + images bootstrap
    when `predictions` holds the trials' test images), the cross-fitted regret (`cross_fitted_regret`) and
    its share of the oracle's spread, the top-2 rate, agreement (share of seeds on the method's most
    frequent choice), cost_s (mean seconds of the method's affinity step), oracle_s (the oracle's
    training seconds per seed) and their ratio; with `affinity` (partitions.json's matrices, "scheme/seed"
    -> {tasks, matrix}), Spearman's rank correlation of the method's partition scores with the oracle's
    mean accuracies, mean over seeds (`rank_correlation`).
    """
    # ~65 lines: the first pass gathers each method's figures, the second adds the Holm adjustment over the
    # family of methods and writes the row: the table's columns are read in one place
    ranking = oracle_ranking(trials, metric)
    if ranking is None:
        raise ValueError("these results are not an oracle study: they need every partition of one configuration")
    t = completed(trials)
    tasks = tuple(sorted({task for p in ranking["partition"] for g in parse_groups(str(p)) for task in g}))
    acc = {(_canonical(str(p), tasks), int(s)): v for p, s, v in zip(t["partition"], t["seed"], t[metric])}
    cid = {(_canonical(str(p), tasks), int(s)): str(c) for p, s, c in zip(t["partition"], t["seed"], t[CONFIG_ID])}
    rank = {_canonical(str(p), tasks): int(r) for p, r in zip(ranking["partition"], ranking["rank"])}
    best = _canonical(str(ranking["partition"].iloc[0]), tasks)
    oracle_s = t.groupby("seed")["wall_s"].sum().mean() if "wall_s" in t else float("nan")
    spread = float(ranking["mean"].iloc[0] - ranking["mean"].iloc[-1])
    top2 = {_canonical(str(p), tasks) for p in ranking["partition"].iloc[:2]}
    choices = [(*k.rsplit("/", 1), v) for k, v in partitions.items()]  # (scheme, seed, partition)
    found = []
    for method in sorted({m for m, _, _ in choices} & set(AFFINITY_SCHEMES + FIXED_SCHEMES)):
        chosen = {int(s): _canonical(v, tasks) for m, s, v in choices if m == method}
        seeds = sorted(s for s in chosen if (chosen[s], s) in acc and (best, s) in acc)
        regret = seed_interval(np.array([acc[best, s] - acc[chosen[s], s] for s in seeds]))
        pairs = [(s, cid[best, s], cid[chosen[s], s]) for s in seeds]
        both = compare_trials(t, predictions, pairs, metric)[1] if predictions is not None and pairs else None
        found.append((method, chosen, regret, both, cross_fitted_regret(acc, chosen)))
    adjusted = holm([regret.p if regret is not None else None for _, _, regret, _, _ in found])
    rows = []
    for (method, chosen, regret, both, crossed), p in zip(found, adjusted):
        picks = pd.Series([chosen[s] for s in sorted(chosen)])
        cost = [seconds[f"{method}/{s}"] for s in chosen if seconds and f"{method}/{s}" in seconds]
        cost_s = float(np.mean(cost)) if cost else float("nan")
        rows.append(
            {
                "method": method,
                "chosen": ", ".join(f"{s}: {chosen[s]}" for s in sorted(chosen)),
                "rank": ", ".join(str(rank.get(chosen[s], "–")) for s in sorted(chosen)),
                "regret (points, 95% CI)": str(regret) if regret else "–",
                "p (Holm)": f"{p:.3f}" if p is not None else "–",
                "regret, seeds + images": str(both) if both else "–",
                "regret, cross-fitted (points)": f"{crossed:+.1f}" if crossed == crossed else "–",
                "cross-fitted / oracle spread": crossed / spread if spread > 0 and crossed == crossed else float("nan"),
                "top-2 rate": float(np.mean([chosen[s] in top2 for s in chosen])) if chosen else float("nan"),
                "agreement": float(picks.value_counts().iloc[0] / len(picks)),
                "cost_s": cost_s,
                "oracle_s": float(oracle_s),
                "cost / oracle": cost_s / oracle_s if oracle_s and oracle_s == oracle_s else float("nan"),
                "rank correlation (Spearman)": rank_correlation(method, affinity or {}, ranking),
            }
        )
    return pd.DataFrame(rows)


def rank_correlation(method: str, affinity: dict[str, dict], ranking: pd.DataFrame) -> float:
    """Spearman's correlation between the scores `method` gives the oracle's partitions from its affinity
    matrix of each seed (`grouping.scheme_score`, what its choice maximises) and the partitions' mean
    accuracy over the oracle's seeds, averaged over the seeds with a matrix; NaN without one. Partitions a
    score cannot rank (no within-group pair: -inf) are left out."""
    import torch  # here: the rest of the report reads Parquet, and torch costs a second at start-up

    rhos = []
    for key, entry in affinity.items():
        if key.rsplit("/", 1)[0] != method:
            continue
        tasks, matrix = tuple(entry["tasks"]), torch.tensor(entry["matrix"])  # (T, T)
        scores = pd.Series(
            [scheme_score(method, matrix, Partition(tasks, parse_groups(str(p)))) for p in ranking["partition"]]
        )
        finite = np.isfinite(scores.to_numpy())
        if finite.sum() >= 3:  # fewer points have no meaningful rank correlation
            # Spearman's rho: Pearson's r of the ranks (ties share their mean rank), without scipy
            acc = ranking["mean"].reset_index(drop=True)[finite]
            rho = scores[finite].rank().corr(acc.rank())
            if rho == rho:
                rhos.append(rho)
    return float(np.mean(rhos)) if rhos else float("nan")


def cross_fitted_regret(acc: dict[tuple[str, int], float], chosen: dict[int, str]) -> float:
    """A method's regret without the winner's curse: the seeds are split in two halves (alternating, in seed
    order); the best partition is the one with the highest mean accuracy on one half, and the method's
    regret against it is scored on the other half's seeds; then the halves swap roles. The mean of the
    per-seed regrets of both directions (NaN with fewer than 2 seeds)."""
    seeds = sorted({s for _, s in acc} & set(chosen))
    halves = (seeds[0::2], seeds[1::2])
    regrets = []
    for pick, score in (halves, halves[::-1]):
        if not pick or not score:
            continue
        partitions = {p for p, s in acc if s in pick}
        means = {p: np.mean([acc[p, s] for s in pick if (p, s) in acc]) for p in partitions}
        best = max(sorted(means), key=lambda p: means[p])  # sorted: ties go to the same partition every time
        regrets += [acc[best, s] - acc[chosen[s], s] for s in score if (best, s) in acc and (chosen[s], s) in acc]
    return float(np.mean(regrets)) if regrets else float("nan")


def partition_spread(
    trials: pd.DataFrame, predictions: pd.DataFrame | None = None, groups: int = 2, metric: str = "test_mean"
) -> dict | None:
    """How much the choice of partition matters: the best minus the worst ranked partition with `groups`
    groups, paired by seed (and by image), and that gap in units of the larger of their seed stds.
    None when the ranking has fewer than two such partitions."""
    ranking = oracle_ranking(trials, metric)
    if ranking is None:
        return None
    ranked = ranking[[len(parse_groups(str(p))) == groups for p in ranking["partition"]]]
    if len(ranked) < 2:
        return None
    best, worst = ranked.iloc[0], ranked.iloc[-1]
    t = completed(trials)
    cid = {(str(p), int(s)): str(c) for p, s, c in zip(t["partition"], t["seed"], t[CONFIG_ID])}
    seeds = sorted({s for p, s in cid if p == best["partition"]} & {s for p, s in cid if p == worst["partition"]})
    pairs = [(s, cid[best["partition"], s], cid[worst["partition"], s]) for s in seeds]
    by_seed, by_image = compare_trials(t, predictions if predictions is not None else pd.DataFrame(), pairs, metric)
    std = float(max(best["std"], worst["std"]))
    gap = float(best["mean"] - worst["mean"])
    return {
        "best": str(best["partition"]),
        "worst": str(worst["partition"]),
        "gap": gap,
        "by_seed": by_seed,
        "by_image": by_image,
        "gap_in_stds": gap / std if std > 0 else float("inf"),
    }
