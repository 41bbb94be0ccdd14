"""Experiment tracking for studies: each tracker named in `StudyConfig.tracking` is one of Ray Tune's own
logger callbacks, fed every trial's per-epoch rows (loss, learning rate, validation accuracy; test and
zero-shot accuracy after the last epoch) and its configuration.

- tensorboard: `TBXLoggerCallback`; event files in each trial's folder under `<study>/tune/`
  (`tensorboard --logdir <study>/tune`).
- mlflow: `MLflowLoggerCallback`, one MLflow run per trial in the experiment named after the study; the
  tracking URI is $MLFLOW_TRACKING_URI, else an SQLite store `<study>/mlflow.db` for a study on local disk
  (MLflow 3 refuses its old file store): `mlflow ui --backend-store-uri sqlite:///<study>/mlflow.db`.
- wandb: `WandbLoggerCallback`, project = the study's name ($WANDB_API_KEY, or WANDB_MODE=offline).

The libraries are optional extras (`pip install 'mmap-ray[mlflow]'`, `[tensorboard]`, `[wandb]`);
`check_tracking` names a missing one before the study claims anything.
"""

from __future__ import annotations

import importlib.util
import os

from ..storage import Location

TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module it needs


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


def mlflow_store(folder: Location) -> str:
    """The default MLflow tracking URI of a local study: an SQLite file in its folder."""
    return f"sqlite:///{(folder / 'mlflow.db').path}"


def tracking_callbacks(trackers: tuple[str, ...], name: str, folder: Location) -> list:
    """Ray Tune logger callbacks for `trackers`, for the study `name` kept in `folder`."""
    callbacks = []
    for tracker in trackers:
        if tracker == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif tracker == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow_store(folder)
            callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=name))
        elif tracker == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=name))
    return callbacks
