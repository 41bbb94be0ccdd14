"""A run's per-image predictions as one Parquet file (`mmap-ray eval --predictions`, a train run's
predictions.parquet), read back by `mmap-ray compare`.

Each file carries, in its Parquet metadata, the schema version and the identity of its images (`DATA_KEY`:
the split and `data.base.split_digest`), so that two files are paired only when they are of the same images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .parse import parse_json
from .results import SCHEMA_KEY, SCHEMA_VERSION
from .storage import Location, location

PREDICTION_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("image", pa.int64()),
        ("label", pa.int64()),
        ("prediction", pa.int64()),
        ("correct", pa.bool_()),
    ]
)


DATA_KEY = b"mmap_ray.data"  # a predictions file's data identity: {"split": ..., "images": split_digest}


def write_predictions(path: str | Path, cols: Mapping[str, list], data: Mapping[str, str]) -> Location:
    """Every image's outcome (`evaluation.predictions`) as one Parquet file, written atomically, with the
    identity of the images (`data`: the split and `data.base.split_digest`) in its metadata."""
    arrow = pa.table({name: cols[name] for name in PREDICTION_SCHEMA.names}, schema=PREDICTION_SCHEMA)
    buf = io.BytesIO()
    meta = {SCHEMA_KEY: str(SCHEMA_VERSION).encode(), DATA_KEY: json.dumps(dict(data), sort_keys=True).encode()}
    pq.write_table(arrow.replace_schema_metadata(meta), buf)
    where = location(path, "--predictions")
    where.write_bytes(buf.getvalue())
    return where


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions file `write_predictions` wrote, its data identity in `.attrs["data"]` ({} for a file
    written before identities); ValueError naming the file if it is not one."""
    where = location(path, "predictions file")
    if not where.exists():
        raise ValueError(f"predictions file {path} does not exist; write one with `mmap-ray eval --predictions`")
    try:
        arrow = pq.read_table(io.BytesIO(where.read_bytes()))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"predictions file {path} is not a Parquet file ({e})") from None
    missing = [n for n in PREDICTION_SCHEMA.names if n not in arrow.column_names]
    if missing:
        raise ValueError(
            f"predictions file {path} lacks the columns {missing}: it is not what `mmap-ray eval --predictions` writes"
        )
    try:
        data = parse_json((arrow.schema.metadata or {}).get(DATA_KEY, b"{}"), path)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"predictions file {path} has a damaged data identity in its metadata ({DATA_KEY.decode()})")
    try:
        arrow = arrow.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
        nulls = [n for n in PREDICTION_SCHEMA.names if arrow.column(n).null_count]
    except (pa.ArrowException, ValueError) as e:
        nulls, arrow = [f"({e})"], None
    if nulls:
        raise ValueError(
            f"predictions file {path} has columns that are not {PREDICTION_SCHEMA.types} or hold nulls {nulls}: it "
            f"is not what `mmap-ray eval --predictions` writes"
        )
    df = arrow.to_pandas()
    df.attrs["data"] = data
    return df
