"""A study's report: pandas tables and matplotlib figures from its Parquet results, as Markdown and HTML.

Why: a study's rows (`mmap_ray.results`) answer "which grouping and prompt design works best, and at what
cost" only once they are aggregated over seeds and drawn. This module does it with pandas (`groupby`,
`pivot_table`) and `mmap_ray.plots`, without Ray, so `mmap-ray report`, `analysis/report.py`, the main
study and the notebooks share one implementation. Every section degrades to a note when the files or
columns it needs are missing (a smoke study has one seed, a search has no affinity, a failed trial no
accuracy), never to a crash.

Identity. The leaderboard and every comparison group trials by `config_id` (the configuration without the
training seed), never by a label: two partitions under one scheme name are two rows, and two schemes that
chose the same configuration (e.g. gradient and look-ahead grouping) are one row that names both. Each row
shows its scheme(s), partition, projection, prompt length and depth, plus whatever else varies.

Ownership. The report folder is ours only if we wrote it: `.mmap-ray-report.json` lists the files we wrote,
a rewrite removes only the figures listed there that are no longer produced, and a non-empty folder without
it is refused.

    from mmap_ray.report import build_report
    paths = build_report("runs/studies/grouping/results")   # runs/studies/grouping/report/report.{md,html}
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .results import EPOCHS, TRIALS, load
from .storage import Location, location

BASELINES = "baselines"
# The paper's comparisons: (slug, label, projection kind of a study row that is this method)
COMPARISONS = (
    ("zero-shot", "zero-shot", None),
    ("text-only", "text-only (CoOp-deep)", "text"),
    ("visual-only", "visual-only (VPT-deep)", "visual"),
    ("maple-style", "MaPLe-style (linear)", "linear"),
    ("ivlp", "independent (IVLP)", "independent"),
    ("mmap", "MmAP (kron)", "kron"),
    ("full-ft", "full fine-tuning", None),
)
METHOD_SLUGS = {label: slug for slug, label, _ in COMPARISONS}
PROJECTION_METHODS = {proj: label for _, label, proj in COMPARISONS if proj}
AFFINITY_LABELS = {"gradient": "gradient: cos(g_i, g_j)", "lookahead": "lookahead: TAG Z[i→j]"}
# A leaderboard row: its configuration's identity, the settings always shown, and those shown when they vary
CONFIG_ID = "config_id"
SHOWN_KEYS = ("scheme", "partition", "projection", "n_tokens", "depth")
VARYING_KEYS = ("layers", "combine", "lr", "epochs", "batch_size", "data_seed", "dataset", "model", "pretrained")
MAX_AFFINITY_PANELS = 9
NUMERIC = (
    r"(val|test)_.+|trainable_params|total_params|device_hours|wall_s|epochs_run|epochs|seed|data_seed|n_tokens|"
    r"depth|k|lr|batch_size"
)
MANIFEST = ".mmap-ray-report.json"  # in a report folder: the files `write_report` wrote there
FIGURE_NAME = r"figures/[A-Za-z0-9_.-]+\.png"  # the only files a rewrite ever removes


# ---- loading ------------------------------------------------------------------------------------------


@dataclass
class Study:
    """A study's tables and side files, plus notes on whatever was missing."""

    results: Location
    trials: pd.DataFrame
    epochs: pd.DataFrame
    partitions: dict[str, str]
    affinity: dict[str, dict]
    baselines: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _folder(path: str | Path | Location, table: str, field: str) -> Location:
    """`path`, or `path/results` when that holds `table` (a study folder rather than its results folder)."""
    root = location(path, field)
    if not (root / table).is_dir() and (root / "results" / table).is_dir():
        root = root / "results"
    return root


def results_folder(path: str | Path | Location) -> Location:
    """The results folder at `path` (local or s3:// / gs://); ValueError naming it when it is not one."""
    try:
        root = _folder(path, TRIALS, "RESULTS")
        if not root.exists():
            raise ValueError(f"results folder {root} does not exist")
    except OSError as e:  # an unreachable object store
        raise ValueError(f"cannot reach {path}: {e}") from None
    if not (root / TRIALS).is_dir():
        raise ValueError(f"{root} is not a study results folder: it has no {TRIALS}/ subfolder ({TRIALS}/*.parquet)")
    return root


def _has_files(folder: Location) -> bool:
    return bool(folder.glob("*.parquet"))


def load_baselines(path: str | Path | Location) -> pd.DataFrame:
    """The comparison runs written by studies/toy_baselines.py (its --out folder or its results folder)."""
    root = _folder(path, BASELINES, "--baselines")
    if not _has_files(root / BASELINES):
        raise ValueError(
            f"--baselines {path} holds no {BASELINES}/*.parquet rows (studies/toy_baselines.py writes them)"
        )
    try:
        return load(root, BASELINES)
    except (ValueError, OSError) as e:  # only files of other tools, a newer schema, a damaged file
        raise ValueError(f"--baselines {path}: cannot read the rows in {root / BASELINES}: {e}") from e


def _table(root: Location, table: str) -> pd.DataFrame:
    """`root/table` as a DataFrame, empty when it holds no Parquet file; ValueError naming `root` if unreadable."""
    if not _has_files(root / table):
        return pd.DataFrame()
    try:
        return load(root, table)
    except (ValueError, OSError) as e:  # a newer schema, a damaged file, only files of other tools
        raise ValueError(f"cannot read the results in {root}: {e}") from e


def _load_tables(root: Location) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Trials and epochs, and the warnings of `load` (files it skipped), which are also re-issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trials, epochs = _table(root, TRIALS), _table(root, EPOCHS)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return trials, epochs, [str(w.message) for w in caught if w.category is UserWarning]


def load_study(results: str | Path | Location, baselines: str | Path | Location | None = None) -> Study:
    """Trials, epochs, partitions.json and optional baselines of one study; ValueError if there is nothing to report."""
    root = results_folder(results)
    trials, epochs, skipped = _load_tables(root)
    if trials.empty:
        raise ValueError(f"{root} holds no trial rows yet ({TRIALS}/*.parquet): nothing to report")
    study = Study(root, prepare(trials), epochs, {}, {}, pd.DataFrame())
    study.notes += [f"Not read: {message}." for message in skipped]
    repeats = int(study.trials.duplicated([CONFIG_ID, "seed"], keep=False).sum()) if "seed" in trials else 0
    if repeats:
        study.notes.append(
            f"{repeats} trial rows repeat a (config_id, seed) pair (results of a study run twice before "
            "schema v2): the leaderboard counts each of them as a seed."
        )
    if study.epochs.empty:
        study.notes.append(f"No per-epoch table ({root / EPOCHS}): learning curves are left out.")
    side = root.parent / "partitions.json"
    if side.exists():
        saved = json.loads(side.read_text())
        study.partitions, study.affinity = saved.get("partitions", {}), saved.get("affinity", {})
    else:
        study.notes.append(f"No {side}: the task-affinity matrices are left out.")
    if baselines is not None:
        study.baselines = load_baselines(baselines)
    return study


def default_out(results: Location) -> Path:
    """RESULTS/../report for local results; for object storage, `<study>-report` in the current folder."""
    if results.is_local:
        return Path(results.parent.path) / "report"
    return Path.cwd() / f"{results.parent.name}-report"


def numeric(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with the metric and count columns numeric (files with all-null columns make them `object`)."""
    cols = [c for c in df if re.fullmatch(NUMERIC, c)]
    return df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in cols})


def prepare(trials: pd.DataFrame) -> pd.DataFrame:
    """Trial rows with the columns the report derives: outcome, integer depth, trainable %.

    `layers` stays a list per row (None: the backbone's default layers); `depth` is its length, nullable.
    """
    if CONFIG_ID not in trials:
        raise ValueError(
            f"the trial rows have no {CONFIG_ID!r} column: read them with mmap_ray.results.load, which upgrades "
            "results of older schemas"
        )
    df = numeric(trials)
    df[CONFIG_ID] = df[CONFIG_ID].astype(str)
    status = df["status"].astype(str) if "status" in df else pd.Series("TERMINATED", index=df.index)
    stopped = df["early_stopped"].fillna(False).astype(bool) if "early_stopped" in df else False
    df["outcome"] = np.where(status != "TERMINATED", "failed", np.where(stopped, "stopped early", "completed"))
    if "depth" not in df and "layers" in df:
        df["depth"] = [None if _no_value(v) else len(v) for v in df["layers"]]
    if "depth" in df:
        df["depth"] = pd.to_numeric(df["depth"], errors="coerce").astype("Int64")
    if {"trainable_params", "total_params"} <= set(df.columns):
        df["trainable_pct"] = 100 * df["trainable_params"] / df["total_params"]
    return df


def _no_value(value: object) -> bool:
    """None or a missing scalar (NaN, pd.NA); a list or array is a value, even an empty one."""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def format_layers(layers: Iterable[int] | None) -> str:
    """Block indices as text for display: [0, 1, 2] -> '0-2', [0, 2, 4] -> '0,2,4', [] -> 'none', None -> 'default'."""
    if _no_value(layers):
        return "default"
    indices = sorted(int(i) for i in layers)
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


def scheme_names(labels: Iterable[object]) -> list[str]:
    """The grouping schemes in scheme labels ('gradient, lookahead' names two), sorted, each once."""
    return sorted({s.strip() for label in labels if not _no_value(label) for s in str(label).split(",") if s.strip()})


def accuracy_columns(trials: pd.DataFrame) -> tuple[str | None, dict[str, str]]:
    """The mean-accuracy column the report ranks by (test, else final validation) and its per-task columns."""
    for mean, pattern in (
        ("test_mean", r"test_(.+)"),
        ("val_mean_final", r"val_(.+)_final"),
        ("val_mean_best", r"val_(.+)_best"),
    ):
        if mean in trials and trials[mean].notna().any():
            tasks = {m.group(1): c for c in trials.columns if (m := re.fullmatch(pattern, c)) and m.group(1) != "mean"}
            return mean, tasks
    return None, {}


METRIC_LABELS = {
    "test_mean": "test accuracy",
    "val_mean_final": "final validation accuracy",
    "val_mean_best": "best validation accuracy",
}


# ---- tables -------------------------------------------------------------------------------------------


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["outcome"] == "completed"]


def _as_shown(values: pd.Series, key: str) -> pd.Series:
    """A setting's values as the report shows them: layers as text ('0-2'), categories as plain objects."""
    if key == "layers":
        return values.map(format_layers)
    return values.astype(object) if isinstance(values.dtype, pd.CategoricalDtype) else values


def configurations(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per `config_id` of `trials`: its scheme(s), the settings always shown, and those that vary.

    `scheme` joins every scheme that chose the configuration ('gradient, lookahead'); the other settings are
    part of the configuration, so each has one value per `config_id`. `layers` is shown (as text) only when
    the depth does not tell it.
    """
    first = trials.drop_duplicates(CONFIG_ID).set_index(CONFIG_ID)
    out = pd.DataFrame(index=first.index)
    if "scheme" in trials:
        out["scheme"] = trials.groupby(CONFIG_ID, sort=False)["scheme"].agg(lambda s: ", ".join(scheme_names(s)))
    for key in SHOWN_KEYS[1:]:
        if key in first:
            out[key] = _as_shown(first[key], key)
    for key in (k for k in VARYING_KEYS if k in first):
        values = _as_shown(first[key], key)
        text = values.astype(str)
        if key == "layers" and "depth" in out:  # shown only where the depth does not tell it
            varies = text.groupby(out["depth"].astype(str)).nunique().max() > 1
        else:
            varies = text.nunique() > 1
        if varies:
            out[key] = values
    return out


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials grouped by `config_id`: mean, std (over seeds) of accuracy (%), params and costs.

    Rows are indexed by the configuration's settings (`configurations`) and its `config_id`, last; columns
    are a MultiIndex (quantity, statistic); rows are sorted by mean accuracy, best first.
    """
    metric, tasks = accuracy_columns(trials)
    done = completed(trials)
    if metric is None or done.empty:
        return pd.DataFrame()
    acc = {col: f"{task} (%)" for task, col in tasks.items()} | {metric: "mean (%)"}
    extra = {"trainable_params": "trainable params", "trainable_pct": "trainable %", "device_hours": "device-h / trial"}
    values = done[[CONFIG_ID]].assign(
        **{name: 100 * done[col] for col, name in acc.items()},
        **{name: done[col] for col, name in extra.items() if col in done},
    )
    grouped = values.groupby(CONFIG_ID, sort=False)
    table = grouped.agg(["mean", "std"])
    table[("trials", "n")] = grouped.size()
    settings = configurations(done).loc[table.index]
    table.index = pd.MultiIndex.from_frame(settings.reset_index()[[*settings.columns, CONFIG_ID]])
    return table.sort_values(("mean (%)", "mean"), ascending=False, kind="stable")


def _cells(values: pd.Series, fmt: str) -> pd.Series:
    return values.map(lambda v: "" if pd.isna(v) else fmt.format(v))


FORMATS = {"trainable params": "{:,.0f}", "trainable %": "{:.3f}", "device-h / trial": "{:.4f}"}  # else "{:.1f}"


def mean_std(table: pd.DataFrame) -> pd.DataFrame:
    """A (quantity, mean/std) table as readable 'mean ± std' cells; one-seed rows show the mean alone."""
    out = pd.DataFrame(index=table.index)
    for name in table.columns.get_level_values(0).unique():
        part = table.loc[:, [name]].droplevel(0, axis=1)
        if "mean" not in part:
            out[name] = part.iloc[:, 0]
            continue
        if part["mean"].isna().all():  # a quantity no row has (e.g. total_params of old baseline rows)
            continue
        fmt = FORMATS.get(name, "{:.1f}")
        std = part["std"].where(part["std"] > 0) if name.startswith("trainable") else part["std"]
        out[name] = _cells(part["mean"], fmt).replace("", "–") + _cells(std, " ± " + fmt)
    return out


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A table with its index as columns, for Markdown and HTML: a missing depth reads 'default'."""
    flat = table.reset_index()
    if "depth" in flat:
        flat["depth"] = flat["depth"].astype(object).where(flat["depth"].notna(), "default")
    return flat


def status_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials per scheme label and outcome (completed, stopped early, failed)."""
    table = trials.pivot_table(
        index="scheme", columns="outcome", values="trial_id", aggfunc="count", fill_value=0, observed=True
    )
    table = table.reindex(columns=["completed", "stopped early", "failed"], fill_value=0)
    table["total"] = table.sum(axis=1)
    return table.rename_axis(columns=None)


def failures(trials: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("trial_id", "scheme", "partition", "seed", "epochs_run", "error") if c in trials]
    return trials.loc[trials["outcome"] == "failed", cols].reset_index(drop=True)


def _word(key: str, value: object) -> str:
    """A setting as a label shows it: the scheme and partition bare, others as 'key value'."""
    if key in ("scheme", "partition"):
        return str(value)
    if key == CONFIG_ID:
        return f"config {str(value)[:8]}"
    return f"{key} {'default' if _no_value(value) else value}"


def describe(settings: pd.Series) -> str:
    """One configuration (a row of `configurations`, with its config_id) in a few words, scheme first."""
    words = [_word(k, v) for k, v in settings.items() if k != CONFIG_ID]
    return ", ".join(words) + (f" ({_word(CONFIG_ID, settings[CONFIG_ID])})" if CONFIG_ID in settings else "")


def study_comparisons(trials: pd.DataFrame) -> pd.DataFrame:
    """Each prompt kind in the study rows as its paper method: its best completed configuration."""
    board = leaderboard(trials)
    if board.empty or "projection" not in board.index.names:
        return pd.DataFrame()
    best = board.groupby(level="projection", sort=False).head(1).copy()
    settings = best.index.to_frame(index=False)
    source = settings.drop(columns="projection").apply(lambda r: "study: " + describe(r), axis=1)
    best.index = pd.Index(settings["projection"].map(lambda p: PROJECTION_METHODS.get(p, p)), name="method")
    best[("source", "")] = source.to_numpy()
    return best


def baseline_comparisons(baselines: pd.DataFrame) -> pd.DataFrame:
    """The baselines' runs per method: mean, std over seeds, in the same layout as `leaderboard`."""
    baselines = numeric(baselines)
    metric, tasks = accuracy_columns(baselines)
    if metric is None:
        return pd.DataFrame()
    values = baselines[["method"]].assign(
        **{f"{task} (%)": 100 * baselines[col] for task, col in tasks.items()},
        **{"mean (%)": 100 * baselines[metric]},
        **{"trainable params": baselines["trainable_params"].fillna(0)} if "trainable_params" in baselines else {},
    )
    if "total_params" in baselines:
        values["trainable %"] = 100 * values["trainable params"] / baselines["total_params"]
    grouped = values.groupby("method", sort=False)
    table = grouped.agg(["mean", "std"])
    table[("trials", "n")] = grouped.size()
    table[("source", "")] = "baselines"
    return table


def comparisons(study: Study) -> pd.DataFrame:
    """The paper's comparison table (rows in the paper's order) from the study's rows and the baselines."""
    frames = [
        f
        for f in (
            baseline_comparisons(study.baselines) if not study.baselines.empty else pd.DataFrame(),
            study_comparisons(study.trials),
        )
        if not f.empty
    ]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames)
    table = table[[c for c in table.columns if c[0] != "source"] + [("source", "")]]
    order = {label: i for i, (_, label, _) in enumerate(COMPARISONS)}
    return table.sort_index(key=lambda methods: methods.map(lambda m: order.get(m, len(order))), kind="stable")


def ablation_table(trials: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Accuracy (%) of completed trials per integer value of `setting` (n_tokens, depth) and scheme label:
    mean, std, count."""
    metric, _ = accuracy_columns(trials)
    done = completed(trials).dropna(subset=[setting])
    done = done.assign(acc=100 * done[metric], **{setting: done[setting].astype("int64")})
    return done.pivot_table(
        index=setting, columns="scheme", values="acc", aggfunc=["mean", "std", "count"], observed=True
    )


def overview(study: Study) -> pd.DataFrame:
    t = study.trials
    metric, tasks = accuracy_columns(t)
    first = lambda col: ", ".join(sorted(map(str, t[col].dropna().unique()))) if col in t else "–"
    facts = {
        "study": first("study"),
        "dataset": first("dataset"),
        "model": first("model"),
        "pretrained": first("pretrained"),
        "tasks": ", ".join(tasks) or "–",
        "trials": len(t),
        "configurations": t[CONFIG_ID].nunique(),
        "schemes": ", ".join(scheme_names(t["scheme"].unique())) if "scheme" in t else "–",
        "seeds": first("seed"),
        "ranked by": METRIC_LABELS.get(metric, "–"),
        "device-hours, all trials": f"{t['device_hours'].sum():.3f}" if "device_hours" in t else "–",
        "device kind": first("device_kind"),
        "git commits": first("git_commit"),
        "schema version": first("schema_version"),
        "results": str(study.results),
    }
    return pd.Series(facts, name="value").to_frame()


# ---- figures ------------------------------------------------------------------------------------------


def config_labels(index: pd.MultiIndex | pd.Index) -> list[str]:
    """Short labels for a leaderboard's configurations: the scheme(s) plus whichever settings vary.

    The partition, then the config id's first 8 digits, are added only to labels that would be equal without
    them (a random scheme that drew two partitions: 'random, Art|Clipart+Product+RealWorld').
    """
    frame = index.to_frame(index=False)
    text = pd.DataFrame({k: [_word(k, v) for v in frame[k]] for k in frame}, index=frame.index)
    varies = frame.astype(str).nunique() > 1
    always = [k for k in text if k == "scheme" or (k not in ("partition", CONFIG_ID) and varies[k])]
    labels = text[always].apply(", ".join, axis=1) if always else pd.Series("", index=frame.index)
    for key in ("partition", CONFIG_ID):
        clash = labels.duplicated(keep=False)
        if key in text and clash.any():
            labels = labels.where(~clash, (labels + ", " + text[key]).str.lstrip(", "))
    return labels.tolist()


def tradeoff_figure(study: Study):
    """The accuracy vs trainable-parameters figure (the paper's Figure 1 shape), or None with a reason."""
    board = leaderboard(study.trials)
    if board.empty or "trainable params" not in board:
        return None, "No completed trial with accuracy and trainable_params: the trade-off plot is left out."
    points = pd.DataFrame(
        {
            "kind": "study",
            "label": config_labels(board.index),
            "params": board[("trainable params", "mean")].to_numpy(),
            "acc": board[("mean (%)", "mean")].to_numpy(),
            "acc_std": board[("mean (%)", "std")].to_numpy(),
        }
    )
    zero_shot = None
    base = baseline_comparisons(study.baselines) if not study.baselines.empty else pd.DataFrame()
    if "trainable params" in base:
        zero = base[("trainable params", "mean")] == 0
        if zero.any():
            zero_shot = float(base.loc[zero, ("mean (%)", "mean")].iloc[0])
        points = pd.concat(
            [
                points,
                pd.DataFrame(
                    {
                        "kind": "baseline",
                        "label": [f"{m} (baseline)" for m in base.index[~zero]],
                        "params": base.loc[~zero, ("trainable params", "mean")],
                        "acc": base.loc[~zero, ("mean (%)", "mean")],
                        "acc_std": base.loc[~zero, ("mean (%)", "std")],
                    }
                ),
            ],
            ignore_index=True,
        )
    t = study.trials
    frozen = (
        (t["total_params"] - t["trainable_params"]).median() if {"total_params", "trainable_params"} <= set(t) else None
    )
    ylabel = f"{METRIC_LABELS[accuracy_columns(t)[0]]}, mean over tasks (%)"
    return plots.tradeoff(points, ylabel, zero_shot, frozen if frozen and frozen > 0 else None), None


def affinity_panels(study: Study) -> list[dict]:
    panels = []
    for key, entry in study.affinity.items():
        scheme, _, seed = key.partition("/")
        tasks = list(entry["tasks"])
        partition = study.partitions.get(key, "")
        groups = [[t for t in g.split("+") if t in tasks] for g in partition.split("|")] if partition else []
        order = [t for g in groups for t in g]
        order += [t for t in tasks if t not in order]
        matrix = pd.DataFrame(entry["matrix"], index=tasks, columns=tasks).loc[order, order]
        title = f"{scheme}, seed {seed}\n{partition or 'no partition recorded'}"
        panels.append({"title": title, "scheme": scheme, "tasks": order, "matrix": matrix, "groups": groups})
    return panels


def curve_panels(study: Study) -> list[dict]:
    """Per scheme: the best trial's per-task validation curves (%) and its other trials' mean curves."""
    e, t = study.epochs, study.trials.set_index("trial_id")
    if e.empty or not {"trial_id", "epoch", "task", "val_acc"} <= set(e.columns):
        return []
    curves = 100 * e.pivot_table(index=["trial_id", "epoch"], columns="task", values="val_acc", observed=True)
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
        stopped = " (stopped early)" if t.loc[best, "outcome"] == "stopped early" else ""
        panels.append(
            {
                "title": f"{scheme}: best of {len(ids)} trial{'s' * (len(ids) > 1)}, {best}{stopped}",
                "best": curves.loc[best].dropna(axis=1, how="all"),
                "others": others,
            }
        )
    return panels


ABLATIONS = {  # setting column -> (x label, title, preset that varies it)
    "n_tokens": ("prompt length (tokens per layer, log scale)", "Accuracy vs prompt length", "ablation-prompt-length"),
    "depth": ("alignment depth (number of layers with prompts)", "Accuracy vs alignment depth", "ablation-layers"),
}


def ablation_figure(study: Study, setting: str):
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
    ylabel = f"{METRIC_LABELS[metric]}, mean over tasks (%)"
    return plots.ablation(ablation_table(t, setting), xlabel, ylabel, title, log2=setting == "n_tokens"), None


# ---- the report ---------------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[pd.DataFrame] = field(default_factory=list)
    figure: str | None = None  # file name under figures/
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    figures: list[Path]


def _save(fig, folder: Path, name: str, figures: list[Path]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
    figures.append(folder / f"{name}.png")
    return f"{name}.png"


def _figure_section(title: str, text: str, made, folder: Path, name: str, figures: list[Path]) -> Section:
    fig, reason = made
    if fig is None:
        return Section(title, notes=[reason])
    return Section(title, text, figure=_save(fig, folder, name, figures))


def sections(study: Study, figures_dir: Path, figures: list[Path]) -> list[Section]:
    t = study.trials
    metric, _ = accuracy_columns(t)
    what = METRIC_LABELS.get(metric, "accuracy")
    out = [Section("Study", tables=[overview(study).reset_index(names="")], notes=list(study.notes))]
    s = Section(
        "Trials",
        "Trials per grouping scheme and outcome. Stopped early: ASHA ended the trial before its "
        "last epoch; its accuracy is left out of the tables below.",
        [status_table(t).reset_index()],
    )
    if (t["outcome"] == "failed").any():
        s.text += " The failed trials follow, with their error files."
        s.tables.append(failures(t))
    out.append(s)

    board = leaderboard(t)
    s = Section(
        "Leaderboard",
        f"Completed trials by configuration (`config_id`: the settings without the training seed), best first: "
        f"{what} in %, mean ± std over seeds (std left out for one seed), trainable parameters and their share "
        "of the model, device-hours per trial. A configuration that two schemes chose is one row naming both.",
    )
    s.tables.append(shown(mean_std(board))) if not board.empty else s.notes.append(
        "No completed trial with an accuracy: no leaderboard."
    )
    if not board.empty and board[("trials", "n")].max() == 1:
        s.notes.append(
            "One seed per configuration: no spread to judge a difference by; run more seeds (`--seeds 0 1 2`)."
        )
    if metric and metric != "test_mean":
        s.notes.append(f"The rows have no test accuracy: the tables use the {what}.")
    out.append(s)

    s = Section(
        "Comparisons",
        f"The paper's comparisons, {what} in %, mean ± std over seeds. Study rows: the best "
        "completed configuration of each prompt kind (text → text-only, visual → visual-only, linear → "
        "MaPLe-style, independent → IVLP, kron → MmAP).",
    )
    table = comparisons(study)
    if not table.empty:
        s.tables.append(mean_std(table).reset_index())
    present = set(table.index)
    missing = [label for _, label, _ in COMPARISONS if label not in present]
    if missing:
        s.notes.append(
            f"Not in these results: {', '.join(missing)}. `studies/toy_baselines.py` measures them; pass its "
            "output with `--baselines runs/toy-baselines`."
        )
    out.append(s)

    out.append(
        _figure_section(
            "Accuracy vs trainable parameters",
            "Each point is a configuration (mean over seeds; bars: std). Circled "
            "points are on the Pareto front: no other point is as accurate with as few trainable parameters.",
            tradeoff_figure(study),
            figures_dir,
            "tradeoff",
            figures,
        )
    )
    panels = affinity_panels(study)[:MAX_AFFINITY_PANELS]
    if panels:
        s = Section(
            "Task affinity",
            "Affinity between tasks measured on a warmed-up shared MmAP; the tasks are ordered by "
            "the chosen partition and its groups boxed.",
            figure=_save(plots.affinity_heatmaps(panels, AFFINITY_LABELS), figures_dir, "affinity", figures),
        )
        if len(study.affinity) > MAX_AFFINITY_PANELS:
            s.notes.append(
                f"Showing {MAX_AFFINITY_PANELS} of {len(study.affinity)} matrices; all are in partitions.json."
            )
    else:
        s = Section(
            "Task affinity",
            notes=["No affinity matrix in the study (no gradient or lookahead scheme, or no partitions.json)."],
        )
    out.append(s)
    curves = curve_panels(study)
    out.append(
        Section(
            "Learning curves",
            "Validation accuracy per task of each scheme's best trial (by best validation "
            "mean); gray: the scheme's other trials, ending in X where ASHA stopped them early.",
            figure=_save(plots.learning_curves(curves), figures_dir, "curves", figures),
        )
        if curves
        else Section("Learning curves", notes=["No per-epoch rows: no learning curves."])
    )
    for setting, name in (("n_tokens", "ablation-prompt-length"), ("depth", "ablation-depth")):
        title = ABLATIONS[setting][1]
        out.append(
            _figure_section(
                title,
                f"{what.capitalize()} (mean ± std over completed trials) per grouping scheme.",
                ablation_figure(study, setting),
                figures_dir,
                name,
                figures,
            )
        )
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub Markdown via pandas (needs `tabulate`); without it, pandas' plain text in a code block.

    A '|' in a cell (a partition) is escaped, so it does not split the cell.
    """
    escape = lambda v: v.replace("|", r"\|") if isinstance(v, str) else v
    try:
        return df.apply(lambda col: col.map(escape)).rename(columns=escape).to_markdown(index=False)
    except ImportError:
        return "```\n" + df.to_string(index=False) + "\n```"


def render_markdown(title: str, parts: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in parts:
        lines += [f"## {s.title}", ""]
        lines += [s.text, ""] if s.text else []
        for table in s.tables:
            lines += [markdown_table(table), ""]
        lines += [f"![{s.title}](figures/{s.figure})", ""] if s.figure else []
        lines += [f"> Note: {n}" + "\n" for n in s.notes]
    return "\n".join(lines)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #999;padding:3px 8px;text-align:right}
th{background:#eee}.note{border-left:4px solid #888;background:#f6f6f6;padding:4px 10px}img{max-width:100%}"""


def render_html(title: str, parts: list[Section], figures_dir: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in parts:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_inline(s.text)}</p>"] if s.text else []
        body += [t.to_html(index=False, border=0, na_rep="–") for t in s.tables]
        if s.figure:
            data = base64.b64encode((figures_dir / s.figure).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}"></p>')
        body += [f'<p class="note">Note: {_inline(n)}</p>' for n in s.notes]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def build_report(
    results: str | Path, out: str | Path | None = None, baselines: str | Path | None = None
) -> ReportPaths:
    """Write report.md, report.html (self-contained) and figures/*.png for a study; default out: <study>/report."""
    return write_report(load_study(results, baselines), out)


def write_report(study: Study, out: str | Path | None = None) -> ReportPaths:
    """`build_report` for a study already loaded (`load_study`).

    Writes only files it owns: a new or empty folder, or one whose manifest says a report was written there.
    """
    folder = Path(out) if out is not None else default_out(study.results)
    previous = claim_folder(folder)
    own = ["report.md", "report.html"]
    folder.mkdir(parents=True, exist_ok=True)
    # claimed before anything is written: an interrupted report leaves a folder we may rewrite
    _write_manifest(folder, sorted({*previous, *own}))
    figures_dir = folder / "figures"
    figures: list[Path] = []
    parts = sections(study, figures_dir, figures)
    name = ", ".join(sorted(map(str, study.trials["study"].dropna().unique()))) if "study" in study.trials else ""
    title = f"Study report: {name or study.results.parent.name}"
    paths = ReportPaths(folder / own[0], folder / own[1], figures)
    paths.markdown.write_text(render_markdown(title, parts))
    paths.html.write_text(render_html(title, parts, figures_dir))
    written = [*own, *(f"figures/{f.name}" for f in figures)]
    for stale in set(previous) - set(written):
        if re.fullmatch(FIGURE_NAME, stale):  # a figure of the last report that this one no longer draws
            (folder / stale).unlink(missing_ok=True)
    _write_manifest(folder, written)
    return paths


def claim_folder(folder: Path) -> list[str]:
    """The files the last report wrote in `folder` (its manifest), [] for a new or empty folder.

    ValueError, one line naming the folder, for a file, a non-empty folder without a manifest (not ours: its
    files are left alone) or a manifest that is not one.
    """
    choose = "choose an empty or new folder (--out)"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"report folder {folder} is a file, not a folder: {choose}")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"report folder {folder} is not empty and has no {MANIFEST} (mmap-ray report did not write it, "
                f"so it will not overwrite or delete anything there): {choose}"
            )
        return []
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{manifest} is not a report manifest (a JSON object with a 'files' list): {choose}")
    return files


def _write_manifest(folder: Path, files: list[str]) -> None:
    """`folder/.mmap-ray-report.json`, written whole (a temporary file renamed into place)."""
    text = json.dumps({"written_by": "mmap-ray report", "files": files}, indent=1) + "\n"
    tmp = folder / f"{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, folder / MANIFEST)


# ---- command line -------------------------------------------------------------------------------------


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a study's results folder or URI (or the study folder holding results/)")
    p.add_argument(
        "--out",
        default=None,
        help="local report folder, new, empty or written by an earlier report (default: RESULTS/../report; for "
        "s3:// or gs:// results, ./STUDY-report)",
    )
    p.add_argument(
        "--baselines", default=None, help="the output folder of studies/toy_baselines.py, for the comparisons"
    )


def run_report(args: argparse.Namespace) -> int:
    paths = build_report(args.results, args.out, args.baselines)
    print(f"report (Markdown): {paths.markdown}")
    print(f"report (HTML, self-contained): {paths.html}")
    print(f"figures: {len(paths.figures)} in {paths.markdown.parent / 'figures'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="report", description="Write a study's Markdown and HTML report with figures.")
    add_report_args(p)
    args = p.parse_args(argv)
    try:
        return run_report(args)
    except ValueError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
