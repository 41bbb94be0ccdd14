"""Evaluation of a PromptedCLIP: predictions, per-task accuracy and their unweighted mean, on one rank's
shard of a split or the whole of it, at a chosen precision. Class-prompt features are encoded once per pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .config import PRECISIONS
from .data.base import TaskData
from .model import PromptedCLIP


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The autocast region of a forward pass on `device` at `precision` (one of PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; choose one of {PRECISIONS}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def predict(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    split: str,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    precision: str = "auto",
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(task index, image indices in the split, labels, predicted classes) per batch of this rank's
    shard (every `world_size`-th image) of `split`, at `precision`. Class-prompt features are encoded once."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    text_feats, where = model.text_features(torch.arange(len(tasks), device=device))  # (R, E), (T, C_max)
    try:
        for t, task in enumerate(tasks):
            data = task.split(split)
            index = torch.arange(rank, len(data), world_size)  # (N_shard,)
            for start, (images, labels) in zip(
                range(0, len(index), batch_size), DataLoader(Subset(data, index.tolist()), batch_size=batch_size)
            ):
                images, labels = images.to(device), labels.to(device)
                task_ids = torch.full_like(labels, t)
                with autocast(device, precision):
                    img = model.image_embedding(images, task_ids, model.bank(task_ids).vision)
                    img = F.normalize(img.float(), dim=-1)  # (B, E)
                logits = model.logits(img, task_ids, text_feats.float(), where)  # (B, C_max)
                yield t, index[start : start + len(labels)], labels.cpu(), logits.argmax(1).cpu()
    finally:
        model.train(was_training)


def evaluate_counts(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    split: str,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    precision: str = "auto",
) -> torch.Tensor:
    """(T, 2) [correct, total] per task on this rank's shard of `split`; sum over ranks for the whole split."""
    counts = torch.zeros(len(tasks), 2, dtype=torch.float64)
    for t, _, labels, pred in predict(model, tasks, split, batch_size, rank, world_size, precision):
        counts[t, 0] += int((pred == labels).sum())
        counts[t, 1] += len(labels)
    return counts


def predictions(
    model: PromptedCLIP, tasks: Sequence[TaskData], split: str = "test", batch_size: int = 256
) -> dict[str, list]:
    """Every image's outcome on `split`, as columns: task, image (its index in the task's split), label,
    prediction, correct. What paired comparisons (`stats`) need: two runs, the same images."""
    cols: dict[str, list] = {"task": [], "image": [], "label": [], "prediction": [], "correct": []}
    for t, index, labels, pred in predict(model, tasks, split, batch_size):
        cols["task"] += [tasks[t].name] * len(labels)
        cols["image"] += index.tolist()
        cols["label"] += labels.tolist()
        cols["prediction"] += pred.tolist()
        cols["correct"] += (pred == labels).tolist()
    return cols


def accuracy(names: Sequence[str], counts: torch.Tensor) -> dict[str, float]:
    """Per-task accuracy and the unweighted mean over tasks, from (T, 2) [correct, total] counts."""
    acc = {n: float(c / t) for n, (c, t) in zip(names, counts.tolist())}
    acc["mean"] = sum(acc.values()) / len(names)
    return acc


ACCURACY_KEYS = ("val/", "test/", "zeroshot/")  # a history row's accuracies start so (fractions)


def in_percent(row: dict) -> dict:
    """A history row with its accuracies in percent, the unit of every file and table a user reads
    (training computes fractions); its other keys (loss, lr, epoch) as they are."""
    return {k: 100 * v if k.startswith(ACCURACY_KEYS) and v is not None else v for k, v in row.items()}


def evaluate(
    model: PromptedCLIP, tasks: Sequence[TaskData], split: str = "test", batch_size: int = 256
) -> dict[str, float]:
    """Accuracy per task and their mean on `split`."""
    return accuracy([t.name for t in tasks], evaluate_counts(model, tasks, split, batch_size))
