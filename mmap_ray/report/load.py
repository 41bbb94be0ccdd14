"""Reading a study for its report: the trial and epoch tables, partitions.json and the baselines.

Why a module of its own: every table and figure of the report starts from the same `Study`, and every way a
study can be incomplete (no epochs, no partitions.json, files of other tools, rows of a study run twice) is
found here once and recorded as a note, so the sections below only decide how to show what is there.
`prepare` derives the columns the report needs (outcome, depth, trainable %) from the rows as
`mmap_ray.results.load` returns them, so a notebook can call it on rows it loaded itself; the helpers at the
end say what the rows hold (which accuracy to rank by, which trials completed, which schemes ran).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..lock import running
from ..parse import parse_partitions
from ..results import EPOCHS, PREDICTIONS, TRIALS, load
from ..storage import Location, location_as_given

BASELINES = "baselines"  # the table that studies/toy_baselines.py writes
CONFIG_ID = "config_id"  # a configuration's identity: its settings without the training seed
NUMERIC = (
    r"(val|test)_.+|trainable_params|total_params|device_hours|wall_s|epochs_run|epochs|seed|data_seed|n_tokens|"
    r"depth|k|lr|batch_size"
)
METRIC_LABELS = {  # the mean-accuracy columns the report ranks by, best first, and how the text names them
    "test_mean": "test accuracy",
    "val_mean_final": "final validation accuracy",
    "val_mean_best": "best validation accuracy",
}
TASK_COLUMNS = {"test_mean": r"test_(.+)", "val_mean_final": r"val_(.+)_final", "val_mean_best": r"val_(.+)_best"}


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
    seconds: dict[str, float] = field(default_factory=dict)  # "scheme/seed" -> seconds its partition took
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (trial, test image), v4
    running: str | None = None  # the driver holding the study's lock, while the study runs


def _folder(path: str | Path | Location, table: str, field: str) -> Location:
    """`path`, or `path/results` when that holds `table` (a study folder rather than its results folder)."""
    root = location_as_given(path, field)
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
    if CONFIG_ID not in trials:
        raise ValueError(f"the trial rows in {root / TRIALS} have no {CONFIG_ID!r} column: not rows a study writes")
    study = Study(root, prepare(trials), epochs, {}, {}, pd.DataFrame())
    study.running = running(root.parent)
    if study.running:
        study.notes.append(f"The study is still running ({study.running}): this report shows the trials done so far.")
    study.notes += [f"Not read: {message}." for message in skipped]
    repeats = int(study.trials.duplicated([CONFIG_ID, "seed"], keep=False).sum()) if "seed" in trials else 0
    if repeats:
        study.notes.append(
            f"{repeats} trial rows repeat a (config_id, seed) pair (results of a study run twice before "
            "schema v2): the leaderboard counts each of them as a seed."
        )
    if study.epochs.empty:
        study.notes.append(f"No per-epoch table ({root / EPOCHS}): learning curves are left out.")
    study.predictions = _table(root, PREDICTIONS)
    if not study.predictions.empty:
        study.predictions[CONFIG_ID] = study.predictions[CONFIG_ID].astype(str)
    side = root.parent / "partitions.json"
    if side.exists():
        saved = parse_partitions(side.read_bytes(), side)
        study.partitions, study.affinity, study.seconds = saved["partitions"], saved["affinity"], saved["seconds"]
    else:
        study.notes.append(f"No {side}: the task-affinity matrices are left out.")
    if baselines is not None:
        study.baselines = load_baselines(baselines)
    return study


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
        df["depth"] = [None if no_value(v) else len(v) for v in df["layers"]]
    if "depth" in df:
        df["depth"] = pd.to_numeric(df["depth"], errors="coerce").astype("Int64")
    if {"trainable_params", "total_params"} <= set(df.columns):
        df["trainable_pct"] = 100 * df["trainable_params"] / df["total_params"]
    return df


def no_value(value: object) -> bool:
    """None or a missing scalar (NaN, pd.NA); a list or array is a value, even an empty one."""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def accuracy_columns(rows: pd.DataFrame) -> tuple[str | None, dict[str, str]]:
    """The mean-accuracy column the report ranks by (test, else final validation) and its per-task columns."""
    for mean, pattern in TASK_COLUMNS.items():
        if mean in rows and rows[mean].notna().any():
            tasks = {m.group(1): c for c in rows.columns if (m := re.fullmatch(pattern, c)) and m.group(1) != "mean"}
            return mean, tasks
    return None, {}


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran all their epochs: the only ones whose accuracy the tables and figures average."""
    return trials[trials["outcome"] == "completed"]


def scheme_names(labels: Iterable[object]) -> list[str]:
    """The grouping schemes in scheme labels ('gradient, lookahead' names two), sorted, each once."""
    return sorted({s.strip() for label in labels if not no_value(label) for s in str(label).split(",") if s.strip()})
