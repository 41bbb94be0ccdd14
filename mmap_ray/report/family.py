"""The benchmark family's oracle (`--preset family`): on each instance every two-group partition is trained,
and each grouping method is scored on each instance, then over instances.

The instances differ in their factors and domain roles (`data/family.py`), so a partition's name means
something else on each one: partitions are ranked within an instance, never averaged across instances, and
an instance is the unit of the intervals (each instance is trained once per partition, with the seed that
drew it). Per method:

- regret against the planted partition, on the instances that have one (conflict): the planted partition
  is fixed before any training, so this regret has no winner's curse;
- regret against the instance's best trained partition: in sample (the best of several noisy accuracies,
  so it is biased upwards: a method that picked the truly best partition still shows a regret);
- how often it chose the planted partition, and the instance's best one;
- its regret against the planted partition minus random's, paired by instance: whether it beats chance.
  These comparisons are one family, Holm-adjusted (`stats.holm`).

Intervals are 95% t intervals over instances (`stats.seed_interval`), with the minimum detectable effect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.family import instance
from ..grouping import AFFINITY_SCHEMES, FIXED_SCHEMES, Partition, parse_groups
from ..stats import holm, seed_interval
from .load import completed

TASKS = ("Art", "Clipart", "Product", "RealWorld")


def is_family(trials: pd.DataFrame) -> bool:
    """Whether these are the trials of a family study (every row on the family benchmark)."""
    return len(trials) > 0 and "dataset" in trials and bool((trials["dataset"].astype(str) == "family").all())


def _canonical(text: str) -> str:
    return str(Partition(TASKS, parse_groups(text)))


def _accuracies(trials: pd.DataFrame, metric: str) -> dict[int, dict[str, float]]:
    """instance (data_seed) -> {partition: accuracy} over the completed two-group trials."""
    t = completed(trials)
    t = t[t["partition"].notna() & t[metric].notna()]
    out: dict[int, dict[str, float]] = {}
    for p, inst, acc in zip(t["partition"].astype(str), t["data_seed"], t[metric]):
        if len(parse_groups(p)) == 2:
            out.setdefault(int(inst), {})[_canonical(p)] = float(acc)
    return out


def family_instances(
    trials: pd.DataFrame, partitions: dict[str, str] | None = None, metric: str = "test_mean"
) -> pd.DataFrame:
    """One row per instance: its factors, its best partition and the planted one's rank among the partitions
    trained on it, the spread (best minus worst, points), and with `partitions` ("scheme/seed" -> the
    partition chosen) what each grouping method chose on it."""
    chose = {m["method"]: m["picks"] for m in _methods(trials, partitions, None, metric)} if partitions else {}
    rows = []
    for inst, acc in sorted(_accuracies(trials, metric).items()):
        ranked = sorted(acc, key=lambda p: (-acc[p], p))
        planted = instance(inst).planted
        rows.append(
            {
                **instance(inst).factors(),
                "partitions": len(acc),
                "best": ranked[0],
                "best accuracy": acc[ranked[0]],
                "planted rank": ranked.index(planted) + 1 if planted in acc else None,
                "spread": acc[ranked[0]] - acc[ranked[-1]],
                **{f"{method} chose": picks.get(inst, "–") for method, picks in chose.items()},
            }
        )
    return pd.DataFrame(rows)


def _methods(trials: pd.DataFrame, partitions: dict[str, str], seconds: dict[str, float] | None, metric: str):
    """Per grouping method in `partitions` ("scheme/seed" -> the partition it chose): (method, picks per
    instance, regret vs planted and vs the instance's best as `Difference`s, rates, cost and oracle seconds)."""
    acc = _accuracies(trials, metric)
    seed_to_instance = {int(s): int(d) for s, d in zip(trials["seed"], trials["data_seed"])}
    done = completed(trials)
    done = done[[len(parse_groups(str(p))) == 2 for p in done["partition"].fillna("A")]] if len(done) else done
    oracle_s = done.groupby("data_seed")["wall_s"].sum().mean() if "wall_s" in done and len(done) else float("nan")
    for method in sorted({k.rsplit("/", 1)[0] for k in partitions} & set(AFFINITY_SCHEMES + FIXED_SCHEMES)):
        picks, cost = {}, []  # instance -> chosen partition, where the instance's partitions were all trained
        for key, chosen in partitions.items():
            scheme, seed = key.rsplit("/", 1)
            inst = seed_to_instance.get(int(seed))
            if scheme == method and inst in acc and _canonical(chosen) in acc[inst]:
                picks[inst] = _canonical(chosen)
                cost += [seconds[key]] if seconds and key in seconds else []
        if not picks:
            continue
        best = {i: max(sorted(acc[i]), key=lambda p: acc[i][p]) for i in picks}
        planted = {i: instance(i).planted for i in picks if instance(i).planted in acc[i]}
        regret = {i: acc[i][planted[i]] - acc[i][picks[i]] for i in planted}  # instance -> points
        yield {
            "method": method,
            "picks": picks,
            "planted": planted,
            "regret": regret,
            "vs_planted": seed_interval(np.array(list(regret.values()))),
            "vs_best": seed_interval(np.array([acc[i][best[i]] - acc[i][picks[i]] for i in picks])),
            "chose_planted": float(np.mean([picks[i] == planted[i] for i in planted])) if planted else None,
            "chose_best": float(np.mean([picks[i] == best[i] for i in picks])),
            "cost_s": float(np.mean(cost)) if cost else float("nan"),
            "oracle_s": float(oracle_s),
        }


def family_scores(
    trials: pd.DataFrame, partitions: dict[str, str], seconds: dict[str, float] | None = None, metric: str = "test_mean"
) -> pd.DataFrame:
    """One row per grouping method in `partitions` ("scheme/seed" -> the partition it chose): its regret
    against the planted partition and against the instance's best, with 95% intervals over instances, how
    often it chose each, its regret minus random's paired by instance (Holm-adjusted over the methods), and
    what choosing cost (seconds per instance, and against training every partition)."""
    methods = list(_methods(trials, partitions, seconds, metric))
    chance = next((m["regret"] for m in methods if m["method"] == "random"), {})
    against = {  # method -> regret minus random's over the instances both were scored on
        m["method"]: seed_interval(np.array([m["regret"][i] - chance[i] for i in sorted(m["regret"]) if i in chance]))
        for m in methods
        if m["method"] != "random"
    }
    adjusted = dict(zip(against, holm([d.p if d is not None else None for d in against.values()])))
    rows = []
    for m in methods:
        vs_planted, vs_best, vs_random = m["vs_planted"], m["vs_best"], against.get(m["method"])
        p = adjusted.get(m["method"])
        rows.append(
            {
                "method": m["method"],
                "instances": len(m["picks"]),
                "regret vs planted (points, 95% CI)": str(vs_planted) if vs_planted else "–",
                "planted: instances": len(m["planted"]),
                "planted: MDE": round(vs_planted.mde, 1) if vs_planted and vs_planted.mde is not None else None,
                "chose planted": m["chose_planted"],
                "regret minus random's (paired, 95% CI)": str(vs_random) if vs_random else "–",
                "p vs random (Holm)": f"{p:.3f}" if p is not None else "–",
                "regret vs instance best, in sample": str(vs_best) if vs_best else "–",
                "chose instance best": m["chose_best"],
                "choosing (s per instance)": m["cost_s"],
                "choosing / oracle": m["cost_s"] / m["oracle_s"] if m["oracle_s"] == m["oracle_s"] else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def family_regret_points(
    trials: pd.DataFrame, partitions: dict[str, str], seconds: dict[str, float] | None = None, metric: str = "test_mean"
) -> pd.DataFrame:
    """The regret-against-cost figure's points: per method, regret vs planted (points, 95% interval over
    instances) and its cost as a fraction of training every partition (0 for the free schemes)."""
    rows = []
    for m in _methods(trials, partitions, seconds, metric):
        d = m["vs_planted"]
        if d is None:
            continue
        cost = m["cost_s"] / m["oracle_s"] if m["cost_s"] == m["cost_s"] and m["oracle_s"] else 0.0
        rows.append({"method": m["method"], "cost": cost, "regret": d.diff, "low": d.low, "high": d.high})
    return pd.DataFrame(rows, columns=["method", "cost", "regret", "low", "high"])
