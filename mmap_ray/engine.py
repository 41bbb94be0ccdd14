"""The training loop of PromptedCLIP: one epoch loop, `fit`, for every caller (evaluation: `evaluation`).

`fit(model, tasks, cfg, ctx)` optimises the trainable parameters only (the prompts, or the whole
backbone for the full fine-tuning baseline), with a warm-up + cosine schedule, gradient clipping, bf16
autocast on CUDA (`TrainConfig.precision` may ask for bf16 or fp32 anywhere: what the GPU acceptance
check compares), per-task and mean validation accuracy every epoch and test accuracy after the last.
What differs between its callers is a small `Context`: the rank and world size, the device, the
all-reduce, where each epoch's row and checkpoint go, and where an earlier run's state comes from.
`train` runs it in this process (checkpoint.pt and metrics.jsonl in a run folder), every Ray Train
worker runs it with a Ray context (`distributed`), and the affinity warm-up reuses its step
(`train_step`). Both training paths write the same history rows.

Resume is exact: the sampler's order and the RNG depend only on (seed, epoch, rank), and a checkpoint
(`checkpoint`) holds the trainable tensors, optimizer, schedule and history (a few hundred KB for MmAP,
never the frozen backbone).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint
from .checkpoint import load as load_checkpoint  # noqa: F401  (the name callers and tests know)
from .checkpoint import without_predictions  # noqa: F401  (the CLI's summary uses it)
from .config import DEVICES, OPTIMIZERS, TrainConfig  # noqa: F401  (the names callers know)
from .data.base import MultiTaskDataset, TaskData, split_digest
from .data.sampler import MultiTaskBatchSampler
from .evaluation import accuracy, autocast, evaluate_counts, predict
from .model import PromptedCLIP
from .storage import location


def resolve_device(name: str) -> torch.device:
    """The torch device for a `TrainConfig.device` setting: 'auto' is CUDA when this process sees a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"TrainConfig.device='cuda' but this process sees no CUDA device (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); use 'auto' or 'cpu', or run on a GPU machine"
        )
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


def write_json(path: str | Path, obj: object) -> None:
    """`obj` as indented JSON in `path`, written atomically (`storage.Location.write_bytes`)."""
    location(path, "out").write_text(json.dumps(obj, indent=2) + "\n")


def make_optimizer(params: list, cfg: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """The optimizer over `params` and its warm-up + cosine schedule."""
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))


def _same(x):
    return x


def _keep_nothing(row: dict, state: dict | None) -> None:
    return None


def _fresh() -> dict | None:
    return None


@dataclass(frozen=True)
class Context:
    """What differs between the callers of `fit`. The defaults: one process that keeps nothing."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = _same  # the sum over ranks, as a new tensor
    # Every rank, every epoch, once the row is final: (row, the checkpoint state on rank 0 when one is due
    # (`checkpoint_due`), None otherwise).
    # The state shares storage with the live weights and optimizer: save it before returning.
    report: Callable[[dict, dict | None], None] = _keep_nothing
    restore: Callable[[], dict | None] = _fresh  # the checkpoint state to resume from, or None
    wrap_model: Callable[[PromptedCLIP], Callable] = _same  # the forward to train through (DDP)
    wrap_loader: Callable[[DataLoader], Iterable] = _same  # the batches to train on (device placement)
    progress: bool = False  # a progress bar per epoch


def train_step(
    forward: Callable,
    batch: Sequence[torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: LRScheduler | None = None,
    *,
    grad_clip: float | None = None,
    step: int = 0,
    where: str = "of the epoch",
    precision: str = "auto",
) -> float:
    """One optimiser step of `forward(images, task_ids) -> logits` on a multi-task batch; returns the loss.

    `batch` is (images (B, 3, H, W), labels (B,), task ids (B,)) on the model's device; the forward runs
    at `precision` (PRECISIONS). A loss that is not finite raises FloatingPointError before it can update
    a weight; `step` and `where` place it.
    """
    images, labels, task_ids = batch
    with autocast(images.device, precision):
        logits = forward(images, task_ids)  # (B, C_max)
    loss = F.cross_entropy(logits.float(), labels)
    value = loss.item()
    if not math.isfinite(value):  # stop before a non-finite update reaches the prompts or a report
        if not opt.state:  # no update yet: the learning rate is not the cause
            why = "before any update: the initial prompts (init_std) or the images give non-finite logits"
        else:
            why = "the run diverged; lower the learning rate or set grad_clip"
        raise FloatingPointError(
            f"training loss is {value} at step {step} {where} (lr {opt.param_groups[0]['lr']:.3g}): {why}"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    if sched is not None:
        sched.step()
    return value


def train_epoch(
    forward: Callable,
    loader: Iterable,
    opt: torch.optim.Optimizer,
    sched: LRScheduler,
    cfg: TrainConfig,
    ctx: Context,
    epoch: int,
) -> float:
    """One pass over this rank's batches; returns their mean training loss.

    The loop's per-epoch hook, looked up by `fit` at every call: the fault-injection tests wrap it
    (tests/plugins), so production code carries no test switches.
    """
    losses = []
    batches = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not ctx.progress, leave=False)
    for step, batch in enumerate(batches):
        batch = tuple(x.to(ctx.device) for x in batch)
        losses.append(
            train_step(forward, batch, opt, sched, grad_clip=cfg.grad_clip, step=step, precision=cfg.precision)
        )
    return sum(losses) / max(1, len(losses))


def checkpoint_due(cfg: TrainConfig, epoch: int, stopping: bool = False) -> bool:
    """Whether the run saves a checkpoint after `epoch` (1-based): every k-th epoch (k = checkpoint_every,
    or about 10 checkpoints per run), the last epoch, and wherever the run is told to stop."""
    every = cfg.checkpoint_every or max(1, math.ceil(cfg.epochs / 10))
    return epoch % every == 0 or epoch == cfg.epochs or stopping


def epoch_seed(cfg: TrainConfig, epoch: int, rank: int = 0) -> int:
    """Seed of the global RNG (augmentations) for one epoch on one rank: a function of (seed, epoch, rank)."""
    return cfg.seed * 100_003 + epoch + 7_919 * rank


def _evaluation(cfg: TrainConfig, ctx: Context) -> dict:
    """How this rank evaluates during a run: its shard of the split, at the run's batch size and precision."""
    return {
        "batch_size": cfg.eval_batch_size,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "precision": cfg.precision,
    }


def _split_accuracy(model: PromptedCLIP, tasks: Sequence[TaskData], split: str, cfg: TrainConfig, ctx: Context) -> dict:
    """`{split}/<task>` and `{split}/mean` accuracy, counted on every rank's shard and summed."""
    counts = evaluate_counts(model, tasks, split, **_evaluation(cfg, ctx))  # (T, 2)
    return {f"{split}/{k}": v for k, v in accuracy([t.name for t in tasks], ctx.all_reduce(counts)).items()}


def _gathered_predictions(
    model: PromptedCLIP, tasks: Sequence[TaskData], cfg: TrainConfig, ctx: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N_max) labels and predicted classes of every test image (-1 past a task's end), from all ranks.

    Each rank fills its shard's columns with class + 1 (0 elsewhere); the ranks' shards are disjoint, so
    the all-reduce sum assembles the whole split."""
    n_max = max(len(t.test) for t in tasks)
    both = torch.zeros(2, len(tasks), n_max, dtype=torch.int64)  # (2, T, N_max): label + 1, prediction + 1
    for t, index, labels, pred in predict(model, tasks, "test", **_evaluation(cfg, ctx)):
        both[0, t, index] = labels + 1
        both[1, t, index] = pred + 1
    both = ctx.all_reduce(both).to(torch.int64) - 1
    return both[0], both[1]


def _test_outcomes(model: PromptedCLIP, tasks: Sequence[TaskData], cfg: TrainConfig, ctx: Context) -> dict:
    """The last epoch's test results: `test/<task>` and `test/mean`, the backbone's zero-shot accuracy on
    the same images (`zeroshot/<task>`, `zeroshot/mean`), and every image's outcome under "predictions"
    (columns task, image, label, prediction, correct: what paired comparisons need)."""
    names = [t.name for t in tasks]
    labels, pred = _gathered_predictions(model, tasks, cfg, ctx)  # (T, N_max) each
    valid = labels >= 0
    correct = (pred == labels) & valid
    counts = torch.stack([correct.sum(1), valid.sum(1)], dim=1).double()  # (T, 2)
    zero_shot = model.zero_shot().to(ctx.device)
    zs_counts = evaluate_counts(zero_shot, tasks, "test", **_evaluation(cfg, ctx))
    t_idx, i_idx = valid.nonzero(as_tuple=True)  # task-major, image order within a task
    return {
        **{f"test/{k}": v for k, v in accuracy(names, counts).items()},
        **{f"zeroshot/{k}": v for k, v in accuracy(names, ctx.all_reduce(zs_counts)).items()},
        "test_images": split_digest(tasks, "test"),  # which images the predictions are of
        "predictions": {
            "task": [names[t] for t in t_idx.tolist()],
            "image": i_idx.tolist(),
            "label": labels[t_idx, i_idx].tolist(),
            "prediction": pred[t_idx, i_idx].tolist(),
            "correct": correct[t_idx, i_idx].tolist(),
        },
    }


def fit(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: TrainConfig,
    ctx: Context,
    *,
    stop_after_epoch: int | None = None,
) -> list[dict]:
    """Train `model` on `tasks` from `ctx.restore()` (or afresh) to `cfg.epochs`; returns the history.

    One row per epoch, the same on every path: epoch, train_loss (mean over ranks), lr, trainable_params,
    total_params, val/<task> and val/mean; the last epoch's row adds test/<task>, test/mean, the
    backbone's zeroshot/<task> and zeroshot/mean, and every test image's outcome ("predictions").
    Each rank reads every `world_size`-th sample of each task's share of the global batch.
    `stop_after_epoch` ends the call early (to test resuming).
    """
    model.to(ctx.device)
    params = model.set_trainable(cfg.full_finetune)  # before wrapping: DDP reads requires_grad
    forward = ctx.wrap_model(model)
    lengths = [len(t.train) for t in tasks]
    sampler = MultiTaskBatchSampler(lengths, cfg.batch_size, cfg.sampling, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        MultiTaskDataset([t.train for t in tasks]),
        batch_sampler=sampler,
        num_workers=cfg.loader_workers,
        pin_memory=cfg.pin_memory and ctx.device.type == "cuda",
    )
    loader = ctx.wrap_loader(loader)
    opt, sched = make_optimizer(params, cfg, cfg.epochs * len(sampler))
    saved = ctx.restore()
    history = checkpoint.restore(saved, model, opt, sched) if saved is not None else []
    sizes = {
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
    }
    for epoch in range(len(history), cfg.epochs):
        torch.manual_seed(epoch_seed(cfg, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        model.train()
        loss = train_epoch(forward, loader, opt, sched, cfg, ctx, epoch)  # this rank's mean
        loss = ctx.all_reduce(torch.tensor([loss], dtype=torch.float64)) / ctx.world_size  # (1,) mean over ranks
        row = {"epoch": epoch + 1, "train_loss": float(loss), "lr": sched.get_last_lr()[0], **sizes}
        row.update(_split_accuracy(model, tasks, "val", cfg, ctx))
        if epoch + 1 == cfg.epochs:
            row.update(_test_outcomes(model, tasks, cfg, ctx))
        history.append(row)
        stopping = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
        due = ctx.rank == 0 and checkpoint_due(cfg, epoch + 1, stopping)
        ctx.report(row, checkpoint.state(model, opt, sched, history, cfg) if due else None)
        if stopping:
            break
    return history


def epoch_line(row: dict, epochs: int) -> str:
    """One console line per epoch: loss, learning rate and validation accuracy (test too after the last)."""
    line = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, lr {row['lr']:.3g}, "
    line += f"val {100 * row['val/mean']:.1f}%"
    if "test/mean" in row:
        line += f", test {100 * row['test/mean']:.1f}%"
    return line


def train(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[dict]:
    """`fit` in this process; returns the history (one row per epoch, as `fit` describes).

    With `progress`, a bar per epoch and one line per epoch (`epoch_line`). With `out_dir`, writes
    checkpoint.pt and metrics.jsonl atomically whenever a checkpoint is due
    (`checkpoint_due`: every `checkpoint_every` epochs and after the last), and resumes from checkpoint.pt
    when `resume` is set.
    """
    device = resolve_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    saved = out / checkpoint.RUN_FILE if out is not None else None

    def restore() -> dict | None:
        return checkpoint.load(saved, device) if resume and saved is not None and saved.is_file() else None

    def report(row: dict, state: dict | None) -> None:
        if out is not None and state is not None:
            checkpoint.save_run(out, state)
        if progress:
            tqdm.write(epoch_line(row, cfg.epochs))

    ctx = Context(device, report=report, restore=restore, progress=progress)
    return fit(model, tasks, cfg, ctx, stop_after_epoch=stop_after_epoch)
