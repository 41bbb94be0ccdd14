"""The report's figures from a loaded study: the data each figure shows, handed to `plots` to draw.

Why apart from `plots`: choosing what to show (which configurations, which trial is a scheme's best, how the
tasks are ordered, whether a setting varies at all) is pandas work on a `Study`, while `plots` only draws
tidy frames. Each `*_figure` function returns `(figure, None)`, or `(None, reason)` when the study lacks what
the figure needs, so the report shows a note in its place instead of failing.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..grouping import parse_groups
from . import plots
from .load import METRIC_LABELS, Study, accuracy_columns, completed
from .tables import ablation_table, baseline_comparisons, config_labels, leaderboard

Made = tuple[Figure | None, str | None]  # a figure, or None and the reason it is left out
AFFINITY_LABELS = {
    "tag": "tag (TAG): Z[i→j] over the joint run",
    "gradient": "gradient probe: cos(g_i, g_j)",
    "lookahead": "lookahead probe: Z[i→j] through AdamW",
}
MAX_AFFINITY_PANELS = 9
ABLATIONS = {  # setting column -> (x label, title, preset that varies it)
    "n_tokens": ("prompt length (tokens per layer, log scale)", "Accuracy vs prompt length", "ablation-prompt-length"),
    "depth": ("alignment depth (number of layers with prompts)", "Accuracy vs alignment depth", "ablation-layers"),
}


def _ylabel(trials: pd.DataFrame) -> str:
    return f"{METRIC_LABELS[accuracy_columns(trials)[0]]}, mean over tasks (%)"


def _points(kind: str, labels: list[str], table: pd.DataFrame) -> pd.DataFrame:
    """Trade-off points from a leaderboard-shaped table: label, params, acc, acc_std (mean over seeds), kind."""
    return pd.DataFrame(
        {
            "kind": kind,
            "label": labels,
            "params": table[("trainable params", "mean")].to_numpy(),
            "acc": table[("mean (%)", "mean")].to_numpy(),
            "acc_std": table[("mean (%)", "std")].to_numpy(),
        }
    )


def tradeoff_figure(study: Study) -> Made:
    """The accuracy vs trainable-parameters figure (the paper's Figure 1 shape), or None with a reason."""
    board = leaderboard(study.trials)
    if board.empty or "trainable params" not in board:
        return None, "No completed trial with accuracy and trainable_params: the trade-off plot is left out."
    points = _points("study", config_labels(board.index), board)
    zero_shot = None
    base = baseline_comparisons(study.baselines) if not study.baselines.empty else pd.DataFrame()
    if "trainable params" in base:
        zero = base[("trainable params", "mean")] == 0
        if zero.any():
            zero_shot = float(base.loc[zero, ("mean (%)", "mean")].iloc[0])
        trained = base[~zero]
        points = pd.concat(
            [points, _points("baseline", [f"{m} (baseline)" for m in trained.index], trained)], ignore_index=True
        )
    t = study.trials
    frozen = (
        (t["total_params"] - t["trainable_params"]).median() if {"total_params", "trainable_params"} <= set(t) else None
    )
    return plots.tradeoff(points, _ylabel(t), zero_shot, frozen if frozen and frozen > 0 else None), None


BUDGET_SETTINGS = ("n_tokens", "source_dim", "adapter_reduction")  # what moves a design along its line


def _design_name(variant: str) -> str:
    """'projection=clip-adapter; adapter_reduction=4' -> 'clip-adapter': a design without its budget."""
    items = [i.strip() for i in variant.split(";") if i.strip().partition("=")[0].strip() not in BUDGET_SETTINGS]
    return "; ".join(i.removeprefix("projection=") for i in items)


def design_points(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (design, budget): design (the variant, else the projection), params and accuracy (mean
    and std over seeds, %). Budgets of a design are its distinct trainable-parameter counts."""
    metric, _ = accuracy_columns(trials)
    if metric is None or "trainable_params" not in trials:
        return pd.DataFrame(columns=["design", "params", "acc", "acc_std"])
    t = completed(trials).dropna(subset=["trainable_params", metric])
    if t.empty:
        return pd.DataFrame(columns=["design", "params", "acc", "acc_std"])
    variants = t["variant"].astype(object).where(t["variant"].notna(), "") if "variant" in t else [""] * len(t)
    design = pd.Series(
        [_design_name(str(v) or str(p)) for v, p in zip(variants, t["projection"].astype(object))], index=t.index
    )
    acc = t[metric].groupby([design.rename("design"), t["trainable_params"].rename("params")])
    out = acc.agg(acc="mean", acc_std="std").reset_index()
    return out.fillna({"acc_std": 0.0})


def budget_figure(study: Study) -> Made:
    """One line per design through its budgets, or None with a reason when the study compares no designs."""
    points = design_points(study.trials)
    if points["design"].nunique() < 2 or points.groupby("design").size().max() < 2:
        return None, (
            "The study does not compare designs at several budgets (run `--preset designs-budget`): the "
            "matched-budget figure is left out."
        )
    return plots.budget_lines(points, _ylabel(study.trials)), None


def affinity_panels(study: Study) -> list[dict]:
    """One panel per affinity matrix in partitions.json: tasks ordered by the chosen partition, groups listed."""
    panels = []
    for key, entry in study.affinity.items():
        scheme, _, seed = key.partition("/")
        tasks = list(entry["tasks"])
        partition = study.partitions.get(key, "")
        groups = [[t for t in g if t in tasks] for g in parse_groups(partition)] if partition else []
        order = [t for g in groups for t in g]
        order += [t for t in tasks if t not in order]
        matrix = pd.DataFrame(entry["matrix"], index=tasks, columns=tasks).loc[order, order]
        title = f"{scheme}, seed {seed}\n{partition or 'no partition recorded'}"
        panels.append({"title": title, "scheme": scheme, "tasks": order, "matrix": matrix, "groups": groups})
    return panels


def affinity_figure(study: Study) -> Made:
    """The task-affinity heatmaps (the first `MAX_AFFINITY_PANELS`), or None with a reason."""
    panels = affinity_panels(study)[:MAX_AFFINITY_PANELS]
    if not panels:
        return None, "No affinity matrix in the study (no gradient or lookahead scheme, or no partitions.json)."
    return plots.affinity_heatmaps(panels, AFFINITY_LABELS), None


def curve_panels(study: Study) -> list[dict]:
    """Per scheme: the best trial's per-task validation curves (%) and its other trials' mean curves."""
    e, t = study.epochs, study.trials.set_index("trial_id")
    if e.empty or not {"trial_id", "epoch", "task", "val_acc"} <= set(e.columns):
        return []
    curves = e.pivot_table(index=["trial_id", "epoch"], columns="task", values="val_acc", observed=True)
    if "val_mean" in e:  # the epoch's mean over tasks, a column of every row ("mean" is no task's name)
        curves["mean"] = e.groupby(["trial_id", "epoch"])["val_mean"].first()
    rank = next((c for c in ("val_mean_best", "val_mean_final", "test_mean") if c in t), None)
    panels = []
    for scheme, ids in (
        t[t.index.isin(curves.index.get_level_values(0))].groupby("scheme", observed=True).groups.items()
    ):
        scores = t.loc[ids, rank].astype(float).fillna(-1) if rank else pd.Series(0.0, index=ids)
        best = scores.idxmax()
        others = [
            {
                "curve": curves.loc[i]["mean"] if "mean" in curves else curves.loc[i].mean(axis=1),
                "outcome": t.loc[i, "outcome"],
            }
            for i in ids
            if i != best
        ]
        stopped = ", stopped early" if t.loc[best, "outcome"] == "stopped early" else ""
        where = f"{t.loc[best, 'partition']} s{t.loc[best, 'seed']}" if "partition" in t else best
        panels.append(
            {
                "title": f"{scheme}: {where} (best of {len(ids)} trial{'s' * (len(ids) > 1)}{stopped})",
                "best": curves.loc[best].dropna(axis=1, how="all"),
                "others": others,
            }
        )
    return panels


def curves_figure(study: Study) -> Made:
    """The learning curves of each scheme's best trial, or None with a reason."""
    panels = curve_panels(study)
    if not panels:
        return None, "No per-epoch rows: no learning curves."
    return plots.learning_curves(panels), None


def ablation_figure(study: Study, setting: str) -> Made:
    """Accuracy against one setting, or None with a reason when the study does not vary it."""
    xlabel, title, preset = ABLATIONS[setting]
    metric, _ = accuracy_columns(study.trials)
    t = study.trials
    if metric is None or setting not in t:
        return None, f"No {setting} or accuracy column in the rows: '{title}' is left out."
    values = completed(t)[setting].dropna().unique()
    if len(values) < 2:
        shown = f"{setting} {', '.join(map(str, values))}" if len(values) else "the default alignment layers"
        return None, f"'{title}': every completed trial has {shown}; run the study with `--preset {preset}` to vary it."
    return plots.ablation(ablation_table(t, setting), xlabel, _ylabel(t), title, log2=setting == "n_tokens"), None


def regret_cost_figure(points: pd.DataFrame, ylabel: str, title: str) -> Made:
    """Each grouping method's regret against its cost (`plots.regret_cost`), or None with a reason."""
    points = points[points["regret"].notna()]
    if points.empty:
        return None, "No grouping method's choice could be scored: the regret-against-cost figure is left out."
    return plots.regret_cost(points, ylabel, title), None


def oracle_regret_points(scores: pd.DataFrame) -> pd.DataFrame:
    """The oracle section's figure points from `oracle.method_scores`: the cross-fitted regret as a share of the
    oracle's spread (no interval: two halves of the seeds) against the cost fraction (0 where nothing ran)."""
    return pd.DataFrame(
        {
            "method": scores["method"],
            "cost": scores["cost / oracle"].fillna(0.0),
            "regret": scores["cross-fitted / oracle spread"],
            "low": float("nan"),
            "high": float("nan"),
        }
    )
