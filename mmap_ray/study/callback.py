"""The Tune driver's results writer: one Parquet file per (config_id, seed) and table as each trial ends
(trials; epochs; predictions, one row per test image).

It runs in the Tune driver, the one process that sees every trial end, so files are written by one
writer each. A trial's metrics come from its newest checkpoint (read with `weights_only=True`),
its outcome from Tune (finished, or errored with the causes from its error file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..results import (
    EPOCH_SCHEMA,
    EPOCHS,
    PREDICTIONS,
    TRIAL_PREDICTION_SCHEMA,
    TRIALS,
    row_key,
    trial_schema,
    write_table,
)
from ..storage import StorageError, location
from .config import StudyConfig
from .rows import prediction_rows, trial_rows
from .trials import Plan, trial_of


def history(study_dir: str, key: str) -> list[dict]:
    """The metrics history in the trial's newest checkpoint ([] before its first, or when that one does not
    load: the trial failed on it, and its row says why)."""
    from .. import checkpoint
    from ..distributed import RUN_NAME

    newest = checkpoint.newest(location(study_dir) / "train" / key / RUN_NAME)
    if newest is None:
        return []
    try:
        return checkpoint.load(newest / checkpoint.STATE_FILE)["history"]  # local or object storage; validated
    except ValueError:  # not a run checkpoint, or one that would run code: never read, the trial's error names it
        return []


def error_message(trial) -> str:
    """The causes in a failed trial's trace, innermost last ("TrainingFailedError: ... <- FloatingPointError: ...")."""
    path = Path(trial.error_file) if trial.error_file else None  # the driver's copy: written before the callback
    text = path.read_text(errors="replace") if path and path.is_file() else str(trial.get_error() or "")
    causes = list(
        dict.fromkeys(m.strip() for m in re.findall(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): .+$", text, re.M))
    )
    return " <- ".join(causes)[-2000:] or text[-2000:] or "unknown error (see the trial's error file)"


def one_line(error: str) -> str:
    """An error message as one line for the console: its first line that is not Tune's "Failure # N" header."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip() and not ln.startswith("Failure # ")]
    return (lines[0] if lines else "unknown error")[:300]


def parquet_writer(
    study: StudyConfig, plan: Plan, tasks: list[str], failures: list[StorageError], interrupt, log: Callable
):
    """A Tune callback writing each ended trial's rows; storage errors are also kept in `failures`. A trial
    that fails gets one line in `log` (Tune's own traceback is off: `run.Interrupt.ENV`), whether Tune runs
    it again (max_failures) or records it as errored.

    Once the study is interrupted (`interrupt.requested`) or a write has failed, a trial stopped part-way or
    failing is not a result: it gets no row, and --resume runs it (from its last checkpoint). A failed write
    is kept, not raised: Tune would log its traceback and go on; `interrupt.stopper(failures)` stops the
    study instead, and run_study raises the first failure.
    """
    from ray.tune import Callback

    class ParquetWriter(Callback):
        def __init__(self, log: Callable) -> None:  # an argument, not a closure cell: not pickled with the class
            self._log = log

        def __getstate__(self) -> dict:  # Tune pickles its callbacks (tuner.pkl); a console is not state
            return {k: v for k, v in self.__dict__.items() if k != "_log"}

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state, _log=print)

        def _write(self, trial, status: str, error: str = "") -> None:
            planned = trial_of(trial.config, plan)
            wall = float((trial.last_result or {}).get("time_total_s", 0.0))
            done = history(study.study_dir, planned.key)
            if (interrupt.requested or failures) and (status == "ERROR" or len(done) < planned.run.train.epochs):
                return
            res = study.resources
            row, epochs = trial_rows(
                study.name,
                study.k,
                tasks,
                planned,
                done,
                trial_id=trial.trial_id,
                status=status,
                error=error,
                wall_s=wall,
                workers=res.workers,
                device_per_worker=res.gpus_per_worker or res.cpus_per_worker,
                device_kind="gpu" if res.gpus_per_worker else "cpu",
            )
            root = location(study.study_dir) / "results"
            key = row_key(row["config_id"], row["seed"])
            try:
                if epochs:
                    write_table(root, EPOCHS, key, epochs, EPOCH_SCHEMA)
                if preds := prediction_rows(row, done):
                    write_table(root, PREDICTIONS, key, preds, TRIAL_PREDICTION_SCHEMA)
                write_table(root, TRIALS, key, [row], trial_schema(tasks))  # last: a row means its curves exist
            except StorageError as e:
                failures.append(e)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trial, "TERMINATED")

        def on_trial_recover(self, iteration, trials, trial, **info):
            key = trial_of(trial.config, plan).key
            self._log(
                f"trial {key} failed ({one_line(error_message(trial))}); Tune runs it again from its newest checkpoint"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            error = error_message(trial)
            if not interrupt.requested:
                self._log(f"trial {trial_of(trial.config, plan).key} errored: {one_line(error)}")
            self._write(trial, "ERROR", error)

    return ParquetWriter(log)
