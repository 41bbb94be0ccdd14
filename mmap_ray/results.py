"""Study results as a versioned, hive-partitioned Parquet dataset that pandas reads without custom code.

Layout under a study's results folder:

    trials/scheme=<scheme>/<trial_id>.parquet   one row per trial (the flat config, outcome, costs)
    epochs/scheme=<scheme>/<trial_id>.parquet   one row per (trial, epoch, task): the learning curves

Each file is written whole to a temporary name and renamed into place, by the Tune driver alone, so
concurrent trials never share a file, an interrupted study never leaves half a file, and a trial that
is re-run after a resume replaces its own file: rows are never duplicated or dropped.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TRIALS, EPOCHS = "trials", "epochs"


def _safe(value: object) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))


def write_table(root: str | Path, table: str, partition: str, name: str, rows: list[dict]) -> Path:
    """Write `rows` as one Parquet file `root/table/scheme=<partition>/<name>.parquet`, atomically."""
    folder = Path(root) / table / f"scheme={_safe(partition)}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(name)}.parquet"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path


def load(root: str | Path, table: str = TRIALS) -> pd.DataFrame:
    """One study table as a DataFrame (the `scheme` partition column included); empty if nothing yet."""
    folder = Path(root) / table
    files = sorted(folder.glob("scheme=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    frames = []
    for f in files:
        df = pq.read_table(f).to_pandas()
        df["scheme"] = f.parent.name.split("=", 1)[1]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    for col in ("status", "scheme", "partition", "projection", "combine", "study"):
        if col in df:
            df[col] = df[col].astype("category")
    return df


def provenance() -> dict:
    """Git commit and library versions, for every row."""
    import open_clip
    import optuna
    import ray
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "schema_version": SCHEMA_VERSION,
        "git_commit": commit or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "pandas": pd.__version__,
    }
