"""A one-worker study trial trains in the Tune trial's own process: no nested Ray Train worker group.

A Ray Train run inside a Tune trial costs a fixed 30-40 s on a small machine (the Train controller,
a placement group, a fresh worker process importing torch, a report barrier per epoch). With one worker
there is nothing to distribute, so `fit_in_trial` runs the same loop (`engine.fit`) right here, with a
`Context` whose report is `ray.tune.report` and whose checkpoints are folders in the trial's run folder
in Ray Train's layout (`checkpoint.save_numbered`): the study's results writer, resume and the Parquet
rows are those of a Train trial. The trial reserves the worker's resources itself (`trial_resources`).

Failures: Tune retries the trial (`WorkerSpec.max_failures` times), and the retry resumes from the
newest checkpoint, as a restarted Train worker group would.
"""

from __future__ import annotations

import torch

from .. import checkpoint
from ..build import build_run
from ..config import RunConfig
from ..distributed import RUN_NAME, WorkerSpec
from ..engine import Context, fit, resolve_device
from ..storage import Location


def trial_resources(spec: WorkerSpec, driver_cpu: float) -> dict[str, float]:
    """What a Tune trial reserves: its single worker's resources when it trains in process, else only
    `driver_cpu` (its Train workers reserve their own)."""
    if spec.workers > 1:
        return {"cpu": driver_cpu}
    return dict(spec.resources_per_worker)  # Tune reads "CPU" and "GPU" as it reads "cpu" and "gpu"


def tune_context(device: torch.device, folder: Location) -> Context:
    """The loop's `Context` in a Tune trial's process: rows to Tune, checkpoints to `folder`."""
    from ray import tune

    def restore() -> dict | None:
        newest = checkpoint.newest(folder)
        return None if newest is None else checkpoint.load(newest / checkpoint.STATE_FILE, device)

    def report(row: dict, state: dict | None) -> None:
        if state is not None:
            checkpoint.save_numbered(state, folder)  # before the report: a row Tune sees has its state saved
        tune.report(checkpoint.without_predictions(row))  # the test images' outcomes stay in the checkpoint

    return Context(device, report=report, restore=restore)


def fit_in_trial(run: RunConfig, folder: Location, spec: WorkerSpec) -> None:
    """Train the run in this Tune trial's process; checkpoints go to `folder`/ray-train/ as Ray Train's would."""
    # a GPU only where the trial reserved one ('auto'); 'cuda' without one is refused by StudyConfig
    device = resolve_device(run.train.device) if spec.gpus_per_worker > 0 else torch.device("cpu")
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))  # as many threads as reserved cores, like a worker
    model, tasks = build_run(run)
    fit(model, tasks, run.train, tune_context(device, folder / RUN_NAME))
