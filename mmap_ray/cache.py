"""Where mmap-ray keeps what it builds or checks once per machine: $MMAP_RAY_CACHE, else ~/.cache/mmap-ray.

Everything here can be rebuilt (the pretrained tiny CLIP, which images decode), so a missing or
unwritable cache costs time, never a result.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where built artefacts live: $MMAP_RAY_CACHE, else ~/.cache/mmap-ray; ValueError, naming it, for a path
    that exists and is not a folder (checked on every use, so before any work that would be cached)."""
    folder = Path(os.environ.get("MMAP_RAY_CACHE") or Path.home() / ".cache" / "mmap-ray")  # "" counts as unset
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"MMAP_RAY_CACHE={str(folder)!r} is a file, not a folder: point it at a folder (or unset it)")
    return folder
