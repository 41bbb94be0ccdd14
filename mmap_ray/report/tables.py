"""The report's tables, pandas only: leaderboard, outcomes, failures, the paper's comparisons, ablations.

Why: the numbers of a report are worth having without its figures or files, in a notebook or a script's
summary, so every table here is a function of DataFrames (or of a loaded `Study`) that returns a DataFrame,
built with `groupby` and `pivot_table`; nothing here draws or writes.

Identity. The leaderboard and every comparison group trials by `config_id` (the configuration without the
training seed), never by a label: two partitions under one scheme name are two rows, and two schemes that
chose the same configuration (e.g. gradient and look-ahead grouping) are one row that names both. Each row
shows its scheme(s), partition, projection, prompt length and depth, plus whatever else varies.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from .load import (
    CONFIG_ID,
    METRIC_LABELS,
    Study,
    accuracy_columns,
    completed,
    no_value,
    numeric,
    scheme_names,
)

# The paper's comparisons: (slug, label, projection kind of a study row that is this method)
COMPARISONS = (
    ("zero-shot", "zero-shot", None),
    ("coop", "CoOp (shallow)", "coop"),
    ("text-deep", "text-deep (CoOp-deep)", "text-deep"),
    ("visual-deep", "visual-deep (VPT-deep)", "visual-deep"),
    ("clip-adapter", "CLIP-Adapter", "clip-adapter"),
    ("bitfit", "BitFit", "bitfit"),
    ("maple-style", "MaPLe-style (linear)", "linear"),
    ("ivlp", "independent (IVLP)", "independent"),
    ("mmap-phm", "MmAP (phm)", "phm"),
    ("mmap", "MmAP (kron)", "kron"),
    ("full-ft", "full fine-tuning", None),
)
METHOD_SLUGS = {label: slug for slug, label, _ in COMPARISONS}
PROJECTION_METHODS = {proj: label for _, label, proj in COMPARISONS if proj}
# rows and baseline tables written before the "-deep" names
PROJECTION_METHODS |= {"text": PROJECTION_METHODS["text-deep"], "visual": PROJECTION_METHODS["visual-deep"]}
METHOD_SLUGS |= {"text-only (CoOp-deep)": "text-deep", "visual-only (VPT-deep)": "visual-deep"}
# A leaderboard row: its configuration's identity, the settings always shown, and those shown when they vary
SHOWN_KEYS = ("scheme", "partition", "projection", "n_tokens", "depth")
VARYING_KEYS = (
    "variant",
    "layers",
    "combine",
    "lr",
    "epochs",
    "batch_size",
    "data_seed",
    "dataset",
    "model",
    "pretrained",
)
FORMATS = {"trainable params": "{:,.0f}", "trainable %": "{:.3f}", "device-h / trial": "{:.4f}"}  # else "{:.1f}"


# ---- one row per configuration ------------------------------------------------------------------------


def format_layers(layers: Iterable[int] | None) -> str:
    """Block indices as text for display: [0, 1, 2] -> '0-2', [0, 2, 4] -> '0,2,4', [] -> 'none', None -> 'default'."""
    if no_value(layers):
        return "default"
    indices = sorted(int(i) for i in layers)
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


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


def _over_seeds(values: pd.DataFrame, key: str) -> pd.DataFrame:
    """`values` grouped by `key` (first-seen order): (quantity, mean/std) columns and the count ('trials', 'n')."""
    grouped = values.groupby(key, sort=False)
    table = grouped.agg(["mean", "std"])
    table[("trials", "n")] = grouped.size()
    return table


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
        **{name: done[col] for col, name in acc.items()},
        **{name: done[col] for col, name in extra.items() if col in done},
    )
    table = _over_seeds(values, CONFIG_ID)
    settings = configurations(done).loc[table.index]
    table.index = pd.MultiIndex.from_frame(settings.reset_index()[[*settings.columns, CONFIG_ID]])
    return table.sort_values(("mean (%)", "mean"), ascending=False, kind="stable")


def _cells(values: pd.Series, fmt: str) -> pd.Series:
    return values.map(lambda v: "" if pd.isna(v) else fmt.format(v))


def percent_cell(values: pd.Series) -> str:
    """Accuracies (%) over seeds as one '81.0 ± 1.0' cell; one seed shows its value alone."""
    if len(values) > 1:
        return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
    return f"{values.mean():.1f}"


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


# ---- labels -------------------------------------------------------------------------------------------


def _word(key: str, value: object) -> str:
    """A setting as a label shows it: the scheme and partition bare, others as 'key value'."""
    if key in ("scheme", "partition"):
        return str(value)
    if key == CONFIG_ID:
        return f"config {str(value)[:8]}"
    return f"{key} {'default' if no_value(value) else value}"


def describe(settings: pd.Series) -> str:
    """One configuration (a row of `configurations`, with its config_id) in a few words, scheme first."""
    words = [_word(k, v) for k, v in settings.items() if k != CONFIG_ID]
    return ", ".join(words) + (f" ({_word(CONFIG_ID, settings[CONFIG_ID])})" if CONFIG_ID in settings else "")


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


# ---- the study at a glance ----------------------------------------------------------------------------


def status_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials per scheme label and outcome (completed, stopped early, failed)."""
    table = trials.pivot_table(
        index="scheme", columns="outcome", values="trial_id", aggfunc="count", fill_value=0, observed=True
    )
    table = table.reindex(columns=["completed", "stopped early", "failed"], fill_value=0)
    table["total"] = table.sum(axis=1)
    return table.rename_axis(columns=None)


def failures(trials: pd.DataFrame) -> pd.DataFrame:
    """The failed trials, one row each: trial, scheme, partition, seed, epochs run and the error file."""
    cols = [c for c in ("trial_id", "scheme", "partition", "seed", "epochs_run", "error") if c in trials]
    return trials.loc[trials["outcome"] == "failed", cols].reset_index(drop=True)


# how the report names the `pretrained` values that are not a file or an open_clip tag
WEIGHTS = {"None": "none (random weights)", "toy": "toy (the tiny CLIP shipped in mmap_ray/weights)"}


def overview(study: Study) -> pd.DataFrame:
    """The study's facts (data, model, tasks, counts, seeds, costs, provenance) as a one-column table."""
    t = study.trials
    metric, tasks = accuracy_columns(t)

    def first(col: str) -> str:
        return ", ".join(sorted(map(str, t[col].dropna().unique()))) if col in t else "–"

    facts = {
        "study": first("study"),
        "dataset": first("dataset"),
        "model": first("model"),
        "weights": ", ".join(WEIGHTS.get(w, w) for w in first("pretrained").split(", ")),
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


# ---- the paper's comparisons and ablations ------------------------------------------------------------


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
        **{f"{task} (%)": baselines[col] for task, col in tasks.items()},
        **{"mean (%)": baselines[metric]},
        **{"trainable params": baselines["trainable_params"].fillna(0)} if "trainable_params" in baselines else {},
    )
    if "total_params" in baselines:
        values["trainable %"] = 100 * values["trainable params"] / baselines["total_params"]
    table = _over_seeds(values, "method")
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
    done = done.assign(acc=done[metric], **{setting: done[setting].astype("int64")})
    return done.pivot_table(
        index=setting, columns="scheme", values="acc", aggfunc=["mean", "std", "count"], observed=True
    )
