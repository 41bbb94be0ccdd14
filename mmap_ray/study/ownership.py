"""A study owns its folder: what a start, a rerun and a resume may do with what is already there.

Starting a study whose folder exists is refused (unless --overwrite moves it aside); --resume needs a
stored study with the same trial-defining settings. Checked before anything is written or started.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd

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


def settings_diff(stored: dict, study: StudyConfig) -> list[str]:
    """The trial-defining settings that differ between a stored study.json and `study`."""
    now = json.loads(json.dumps(asdict(study)))  # tuples as lists, as they were stored
    keys = sorted((set(stored) | set(now)) - set(RESUME_MAY_CHANGE))
    return [f"{k}: stored {stored.get(k)!r}, now {now.get(k)!r}" for k in keys if stored.get(k) != now.get(k)]


def check_start(study: StudyConfig, folder: Location, resume: bool, overwrite: bool) -> None:
    """Refuse a start that would mix two studies in one folder, before anything is written."""
    meta = folder / "study.json"
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if not meta.exists():
        if resume:
            raise ValueError(f"--resume: there is no study {study.name!r} in {folder.parent} to resume (no {meta}); "
                             f"start it without --resume")  # fmt: skip
        return
    if resume:
        try:
            stored = json.loads(meta.read_text())
        except ValueError:
            raise ValueError(f"--resume: {meta} is not valid JSON; it is not a study this version can resume") from None
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
