"""JSON and TOML text from files a user or a bucket can write, parsed so that any content fails as one
ValueError naming its source: nesting deeper than Python's parsers recurse (RecursionError) included."""

from __future__ import annotations

import json
import tomllib
from typing import Any


def parse_json(text: str | bytes, source: object) -> Any:
    """`json.loads(text)`; ValueError naming `source` for text that is not JSON or nests too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{source} nests its JSON too deeply to read: not a file mmap-ray wrote") from None


def parse_toml(text: str, source: object) -> dict[str, Any]:
    """`tomllib.loads(text)`; ValueError naming `source` for text that is not TOML or nests too deeply."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError(f"{source} nests its TOML too deeply to read") from None


def parse_partitions(text: str | bytes, source: object) -> dict[str, dict]:
    """A study's partitions.json: {"partitions": {"scheme/seed": "A+B|C"}, "affinity": {"scheme/seed": {"tasks":
    [names], "matrix": [[number]] (tasks x tasks)}}, "seconds": {"scheme/seed": number}}, the tables it lacks
    empty; ValueError naming `source` for any other content (a study and its report read it back)."""
    try:
        saved = parse_json(text, source)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source} is not JSON ({e}): not the partitions.json a study writes") from None
    number = (int, float)

    def entry_ok(e: object) -> bool:
        if not isinstance(e, dict) or not isinstance(tasks := e.get("tasks"), list):
            return False
        rows = e.get("matrix")
        return (
            all(isinstance(t, str) for t in tasks)
            and isinstance(rows, list)
            and len(rows) == len(tasks)
            and all(isinstance(r, list) and len(r) == len(tasks) for r in rows)
            and all(isinstance(v, number) and not isinstance(v, bool) for r in rows for v in r)
        )

    kinds = {
        "partitions": lambda v: isinstance(v, str),
        "affinity": entry_ok,
        "seconds": lambda v: isinstance(v, number) and not isinstance(v, bool),
    }
    if isinstance(saved, dict):
        saved = {name: saved.get(name, {}) for name in kinds} | {k: v for k, v in saved.items() if k not in kinds}
    if not isinstance(saved, dict) or not all(
        isinstance(saved[name], dict) and all(ok(v) for v in saved[name].values()) for name, ok in kinds.items()
    ):
        raise ValueError(
            f"{source} is not the partitions.json a study writes (a JSON object of 'partitions': "
            f"{{'scheme/seed': 'A+B|C'}}, 'affinity': {{'scheme/seed': {{'tasks': [...], 'matrix': [[...]]}}}}, "
            f"'seconds'); move it away and --resume plans the partitions again"
        )
    return saved
