"""A study owns its folder: what a start, a rerun and a resume may do with what is already there.

Starting a study whose folder exists is refused (unless --overwrite moves it aside); --resume needs a
stored study with the same trial-defining settings. Checked before anything is written or started.
"""

from __future__ import annotations

import pandas as pd

from ..fields import to_dict
from ..parse import parse_json
from ..storage import Location
from .config import RESUME_MAY_CHANGE, StudyConfig


def stored_rows(folder: Location) -> pd.DataFrame:
    """The study's trial rows so far (empty when there are none)."""
    from ..results import TRIALS, load

    try:
        return load(folder / "results", TRIALS)
    except ValueError:
        if (folder / "results" / TRIALS).glob("*.parquet"):
            raise  # rows exist but cannot be read (a newer schema): say so
        return pd.DataFrame()


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"run": {"train": {"epochs": 2}}} -> {"run.train.epochs": 2}."""
    out = {}
    for k, v in settings.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


def settings_diff(stored: dict, study: StudyConfig) -> list[str]:
    """The trial-defining settings that differ between a stored study.json and `study` (dotted names)."""
    old, now = _flat(stored), _flat(to_dict(study))
    may_change = tuple(RESUME_MAY_CHANGE)
    keys = sorted(k for k in set(old) | set(now) if not any(k == m or k.startswith(m + ".") for m in may_change))
    return [f"{k}: stored {old.get(k)!r}, now {now.get(k)!r}" for k in keys if old.get(k) != now.get(k)]


def check_start(study: StudyConfig, folder: Location, resume: bool, overwrite: bool) -> None:
    """Refuse a start that would mix two studies in one folder, before anything is written."""
    meta = folder / "study.json"
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if not meta.exists():
        if resume:
            raise ValueError(
                f"--resume: there is no study {study.name!r} in {folder.parent} to resume (no {meta}); "
                f"start it without --resume"
            )
        return
    if resume:
        try:
            stored = parse_json(meta.read_text(), meta)
        except ValueError:
            raise ValueError(f"--resume: {meta} is not valid JSON; it is not a study this version can resume") from None
        if not isinstance(stored, dict):
            raise ValueError(f"--resume: {meta} holds {type(stored).__name__}, not a study's settings (a JSON object)")
        if "resources" not in stored:
            raise ValueError(
                f"--resume: {meta} was written by an earlier mmap-ray (flat settings, before the typed RunConfig); "
                f"its results still load in `mmap-ray report`, but it cannot be resumed: start a new study"
            )
        stored_rows(folder)  # every stored row must read now, before the lock, Ray or a file is touched
        diff = settings_diff(stored, study)
        if diff:
            raise ValueError(
                f"--resume: these settings differ from the stored study ({meta}): {'; '.join(diff)}. Rerun with "
                f"the original settings, or start a new study with another --name"
            )
    elif not overwrite:
        n = len(stored_rows(folder))
        raise ValueError(
            f"study {study.name!r} already exists in {folder.parent} with {n} trial result{'s' * (n != 1)}; continue "
            f"it with --resume, choose another --name, or pass --overwrite to move it aside (nothing is deleted)"
        )
