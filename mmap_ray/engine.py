"""One train/eval loop for PromptedCLIP, used in-process and (later) inside Ray Train workers.

Optimises the trainable parameters only (the prompts, or the whole backbone for the full fine-tuning
baseline), with a warm-up + cosine schedule, gradient clipping, bf16 autocast on CUDA, per-task and mean
accuracy every epoch, and a checkpoint after every epoch that resumes bit-for-bit: the sampler's order and
the RNG depend only on (seed, epoch). Checkpoints hold trainable tensors only (a few hundred KB for MmAP,
never the frozen backbone).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .data.base import MultiTaskDataset, TaskData
from .data.sampler import MODES, MultiTaskBatchSampler
from .model import PromptedCLIP
from .safeload import load_tensor_file

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults suit prompt tuning of the tiny toy CLIP on the toy benchmark."""

    epochs: int = 10
    batch_size: int = 64  # global batch, shared among tasks (see `sampling`)
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float | None = 1.0
    sampling: str = "equal"  # per-task share of a batch: "equal" or "proportional"
    seed: int = 0
    full_finetune: bool = False  # baseline: train the whole backbone too
    eval_batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, ">= 0 and finite"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("grad_clip", self.grad_clip is None or 0 < self.grad_clip < math.inf, "> 0 and finite, or None"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be {valid}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r} is not valid; choose one of {OPTIMIZERS}")
        if self.sampling not in MODES:
            raise ValueError(f"TrainConfig.sampling={self.sampling!r} is not valid; choose one of {MODES}")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate_counts(
    model: PromptedCLIP, tasks: Sequence[TaskData], split: str, batch_size: int = 256, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """(T, 2) [correct, total] per task on this rank's shard (every `world_size`-th sample) of `split`.

    Class-prompt features are encoded once. Sum the counts over ranks to get the whole split's accuracy.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    text_feats, where = model.text_features(torch.arange(len(tasks), device=device))  # (R, E), (T, C_max)
    counts = torch.zeros(len(tasks), 2, dtype=torch.float64)
    for t, task in enumerate(tasks):
        data = task.split(split)
        shard = Subset(data, range(rank, len(data), world_size))
        for images, labels in DataLoader(shard, batch_size=batch_size):
            images, labels = images.to(device), labels.to(device)
            task_ids = torch.full_like(labels, t)
            with _autocast(device):
                img = F.normalize(model.encode_image(images, model.bank(task_ids).vision).float(), dim=-1)
            logits = model.logits(img, task_ids, text_feats.float(), where)  # (B, C_max)
            counts[t, 0] += int((logits.argmax(1) == labels).sum())
            counts[t, 1] += len(labels)
    model.train(was_training)
    return counts


def accuracy(names: Sequence[str], counts: torch.Tensor) -> dict[str, float]:
    """Per-task accuracy and the unweighted mean over tasks, from (T, 2) [correct, total] counts."""
    acc = {n: float(c / t) for n, (c, t) in zip(names, counts.tolist())}
    acc["mean"] = sum(acc.values()) / len(names)
    return acc


def evaluate(model: PromptedCLIP, tasks: Sequence[TaskData], split: str = "test", batch_size: int = 256) -> dict[str, float]:
    """Accuracy per task and their mean on `split`."""
    return accuracy([t.name for t in tasks], evaluate_counts(model, tasks, split, batch_size))


def trainable_parameters(model: PromptedCLIP, full_finetune: bool) -> list[torch.nn.Parameter]:
    model.clip.requires_grad_(full_finetune)
    model.train()  # keeps the backbone in eval mode unless it is trainable
    return [p for p in model.parameters() if p.requires_grad]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def make_optimizer(params: list, cfg: TrainConfig, total_steps: int):
    """The optimizer over `params` and its warm-up + cosine schedule."""
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))


def train_epoch(
    forward: Callable, loader: DataLoader, opt, sched, params: list, cfg: TrainConfig, device, desc: str = "", progress: bool = False
) -> float:
    """One pass over `loader` with `forward(images, task_ids) -> logits` (the model, or its DDP wrapper).

    Returns the mean training loss of this process's batches.
    """
    losses = []
    for step, (images, labels, task_ids) in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False)):
        images, labels, task_ids = images.to(device), labels.to(device), task_ids.to(device)
        with _autocast(device):
            logits = forward(images, task_ids)  # (B, C_max)
        loss = F.cross_entropy(logits.float(), labels)
        value = loss.item()
        if not math.isfinite(value):  # stop before a non-finite update reaches the prompts or a report
            raise FloatingPointError(
                f"training loss is {value} at step {step} of the epoch (lr {sched.get_last_lr()[0]:.3g}): "
                f"the run diverged; lower the learning rate or set grad_clip"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(value)
    return sum(losses) / max(1, len(losses))


def checkpoint_state(model: PromptedCLIP, opt, sched, history: list[dict], cfg: TrainConfig) -> dict:
    """What a checkpoint holds: trainable tensors only (never the frozen backbone), optimizer, schedule."""
    return {
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": history,
        "train_config": asdict(cfg),
    }


CHECKPOINT_KEYS = ("trainable", "optimizer", "scheduler", "history", "train_config")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A `checkpoint_state` read from `path` with weights_only=True (no code runs); ValueError if it is not one."""
    state = load_tensor_file(path, "checkpoint", map_location)
    lacks = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if lacks:
        raise ValueError(f"checkpoint {path} is not an mmap-ray run checkpoint: it lacks {lacks}; delete it to "
                         f"start the run afresh, or point at the run folder that wrote it")
    return state


def restore_state(state: dict, model: PromptedCLIP, opt, sched) -> list[dict]:
    """Load a `checkpoint_state` into model, optimizer and schedule; returns the metrics history."""
    load_trainable(model, state["trainable"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"])


def epoch_seed(cfg: TrainConfig, epoch: int, rank: int = 0) -> int:
    """Seed of the global RNG (augmentations) for one epoch on one rank: a function of (seed, epoch, rank)."""
    return cfg.seed * 100_003 + epoch + 7_919 * rank


def train(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[dict]:
    """Train `model` on `tasks` in this process; returns one metrics dict per epoch (val accuracy every epoch).

    With `out_dir`, writes checkpoint.pt and metrics.jsonl after every epoch, atomically, and resumes from
    checkpoint.pt when `resume` is set. `stop_after_epoch` ends the call early (to test resuming).
    """
    device = next(model.parameters()).device
    out = Path(out_dir) if out_dir is not None else None
    params = trainable_parameters(model, cfg.full_finetune)
    sampler = MultiTaskBatchSampler([len(t.train) for t in tasks], cfg.batch_size, cfg.sampling, cfg.seed)
    loader = DataLoader(MultiTaskDataset([t.train for t in tasks]), batch_sampler=sampler, num_workers=cfg.num_workers)
    opt, sched = make_optimizer(params, cfg, cfg.epochs * len(sampler))
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    history: list[dict] = []
    if resume and ckpt_path is not None and ckpt_path.is_file():
        history = restore_state(load_checkpoint(ckpt_path, device), model, opt, sched)

    for epoch in range(len(history), cfg.epochs):
        torch.manual_seed(epoch_seed(cfg, epoch))
        sampler.set_epoch(epoch)
        model.train()
        loss = train_epoch(model, loader, opt, sched, params, cfg, device, f"epoch {epoch + 1}/{cfg.epochs}", progress)
        row = {"epoch": epoch + 1, "train_loss": loss, "lr": sched.get_last_lr()[0]}
        row.update({f"val/{k}": v for k, v in evaluate(model, tasks, "val", cfg.eval_batch_size).items()})
        history.append(row)
        if out is not None:
            save_run_files(out, checkpoint_state(model, opt, sched, history, cfg))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return history


def save_run_files(out: Path, state: dict) -> None:
    """checkpoint.pt and metrics.jsonl (the whole history, so a resumed run never duplicates a row)."""
    _atomic_write(out / "checkpoint.pt", lambda p: torch.save(state, p))
    _atomic_write(out / "metrics.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in state["history"])))


def load_trainable(model: PromptedCLIP, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into `model`; every saved name must exist with the same shape."""
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ValueError(f"checkpoint holds parameters the model does not have: {missing[:5]}")
    with torch.no_grad():
        for n, t in tensors.items():
            if params[n].shape != t.shape:
                raise ValueError(f"checkpoint parameter {n} has shape {tuple(t.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(t)
