"""Study results as a versioned Parquet dataset that pandas, pyarrow, duckdb and polars read as is.

Layout under a study's results folder:

    trials/<config_id>-s<seed>.parquet   one row per (configuration, seed): the flat config, outcome, costs
    epochs/<config_id>-s<seed>.parquet   one row per (epoch, task) of that run: the learning curves, each
                                         row with the epoch's mean over tasks (`val_mean`, `test_mean`)
    predictions/<config_id>-s<seed>.parquet  one row per test image of that run: label, prediction, correct

Unit. Every accuracy in these tables is in percent (0-100), as the console and the report print it.

Identity. A row is identified by what produced it: `config_id`, a hash of the canonical configuration
(everything that changes the result: the run spec with the partition as resolved, the training
settings, the data seed; not the training seed), plus `seed`. The file name is that identity, so a
rerun, a resume or a second driver can only replace a row, never add a second one. The canonical
configuration itself is stored in the row (`config`, JSON), next to its typed columns: a folder or
file name is never the only record of a value.

Types. Every file of a table has the same explicit Arrow schema (`trial_schema`, `EPOCH_SCHEMA`): a
failed trial stores typed nulls, not Parquet `null` columns, and there are no hive folder keys that
could clash with a column. So `pandas.read_parquet(folder)`, `pyarrow.dataset.dataset(folder)`,
duckdb's `read_parquet('folder/*.parquet')` and polars' `scan_parquet` read the folder in any file order.

Each file is written whole (a temporary name renamed into place; on object storage a single PUT), by the
Tune driver alone. The root may be a local folder or an `s3://` / `gs://` URI (see `mmap_ray.storage`).

Schema versions. Every file carries `mmap_ray.schema_version` in its Parquet metadata (trial rows also
have a `schema_version` column). `load` converts older files to the current schema with the functions
in `UPGRADES` and refuses files from a newer mmap-ray with a message saying which version reads them.
Version 2 added `config_id`, `config`, `data_seed`, typed `layers` (a list of block indices) and
`depth`, and the flat layout; version 1 files (`<table>/scheme=<scheme>/<trial>.parquet`) still load.
Version 3 added `variant` (the study's `variants` axis; "" for rows before it), version 4 the zero-shot
columns, version 5 the package version `mmap_ray` ("unknown" before it). Version 6 stores accuracies in
percent (fractions before it) and the epochs table's per-epoch mean as columns (`val_mean`, `test_mean`)
instead of rows of a pseudo-task "mean", so a `groupby("task")` counts tasks only.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .parse import parse_json
from .storage import Location, location, location_as_given, safe_name

SCHEMA_VERSION = 6
SCHEMA_KEY = b"mmap_ray.schema_version"
TRIALS, EPOCHS, PREDICTIONS = "trials", "epochs", "predictions"

_I, _F, _S, _B = pa.int64(), pa.float64(), pa.string(), pa.bool_()
# The trial table's fixed columns, in file order; per-task accuracy columns follow the outcome columns.
TRIAL_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("study", _S),
    ("config_id", _S),
    ("seed", _I),
    ("trial_id", _S),
    ("status", _S),
    ("error", _S),
    ("early_stopped", _B),
    ("scheme", _S),
    ("variant", _S),
    ("partition", _S),
    ("k", _I),
    ("n_tokens", _I),
    ("depth", _I),
    ("layers", pa.list_(_I)),
    ("projection", _S),
    ("combine", _S),
    ("lr", _F),
    ("epochs", _I),
    ("batch_size", _I),
    ("dataset", _S),
    ("model", _S),
    ("pretrained", _S),
    ("data_seed", _I),
    ("epochs_run", _I),
    ("trainable_params", _I),
    ("total_params", _I),
    ("val_mean_final", _F),
    ("val_mean_best", _F),
    ("test_mean", _F),
    ("zeroshot_mean", _F),  # the backbone's zero-shot accuracy on the trial's test images (v4)
    ("wall_s", _F),
    ("device_hours", _F),
    ("device_kind", _S),
)
PROVENANCE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("schema_version", _I),
    ("git_commit", _S),  # the code: a git commit, or sources-<digest> (`code_version`)
    ("mmap_ray", _S),  # the package version (v5)
    ("python", _S),
    ("torch", _S),
    ("open_clip", _S),
    ("ray", _S),
    ("optuna", _S),
    ("pandas", _S),
    ("config", _S),
)
EPOCH_SCHEMA = pa.schema(
    [
        ("study", _S),
        ("config_id", _S),
        ("seed", _I),
        ("trial_id", _S),
        ("epoch", _I),
        ("task", _S),
        ("val_acc", _F),  # percent, as every accuracy in the tables (v6)
        ("train_loss", _F),
        ("test_acc", _F),
        ("val_mean", _F),  # the epoch's mean over tasks (v6; rows of task "mean" before it)
        ("test_mean", _F),
    ]
)
# A trial's test outcomes, one row per image (the `predictions` table, v4): what paired comparisons
# between two configurations on the same seed (hence the same data_seed and images) are computed from.
TRIAL_PREDICTION_SCHEMA = pa.schema(
    [
        ("study", _S),
        ("config_id", _S),
        ("seed", _I),
        ("task", _S),
        ("image", _I),
        ("label", _I),
        ("prediction", _I),
        ("correct", _B),
    ]
)
CATEGORIES = ("status", "scheme", "variant", "partition", "projection", "combine", "study")
# UPGRADES[v] turns a DataFrame of schema v into schema v + 1; add one whenever SCHEMA_VERSION grows.
UPGRADES: dict[int, Callable[[pd.DataFrame], pd.DataFrame]] = {}


def trial_schema(tasks: list[str]) -> pa.Schema:
    """The trial table's schema for a study over `tasks` (per-task val final/best and test columns)."""
    per_task = [(f"val_{t}_final", _F) for t in tasks] + [(f"val_{t}_best", _F) for t in tasks]
    per_task += [(f"test_{t}", _F) for t in tasks] + [(f"zeroshot_{t}", _F) for t in tasks]
    return pa.schema([*TRIAL_FIELDS, *per_task, *PROVENANCE_FIELDS])


def canonical_json(config: Mapping) -> str:
    """The one text form of a configuration: sorted keys, no whitespace, plain JSON values."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def config_id(config: Mapping) -> str:
    """A stable 16-hex-digit id of a canonical configuration (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def row_key(cid: str, seed: int) -> str:
    """The file name (without .parquet) of the rows of (config_id, seed)."""
    return f"{cid}-s{seed}"


def write_table(
    root: str | Path | Location, table: str, name: str, rows: list[dict], schema: pa.Schema | None = None
) -> Location:
    """Write `rows` as one Parquet file `root/table/<name>.parquet`, atomically, with `schema` if given.

    With a schema, every column it names is written with its type (missing values as typed nulls) and a
    row key it does not name is an error; without one, types are inferred (benchmarks, baselines).
    """
    if not name or safe_name(name) != name or name.startswith("."):
        raise ValueError(f"results file name {name!r}: use letters, digits, '-', '_' or '.'")
    path = location(root, "results root") / table / f"{name}.parquet"
    if schema is not None:
        extra = sorted({k for r in rows for k in r} - set(schema.names))
        if extra:
            raise ValueError(f"rows for {path} have columns {extra} that the {table} schema does not define")
        arrow = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    else:
        arrow = pa.Table.from_pylist(rows)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    path.write_bytes(buf.getvalue())
    return path


def _version(arrow: pa.Table) -> int | None:
    """The schema version of a file of ours; None for a Parquet file another tool wrote."""
    meta = arrow.schema.metadata or {}
    if SCHEMA_KEY in meta:
        return int(meta[SCHEMA_KEY])
    if "schema_version" in arrow.column_names and arrow.num_rows:
        return int(arrow.column("schema_version")[0].as_py())
    return None


# The columns every current-version file of a table has, with these types (a file with others is damaged).
_FIXED = {TRIALS: pa.schema([*TRIAL_FIELDS, *PROVENANCE_FIELDS]), EPOCHS: EPOCH_SCHEMA}


def _columns_problem(arrow: pa.Table, table: str) -> str | None:
    """Which of a current-version file's columns have another type than its table's schema says, or None."""
    fixed = _FIXED.get(table, TRIAL_PREDICTION_SCHEMA if table == PREDICTIONS else None)
    if fixed is None:
        return None
    have = {f.name: f.type for f in arrow.schema}
    retyped = [f"{f.name}: {have[f.name]}" for f in fixed if have.get(f.name, f.type) not in (f.type, pa.null())]
    return f"columns of another type than the {table} schema's: {retyped[:3]}" if retyped else None


def _read(where: Location) -> tuple[pa.Table, int] | None:
    """One file as read, checked, and the schema version it was written with; None (with a warning) for a
    file that is not ours. `_frame` makes it a current-schema DataFrame."""
    try:
        with where.filesystem().open_input_file(where.path) as f:
            arrow = pq.ParquetFile(f).read()
        version = _version(arrow)
        if version is not None and version < 1:
            raise ValueError(f"schema version {version} is not one")
        problem = _columns_problem(arrow, where.parent.name) if version == SCHEMA_VERSION else None
        if problem:
            raise ValueError(problem)
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:  # empty, cut short, or not ours inside
        raise ValueError(
            f"results file {where} cannot be read ({e}); move it away: --resume runs its trial again"
        ) from None
    if version is None and where.parent.name.startswith("scheme="):
        version = 1  # the v1 layout, written before the metadata key existed
    if version is None:
        warnings.warn(f"skipping {where}: a Parquet file without mmap-ray's schema version (not ours)", stacklevel=3)
        return None
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} has results schema v{version}, written by a newer mmap-ray; this one reads up to "
            f"v{SCHEMA_VERSION}: upgrade mmap-ray (pip install -U mmap-ray) to read it"
        )
    return arrow, version


def _frame(arrow: pa.Table, version: int, where: Location) -> pd.DataFrame:
    """A file's rows (`_read`) as a DataFrame of the current schema: older versions upgraded."""
    df = arrow.to_pandas()
    if version == 1 and "scheme" not in df and where.parent.name.startswith("scheme="):
        df["scheme"] = where.parent.name.split("=", 1)[1]  # v1 kept the scheme in a hive folder key only
    try:
        for v in range(version, SCHEMA_VERSION):
            df = UPGRADES[v](df)
    except Exception as e:  # noqa: BLE001 - columns that are not what their version's files hold: pandas raises any
        raise ValueError(
            f"results file {where} says schema v{version} but its columns are not ({type(e).__name__}: {e}); "
            f"move it away: --resume runs its trial again"
        ) from None
    if "schema_version" in df:
        df["schema_version"] = SCHEMA_VERSION
    return df


def _study_name(results: Location, frames: list[pd.DataFrame]) -> str | None:
    """The study these results belong to: the name in the study folder's study.json, else the one most of
    the files name."""
    meta = results.parent / "study.json"
    try:
        name = parse_json(meta.read_text(), meta).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name:
        return name
    names = pd.Series([str(s) for df in frames if "study" in df for s in df["study"].unique()])
    return str(names.mode().iloc[0]) if len(names) else None


def _misplaced(df: pd.DataFrame, where: Location, study: str | None) -> str | None:
    """Why a file's rows are not the rows its name and folder say (a copy, another study's), or None."""
    if {"config_id", "seed"} <= set(df.columns):
        try:
            keys = sorted({row_key(str(c), int(s)) for c, s in zip(df["config_id"], df["seed"])})
        except (TypeError, ValueError):  # a seed that is not an integer
            return f"its seeds {sorted(map(str, set(df['seed'])))[:3]} are not integers"
        if keys != [where.name.removesuffix(".parquet")]:
            return f"its rows are of {keys[:3]}, not of {where.name.removesuffix('.parquet')!r} as its name says"
    if study is not None and "study" in df and (other := sorted(set(map(str, df["study"])) - {study})):
        return f"its rows belong to study {other[:3]}, not to {study!r} whose results these are"
    return None


def _key_columns(arrow: pa.Table) -> list[str]:
    """The columns that say whose rows a file holds (`_misplaced`, `_study_name`)."""
    return [c for c in ("config_id", "seed", "study") if c in arrow.column_names]


def _concat_arrow(tables: list[pa.Table]) -> list[pd.DataFrame]:
    """Files of the current schema as one DataFrame (in a list, for `load`): one Arrow concatenation and one
    conversion; where their columns differ in type, each file converted on its own as before."""
    try:
        return [pa.concat_tables(tables, promote_options="default").to_pandas()]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return [t.to_pandas() for t in tables]


def load(root: str | Path | Location, table: str = TRIALS) -> pd.DataFrame:
    """One study table as a DataFrame; ValueError naming the folder when it holds no results.

    A file counts only where its rows are what its name and folder say: its (config_id, seed) and this
    study's name (a copy `X-s0 (copy).parquet`, rows of another study or a `results` link to another
    study's folder are skipped with a warning naming the file)."""
    folder = location_as_given(root, "results root") / table
    reads = [(f, _read(f)) for f in folder.glob("*.parquet")]
    found = [(f, *read) for f, read in reads if read is not None]
    foreign = [f for f, read in reads if read is None]
    current = all(version == SCHEMA_VERSION for _, _, version in found)
    # `checked`: what each file is checked on (its key columns; the whole upgraded frame for older files)
    if current:  # the usual case: checked on its key columns, converted all at once below
        found = [(f, arrow, arrow.select(_key_columns(arrow)).to_pandas(), version) for f, arrow, version in found]
    else:  # older files among them: each upgraded on its own, in the order found
        found = [(f, None, _frame(arrow, version, f), version) for f, arrow, version in found]
    study = _study_name(folder.parent, [checked for _, _, checked, _ in found])
    frames, skipped = [], []
    for f, arrow, checked, version in found:
        why = _misplaced(checked, f, study) if version >= 2 else None  # v1 files were named by Tune's trial id
        if why:
            skipped.append(f"skipping {f}: {why}")
            warnings.warn(skipped[-1], stacklevel=2)
        else:
            frames.append(arrow if current else checked)
    if current and frames:
        frames = _concat_arrow(frames)
    if not frames and skipped:
        raise ValueError(f"no {table} results of study {study!r} in {folder}: {len(skipped)} files, e.g. {skipped[0]}")
    if not frames:
        also = f"; {len(foreign)} of other tools, e.g. {foreign[0]}" if foreign else ""
        raise ValueError(f"no {table} results in {folder} (no Parquet files of mmap-ray there{also})")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    for col in CATEGORIES:
        if col in df:
            df[col] = df[col].astype("category")
    return df


def _v1_to_v2(df: pd.DataFrame) -> pd.DataFrame:
    """v1 stored layers as a string ("0-3", "None" for the default) and had no config id."""
    from .prompts import parse_layers

    df = df.copy()
    if "layers" in df:
        text = df["layers"].astype(str)
        df["layers"] = [None if s in ("None", "nan", "default") else list(parse_layers(s)) for s in text]
        df["depth"] = pd.array([None if v is None else len(v) for v in df["layers"]], dtype="Int64")
    if "config_id" not in df and "seed" in df:
        keys = [
            c
            for c in (
                "scheme",
                "partition",
                "n_tokens",
                "layers",
                "projection",
                "combine",
                "lr",
                "epochs",
                "batch_size",
                "dataset",
                "model",
                "pretrained",
            )
            if c in df
        ]
        df["config_id"] = [
            "v1-" + config_id({k: r[k] for k in keys})[:13] for r in df[keys].astype(object).to_dict("records")
        ]
    return df


def _v2_to_v3(df: pd.DataFrame) -> pd.DataFrame:
    """v3 added `variant` (a study's `variants` axis): rows before it were no variant."""
    df = df.copy()
    if "config_id" in df and "variant" not in df:  # trial rows (epoch rows have no variant)
        df["variant"] = ""
    return df


def _v3_to_v4(df: pd.DataFrame) -> pd.DataFrame:
    """v4 added the backbone's zero-shot accuracy to trial rows: unknown (NaN) before it."""
    df = df.copy()
    if "config_id" in df and "test_mean" in df and "zeroshot_mean" not in df:
        df["zeroshot_mean"] = float("nan")
    return df


UPGRADES[1] = _v1_to_v2
UPGRADES[2] = _v2_to_v3
UPGRADES[3] = _v3_to_v4


def _v4_to_v5(df: pd.DataFrame) -> pd.DataFrame:
    """v5 added the mmap-ray version to trial rows (`mmap_ray`): unknown before it."""
    df = df.copy()
    if "git_commit" in df and "mmap_ray" not in df:
        df["mmap_ray"] = "unknown"
    return df


UPGRADES[4] = _v4_to_v5

# Accuracy columns: trial rows' per-task and mean val/test/zero-shot columns, baselines' test columns,
# the epochs table's val_acc / test_acc (and, from v6, its val_mean / test_mean).
_ACCURACY = re.compile(r"(val_.+_(final|best)|test_.+|zeroshot_.+|val_acc|test_acc|val_mean)")


def accuracy_columns(columns: list[str]) -> list[str]:
    """The columns of a results table that hold an accuracy (in percent from v6)."""
    return [c for c in columns if _ACCURACY.fullmatch(c)]


def _v5_to_v6(df: pd.DataFrame) -> pd.DataFrame:
    """v6 stores accuracies in percent, and the epochs table's mean over tasks as columns, not task "mean"."""
    df = df.copy()
    for col in accuracy_columns(list(df.columns)):
        df[col] = 100 * pd.to_numeric(df[col], errors="coerce")
    if {"epoch", "task", "val_acc"} <= set(df.columns):
        keys = [c for c in ("study", "config_id", "seed", "trial_id", "epoch") if c in df]
        is_mean = df["task"].astype(str) == "mean"
        acc = [c for c in ("val_acc", "test_acc") if c in df]
        means = df.loc[is_mean, [*keys, *acc]].rename(columns={"val_acc": "val_mean", "test_acc": "test_mean"})
        df = df[~is_mean].merge(means, on=keys, how="left") if keys else df[~is_mean]
        df = df.reset_index(drop=True)
    return df


UPGRADES[5] = _v5_to_v6
