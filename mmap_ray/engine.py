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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.base import MultiTaskDataset, TaskData
from .data.sampler import MODES, MultiTaskBatchSampler
from .model import PromptedCLIP

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
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
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
def evaluate(
    model: PromptedCLIP, tasks: Sequence[TaskData], split: str = "test", batch_size: int = 256
) -> dict[str, float]:
    """Accuracy per task and their mean on `split`; class-prompt features are encoded once."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    text_feats, where = model.text_features(torch.arange(len(tasks), device=device))  # (R, E), (T, C_max)
    acc = {}
    for t, task in enumerate(tasks):
        correct = total = 0
        for images, labels in DataLoader(task.split(split), batch_size=batch_size):
            images, labels = images.to(device), labels.to(device)
            task_ids = torch.full_like(labels, t)
            with _autocast(device):
                img = F.normalize(model.encode_image(images, model.bank(task_ids).vision).float(), dim=-1)
            logits = model.logits(img, task_ids, text_feats.float(), where)  # (B, C_max)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        acc[task.name] = correct / total
    acc["mean"] = sum(acc.values()) / len(tasks)
    model.train(was_training)
    return acc


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


def train(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[dict]:
    """Train `model` on `tasks`; returns one metrics dict per epoch (val accuracy every epoch).

    With `out_dir`, writes checkpoint.pt (trainable tensors, optimizer, schedule, history) and
    metrics.jsonl after every epoch, atomically, and resumes from checkpoint.pt when `resume` is set.
    `stop_after_epoch` ends the call early (to test and demonstrate resuming).
    """
    device = next(model.parameters()).device
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    params = trainable_parameters(model, cfg.full_finetune)
    dataset = MultiTaskDataset([t.train for t in tasks])
    sampler = MultiTaskBatchSampler([len(t.train) for t in tasks], cfg.batch_size, cfg.sampling, cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers)
    total_steps = cfg.epochs * len(sampler)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    history: list[dict] = []
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        load_trainable(model, ckpt["trainable"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history = ckpt["history"]

    for epoch in range(len(history), cfg.epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # augmentation RNG: a function of (seed, epoch)
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for images, labels, task_ids in tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        ):
            images, labels, task_ids = images.to(device), labels.to(device), task_ids.to(device)
            with _autocast(device):
                logits = model(images, task_ids)  # (B, C_max)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = evaluate(model, tasks, "val", cfg.eval_batch_size)
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "lr": sched.get_last_lr()[0]}
        row.update({f"val/{k}": v for k, v in val.items()})
        history.append(row)
        if out is not None:
            state = {
                "trainable": {n: p.detach().cpu() for n, p in zip(names, params)},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
                "train_config": asdict(cfg),
            }
            _atomic_write(ckpt_path, lambda p: torch.save(state, p))
            _atomic_write(out / "metrics.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in history)))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return history


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
