"""Ray Train: the engine's loop (`engine.fit`) as a `TorchTrainer` (Train V2), with DDP, checkpoints and
failure recovery.

Each worker builds the same PromptedCLIP from the run spec (same seed, so the same initial prompts) and
runs `engine.fit` with a Ray `Context` (`ray_context`): the model is wrapped with `prepare_model` (DDP
over NCCL when each worker has a GPU of its own, gloo otherwise (`ddp_backend`); only the prompts are
trainable, so DDP all-reduces a few hundred KB per step), and each rank reads its share of every
multi-task batch: the sampler builds the same global batch on every rank and each rank keeps every
`world_size`-th sample of each task. The union of the ranks' batches is exactly the single-process batch,
so 2 workers with batch b each compute the same update as 1 worker with batch 2b, and the history rows
are those of an in-process run.

Every epoch the train loss and the evaluation counts are all-reduced, then `ray.train.report` is called
by every worker (it is a barrier), with a prompt-only checkpoint (`checkpoint`) from rank 0 when one is
due (`engine.checkpoint_due`: every few epochs and after the last). A restarted
worker group resumes from `ray.train.get_checkpoint()`; re-running a run with the same folder resumes it
too, because the run name is derived from the folder, never from the time.

Resources are checked before anything starts: Train V2 retries a worker group that cannot be placed
forever, so a request the cluster cannot satisfy would hang instead of failing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import checkpoint
from .config import RunConfig, WorkerSpec
from .engine import Context, fit
from .fields import from_dict, to_dict
from .storage import Location, location

RUN_NAME = "ray-train"  # Ray's folder inside the run folder: fixed, so re-running resumes


def ddp_backend(spec: WorkerSpec) -> str:
    """The process group's backend: NCCL when every worker has a whole GPU, gloo on CPUs and for fractional
    GPUs, which Ray may pack onto one device (NCCL refuses two ranks on one GPU: "Duplicate GPU detected")."""
    return "nccl" if spec.gpus_per_worker >= 1 else "gloo"


def check_resources(spec: WorkerSpec, extra_cpus: float = 0.0) -> None:
    """Raise ValueError if the connected cluster could never place the worker group (plus `extra_cpus`)."""
    import ray

    if spec.autoscale:
        return
    total = ray.cluster_resources()
    need = {k: spec.workers * v for k, v in spec.resources_per_worker.items()}
    need["CPU"] += extra_cpus
    need.setdefault("GPU", 0.0)
    short = {k: v for k, v in need.items() if v > total.get(k, 0) + 1e-9}
    if short:
        have = {k: total.get(k, 0) for k in need}
        raise ValueError(
            f"{spec.workers} workers x {spec.resources_per_worker} need {need} but the Ray cluster has {have}; "
            f"use fewer workers, fractional cpus_per_worker (e.g. 0.5), or a larger cluster"
        )


def ensure_ray() -> None:
    """Connect to the Ray cluster this process runs in (RAY_ADDRESS, a job) or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False)


def warn_unshared_storage(folder: Location, log=print) -> None:
    """Warn when a multi-node cluster would keep the study on one node's local disk."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if folder.is_local and len(nodes) > 1:
        log(
            f"warning: the study folder {folder} is on local disk, but the Ray cluster has {len(nodes)} nodes: "
            f"trials on other nodes cannot write there. Use --storage s3://BUCKET/PREFIX (or gs://) or a "
            f"filesystem shared by every node"
        )


def _all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum of `t` over the worker group, as a new tensor where `t` was (NCCL reduces on the GPU only)."""
    import torch.distributed as dist

    out = t.to(device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def ray_context(device: torch.device) -> Context:
    """The loop's `Context` inside a Ray Train worker: DDP, all-reduce, report with a checkpoint, resume."""
    import ray.train
    import ray.train.torch

    rc = ray.train.get_context()
    rank, world = rc.get_world_rank(), rc.get_world_size()

    def restore() -> dict | None:
        saved = ray.train.get_checkpoint()  # Ray Train: the last checkpoint, after a failure or a re-run
        if saved is None:
            return None
        with saved.as_directory() as d:
            return checkpoint.load(Path(d) / checkpoint.STATE_FILE, device)

    def report(row: dict, state: dict | None) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if state is not None:  # rank 0
                checkpoint.save(state, Path(d) / checkpoint.STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
            # Ray Train: a barrier; every rank calls it every epoch. The test images' outcomes stay in the checkpoint
            ray.train.report(checkpoint.without_predictions(row), checkpoint=ckpt)

    def wrap_model(model):  # Ray Train: DDP when world > 1; the frozen backbone's buffers stay put
        kwargs = {"broadcast_buffers": False, "find_unused_parameters": False}
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    return Context(
        device,
        rank,
        world,
        all_reduce=(lambda t: _all_reduce_sum(t, device)) if world > 1 else (lambda t: t),
        report=report,
        restore=restore,
        wrap_model=wrap_model,
        # Ray Train: device placement only; each rank's share comes from our sampler
        wrap_loader=lambda loader: ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False),
    )


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: build the run (same seed on every rank: identical initial prompts),
    then the engine's loop with the Ray context."""
    import ray.train.torch

    from .build import build_run

    run = from_dict(RunConfig, config["run"])
    model, tasks = build_run(run)
    device = ray.train.torch.get_device()
    fit(model, tasks, run.train, ray_context(device))


def fit_distributed(
    run: RunConfig, out: str | Path | Location, spec: WorkerSpec, callbacks: list | None = None
) -> dict:
    """Train the run with Ray Train in `out` (a folder or object-storage URI); returns the final checkpoint state.

    The state holds the metrics history, with test metrics in its last row.

    Starts a local Ray instance when none is connected; checks resources first.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    out = location(out, "out")  # absolute: workers chdir into their own folders (data roots are absolute)
    ensure_ray()
    check_resources(spec)
    config = {"run": to_dict(run)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=ddp_backend(spec)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.workers, use_gpu=spec.gpus_per_worker > 0, resources_per_worker=spec.resources_per_worker
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            **out.ray_storage(),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run in {out / RUN_NAME} ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return checkpoint.load(Path(d) / checkpoint.STATE_FILE)
