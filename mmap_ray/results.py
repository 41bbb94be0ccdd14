"""Study results as a versioned, hive-partitioned Parquet dataset that pandas reads without custom code.

Layout under a study's results folder:

    trials/scheme=<scheme>/<trial_id>.parquet   one row per trial (the flat config, outcome, costs)
    epochs/scheme=<scheme>/<trial_id>.parquet   one row per (trial, epoch, task): the learning curves

Each file is written whole (a temporary name renamed into place; on object storage a single PUT), by the
Tune driver alone, so concurrent trials never share a file, an interrupted study never leaves half a
file, and a trial that is re-run after a resume replaces its own file: rows are never duplicated or
dropped. The root may be a local folder or an `s3://` / `gs://` URI (see `mmap_ray.storage`).

Schema versions. Every file carries `mmap_ray.schema_version` in its Parquet metadata (trial rows also
have a `schema_version` column). `load` converts older files to the current schema with the functions
in `UPGRADES` (none are needed yet: version 1 is the first; files written before the metadata key
existed are version 1) and refuses files from a newer mmap-ray with a message saying which version
reads them.
"""

from __future__ import annotations

import io
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .storage import Location, location

SCHEMA_VERSION = 1
SCHEMA_KEY = b"mmap_ray.schema_version"
TRIALS, EPOCHS = "trials", "epochs"
# UPGRADES[v] turns a DataFrame of schema v into schema v + 1; add one whenever SCHEMA_VERSION grows.
UPGRADES: dict[int, Callable[[pd.DataFrame], pd.DataFrame]] = {}


def _safe(value: object) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))


def write_table(root: str | Path | Location, table: str, partition: str, name: str, rows: list[dict]) -> Location:
    """Write `rows` as one Parquet file `root/table/scheme=<partition>/<name>.parquet`, atomically."""
    path = location(root, "results root") / table / f"scheme={_safe(partition)}" / f"{_safe(name)}.parquet"
    arrow = pa.Table.from_pylist(rows)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    path.write_bytes(buf.getvalue())
    return path


def _version(arrow: pa.Table) -> int:
    meta = arrow.schema.metadata or {}
    if SCHEMA_KEY in meta:
        return int(meta[SCHEMA_KEY])
    if "schema_version" in arrow.column_names and arrow.num_rows:
        return int(arrow.column("schema_version")[0].as_py())
    return 1  # written before the metadata key existed


def _read(where: Location) -> pd.DataFrame:
    arrow = pq.read_table(where.path, filesystem=where.filesystem())
    version = _version(arrow)
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} has results schema v{version}, written by a newer mmap-ray; this one reads up to "
            f"v{SCHEMA_VERSION}: upgrade mmap-ray (pip install -U mmap-ray) to read it"
        )
    df = arrow.to_pandas()
    for v in range(version, SCHEMA_VERSION):
        df = UPGRADES[v](df)
    if "schema_version" in df:
        df["schema_version"] = SCHEMA_VERSION
    return df


def load(root: str | Path | Location, table: str = TRIALS) -> pd.DataFrame:
    """One study table as a DataFrame (the `scheme` partition column included); empty if nothing yet."""
    files = (location(root, "results root") / table).glob("scheme=*/*.parquet")
    if not files:
        return pd.DataFrame()
    frames = []
    for f in files:
        df = _read(f)
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
