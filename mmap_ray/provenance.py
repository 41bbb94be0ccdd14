"""What produced a row: the code's version wherever the driver runs, and the library versions.

Kept apart from the study's row building (`study/rows.py`) and light to import: a job's copy of the working
dir, a benchmark and a test ask for the code version without loading the training stack.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

from . import __version__
from .results import SCHEMA_VERSION


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """What code wrote a row, wherever the driver runs: the git commit of the checkout `mmap_ray` is imported
    from; else the commit an image build wrote beside it (`COMMIT`, cluster/Dockerfile); else
    `sources-<sha256 of the package's .py files>`, always computable (e.g. in a submitted job's working-dir
    copy, which has no .git)."""
    package = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=package, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        return commit
    stamp = package.parent / "COMMIT"
    if stamp.is_file() and re.fullmatch(r"[0-9a-f]{40}", text := stamp.read_text().strip()):
        return text
    h = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        h.update(source.relative_to(package).as_posix().encode())
        h.update(source.read_bytes())
    return f"sources-{h.hexdigest()[:16]}"


def provenance() -> dict:
    """Code version (`code_version`), package and library versions, for every row."""
    import torch  # here, not at the top: `code_version` alone must not load torch (its local build suffix counts)

    return {
        "schema_version": SCHEMA_VERSION,
        "git_commit": code_version(),
        "mmap_ray": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "ray": version("ray"),
        "optuna": version("optuna"),
        "pandas": version("pandas"),
    }
