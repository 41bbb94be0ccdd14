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
