"""Experiment tracking for studies, shaped by the study's question rather than by Tune's internals.

One tracked run per trial (per `(config_id, seed)`: a resumed or retried trial continues its run), named
`<scheme> <partition> s<seed> [<config_id:8>]`; its params are flat, under the names of the trial table's
columns (`scheme`, `partition`, `n_tokens`, `depth`, `layers`, `projection`, `lr`, `seed`, `config_id`, ...:
`rows.config_columns`); its metrics are per epoch (`val/<task>`, `val/mean`, `train/loss`, `lr`, at
step = epoch) and, after the last epoch, `test/<task>`, `test/mean`, `zeroshot/...`. No setting is logged as
a metric. Accuracies are in percent, as in the Parquet tables and the report.

- mlflow: the tracking URI is $MLFLOW_TRACKING_URI, else an SQLite store in the study folder
  (`<study>/mlflow.db`, for a study on local disk); the experiment is the study's name. View with
  `mlflow ui --backend-store-uri sqlite:///<study>/mlflow.db` (the `[mlflow]` extra installs the UI).
- tensorboard: one event folder per trial under `<study>/tensorboard/` (a study on local disk);
  `tensorboard --logdir <study>/tensorboard` (the `[tensorboard]` extra installs the viewer).
- wandb: Ray Tune's `WandbLoggerCallback`, project = the study's name ($WANDB_API_KEY, or WANDB_MODE=offline).

The trackers are Tune callbacks in the driver. Each opens its store before the Tuner starts (MLflow's
first use of an SQLite store migrates its schema, seconds), and a trial's result costs one batched write,
so tracking does not hold up Tune's loop. The libraries are optional extras (`pip install
'mmap-ray[mlflow]'`, `[tensorboard]`, `[wandb]`); `check_tracking` names a missing one, or a store that
cannot be, before the study claims anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from ray.tune import Callback

from ..storage import Location
from .config import TRACKERS
from .rows import config_columns, percent
from .trials import Plan, Trial, trial_of

KEY_TAG = "mmap_ray.key"  # an MLflow run's tag: the trial's `<config_id>-s<seed>`


def check_tracking(trackers: tuple[str, ...], folder: Location) -> None:
    """ValueError naming the first tracker that cannot run here (library missing, nowhere to write)."""
    for name in trackers:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(
                f"StudyConfig.tracking has {name!r} but {TRACKERS[name]} is not installed: "
                f"pip install 'mmap-ray[{name}]'"
            )
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI") and not folder.is_local:
            raise ValueError(
                f"StudyConfig.tracking has 'mlflow' and the study is in object storage ({folder}): set "
                f"MLFLOW_TRACKING_URI to your MLflow server (the default SQLite store only works for a local study)"
            )
        if name == "tensorboard" and not folder.is_local:
            raise ValueError(
                f"StudyConfig.tracking has 'tensorboard' and the study is in object storage ({folder}): event "
                f"files are written to the study folder on local disk; use mlflow with MLFLOW_TRACKING_URI instead"
            )


def mlflow_store(folder: Location) -> str:
    """The MLflow tracking URI of a study: $MLFLOW_TRACKING_URI, else an SQLite file in its (local) folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder / 'mlflow.db').path}"


def tensorboard_dir(folder: Location) -> Path:
    """The folder holding one TensorBoard run (event folder) per trial."""
    return Path((folder / "tensorboard").path)


def tracking_lines(trackers: tuple[str, ...], name: str, folder: Location) -> list[str]:
    """Where each tracker writes and how to look at it, one line each (printed at the study's start and end)."""
    lines = []
    for tracker in trackers:
        if tracker == "mlflow":
            uri = mlflow_store(folder)
            lines.append(f"tracking: mlflow experiment {name!r} at {uri} (mlflow ui --backend-store-uri {uri})")
        elif tracker == "tensorboard":
            lines.append(f"tracking: tensorboard runs in {tensorboard_dir(folder)} (tensorboard --logdir ...)")
        elif tracker == "wandb":
            lines.append(f"tracking: wandb project {name!r}")
    return lines


def run_name(planned: Trial) -> str:
    """A tracked run's name: what distinguishes the trial for a reader, with its config_id for uniqueness."""
    partition = planned.partition
    scheme = "" if planned.scheme == partition else f"{planned.scheme} "
    variant = f" ({planned.variant})" if planned.variant else ""
    return f"{scheme}{partition}{variant} s{planned.seed} [{planned.config_id[:8]}]"


def trial_params(planned: Trial) -> dict[str, str]:
    """A trial's params, flat, under the trial table's column names (lists as "0,1,2")."""
    flat = {}
    for key, value in config_columns(planned).items():
        flat[key] = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return flat


def tracked_metrics(result: dict) -> dict[str, float]:
    """The metrics of one reported epoch: validation accuracy, training loss, learning rate, and after the
    last epoch the test and zero-shot accuracies. Tune's own keys and every setting are left out."""
    accuracies = (k for k in result if k.startswith(("val/", "test/", "zeroshot/")) and result[k] is not None)
    out = {k: percent(float(result[k])) for k in accuracies}
    if result.get("train_loss") is not None:
        out["train/loss"] = float(result["train_loss"])
    if result.get("lr") is not None:
        out["lr"] = float(result["lr"])
    return out


class MLflowTracker(Callback):
    """One MLflow run per (config_id, seed) in the study's experiment, written with MLflow's client."""

    def __init__(self, uri: str, experiment: str, plan: Plan):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)  # opens (and, the first time, migrates) the store now
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.plan = plan
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id

    def _run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            from mlflow.entities import Param

            planned = trial_of(trial.config, self.plan)
            where = f"tags.`{KEY_TAG}` = '{planned.key}'"
            found = self.client.search_runs([self.experiment_id], filter_string=where, max_results=1)
            if found:  # a resumed or retried trial continues its run
                run_id = found[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                run = self.client.create_run(
                    self.experiment_id, run_name=run_name(planned), tags={KEY_TAG: planned.key}
                )
                run_id = run.info.run_id
                params = [Param(k, v) for k, v in trial_params(planned).items()]
                self.client.log_batch(run_id, params=params)
            self.runs[trial.trial_id] = run_id
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = [Metric(k, v, now, step) for k, v in tracked_metrics(result).items()]
        if metrics:
            self.client.log_batch(self._run(trial), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.client.set_terminated(self._run(trial), status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.client.set_terminated(self._run(trial), status="FAILED")


class TensorBoardTracker(Callback):
    """One TensorBoard run (event folder named `run_name`) per trial, its params as a text summary."""

    def __init__(self, logdir: Path, plan: Plan):
        self.logdir, self.plan = logdir, plan
        self.writers: dict[str, object] = {}  # Tune trial id -> SummaryWriter

    def _writer(self, trial):
        if trial.trial_id not in self.writers:
            from tensorboardX import SummaryWriter

            planned = trial_of(trial.config, self.plan)
            writer = SummaryWriter(str(self.logdir / run_name(planned).replace("/", "_")))
            writer.add_text("params", json.dumps(trial_params(planned), indent=1))
            self.writers[trial.trial_id] = writer
        return self.writers[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._writer(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer, step = self._writer(trial), int(result.get("epoch", result.get("training_iteration", 0)))
        for key, value in tracked_metrics(result).items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def _close(self, trial) -> None:
        writer = self.writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial)


def tracking_callbacks(trackers: tuple[str, ...], name: str, folder: Location, plan: Plan) -> list:
    """Ray Tune callbacks for `trackers`, for the study `name` kept in `folder` (`plan`: what its trials share)."""
    callbacks = []
    for tracker in trackers:
        if tracker == "tensorboard":
            callbacks.append(TensorBoardTracker(tensorboard_dir(folder), plan))
        elif tracker == "mlflow":
            callbacks.append(MLflowTracker(mlflow_store(folder), name, plan))
        elif tracker == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback  # optional: only when asked for

            callbacks.append(WandbLoggerCallback(project=name))
    return callbacks
