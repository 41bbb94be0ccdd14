"""Ray Train: the engine's loop as a `TorchTrainer` (Train V2), with DDP, checkpoints and failure recovery.

Each worker builds the same PromptedCLIP from the run spec (same seed, so the same initial prompts),
wraps it with `prepare_model` (DDP over gloo on CPU, NCCL on GPU; only the prompts are trainable, so DDP
all-reduces a few hundred KB per step), and reads its share of every multi-task batch: the sampler builds
the same global batch on every rank and each rank keeps every `world_size`-th sample of each task. The
union of the ranks' batches is exactly the single-process batch, so 2 workers with batch b each compute
the same update as 1 worker with batch 2b.

Every epoch the train loss and the validation counts are all-reduced, then `ray.train.report` is called
by every worker (it is a barrier) with a prompt-only checkpoint from rank 0. A restarted worker group
resumes from `ray.train.get_checkpoint()`; re-running a run with the same folder resumes it too, because
the run name is derived from the folder, never from the time.

Resources are checked before anything starts: Train V2 retries a worker group that cannot be placed
forever, so a request the cluster cannot satisfy would hang instead of failing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .engine import (
    TrainConfig,
    accuracy,
    checkpoint_state,
    epoch_seed,
    evaluate_counts,
    make_optimizer,
    restore_state,
    train_epoch,
    trainable_parameters,
)
from .storage import Location, location

RUN_NAME = "ray-train"  # Ray's folder inside the run folder: fixed, so re-running resumes
# Test-only fault injection (tests/faults): a rank exits once at the start of an epoch; a seed diverges.
FAIL_ENV = "MMAP_RAY_TEST_FAIL_AT_EPOCH"  # the epoch (0-based) at whose start the rank exits, once
FAIL_RANK_ENV = "MMAP_RAY_TEST_FAIL_RANK"  # which rank exits (default 1)
NAN_ENV = "MMAP_RAY_TEST_NAN_SEED"  # runs with this seed produce NaN logits from their second epoch on


@dataclass(frozen=True)
class WorkerSpec:
    """How many Ray Train workers a run uses and what each one reserves."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    # Custom resources each worker also reserves, e.g. {"A100": 1} to pin a node type.
    extra_resources: dict[str, float] = field(default_factory=dict)
    # An autoscaler will add nodes: skip the "cluster too small" check (it would see only today's nodes).
    autoscale: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1 for Ray Train (0 means in-process training)")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker} must be > 0 (fractions such as 0.5 are fine)")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} must be >= 0")
        if self.max_failures < 0:
            raise ValueError(f"max_failures={self.max_failures} must be >= 0")

    @property
    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker, **self.extra_resources}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        return res


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
        log(f"warning: the study folder {folder} is on local disk, but the Ray cluster has {len(nodes)} nodes: "
            f"trials on other nodes cannot write there. Use --storage s3://BUCKET/PREFIX (or gs://) or a "
            f"filesystem shared by every node")  # fmt: skip


def _all_reduce(t: torch.Tensor, world_size: int, op: str = "sum") -> torch.Tensor:
    if world_size == 1:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size if op == "mean" else t


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: build, prepare, train, all-reduce, report, checkpoint."""
    import ray.train
    import ray.train.torch
    from torch.utils.data import DataLoader

    from .data.base import MultiTaskDataset
    from .data.sampler import MultiTaskBatchSampler
    from .runspec import build_run

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["train"])
    model, tasks = build_run(config["run"])  # same seed on every rank: identical initial prompts
    device = ray.train.torch.get_device()
    model.to(device)
    params = trainable_parameters(model, cfg.full_finetune)
    ddp = ray.train.torch.prepare_model(  # Ray Train: DDP when world > 1
        model, parallel_strategy_kwargs={"broadcast_buffers": False, "find_unused_parameters": False}
    )
    sampler = MultiTaskBatchSampler([len(t.train) for t in tasks], cfg.batch_size, cfg.sampling, cfg.seed, rank, world)
    loader = DataLoader(MultiTaskDataset([t.train for t in tasks]), batch_sampler=sampler, num_workers=cfg.num_workers)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)  # Ray Train: device placement
    opt, sched = make_optimizer(params, cfg, cfg.epochs * len(sampler))
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()  # Ray Train: resume after a failure or a re-run
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            history = restore_state(torch.load(Path(d) / "state.pt", map_location=device, weights_only=True), model, opt, sched)

    names = [t.name for t in tasks]
    sizes = {"trainable_params": sum(p.numel() for p in params), "total_params": sum(p.numel() for p in model.parameters())}
    for epoch in range(len(history), cfg.epochs):
        _maybe_fail(config, epoch, rank)
        torch.manual_seed(epoch_seed(cfg, epoch, rank))
        sampler.set_epoch(epoch)
        model.train()
        forward = ddp
        if config.get("nan_seed") == cfg.seed and epoch > 0:  # test-only: this run diverges
            forward = lambda images, task_ids: ddp(images, task_ids) * float("nan")  # noqa: E731
        loss = train_epoch(forward, loader, opt, sched, params, cfg, device)
        loss = float(_all_reduce(torch.tensor([loss], dtype=torch.float64), world, "mean"))
        val = _all_reduce(evaluate_counts(model, tasks, "val", cfg.eval_batch_size, rank, world), world)
        row = {"epoch": epoch + 1, "train_loss": loss, "lr": sched.get_last_lr()[0], **sizes}
        row.update({f"val/{k}": v for k, v in accuracy(names, val).items()})
        if epoch + 1 == cfg.epochs:
            test = _all_reduce(evaluate_counts(model, tasks, "test", cfg.eval_batch_size, rank, world), world)
            row.update({f"test/{k}": v for k, v in accuracy(names, test).items()})
        history.append(row)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save(checkpoint_state(model, opt, sched, history, cfg), Path(d) / "state.pt")
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(row, checkpoint=ckpt)  # Ray Train: a barrier; every rank calls it every epoch


def _maybe_fail(config: dict, epoch: int, rank: int) -> None:
    """Test-only fault injection: `fail_rank` dies once at the start of `fail_at_epoch` (a marker file says once)."""
    fail_at, marker = config.get("fail_at_epoch"), config.get("fail_marker")
    if fail_at is None or rank != config.get("fail_rank", 1) or epoch != fail_at or marker is None or Path(marker).exists():
        return
    Path(marker).write_text("failed once\n")
    os._exit(1)


def fit_distributed(
    run: dict, cfg: TrainConfig, out: str | Path | Location, spec: WorkerSpec, callbacks: list | None = None
) -> dict:
    """Train the run with Ray Train in `out` (a folder or object-storage URI); returns the final checkpoint state.

    The state holds the metrics history, with test metrics in its last row.

    Starts a local Ray instance when none is connected; checks resources first.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    out = location(out, "out")  # absolute: workers chdir into their own folders
    run = dict(run)
    if run.get("root"):
        run["root"] = str(Path(run["root"]).resolve())
    ensure_ray()
    check_resources(spec)
    config = {"run": run, "train": asdict(cfg)}
    if os.environ.get(FAIL_ENV) and out.is_local:
        config.update(fail_at_epoch=int(os.environ[FAIL_ENV]), fail_marker=str(out / ".test-failed-once"),
                      fail_rank=int(os.environ.get(FAIL_RANK_ENV, "1")))  # fmt: skip
    if os.environ.get(NAN_ENV):
        config["nan_seed"] = int(os.environ[NAN_ENV])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
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
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
