"""Training-free proxies for task affinity: what a grouping method must beat before it can claim a finding.

Before saying that gradient or look-ahead affinity *found* a task structure, check whether something that
trains nothing finds it too (on the first toy benchmark, both of these did: issue 17). Each returns a
(T, T) affinity that `grouping.best_partition` turns into a partition, like the trained schemes:

- zeroshot: tasks whose zero-shot accuracy (the backbone with its plain class prompts, no MmAP) is
  close are alike: A[i, j] = -|acc_i - acc_j|, accuracy in [0, 1] on the training split.
- features: tasks whose images look alike to the frozen image tower are alike: A[i, j] is the cosine
  similarity of the tasks' mean L2-normalised image features on the training split.

Both read the training split only (never test), and `zero_shot_accuracy` also gives the backbone's
zero-shot accuracy that every study row records next to the trained accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from .data.base import TaskData
from .evaluation import accuracy, evaluate_counts
from .grouping import Partition
from .model import PromptedCLIP
from .prompts import MmAPConfig

PROXIES = ("zeroshot", "features")


def zero_shot_accuracy(
    backbone, tasks: Sequence[TaskData], split: str = "test", batch_size: int = 256
) -> dict[str, float]:
    """Zero-shot accuracy of each task on `split` and their mean, as fractions (`evaluation.accuracy`'s keys):
    the backbone with each task's plain class prompts and no MmAP (as `PromptedCLIP.zero_shot` builds it)."""
    classes = {t.name: t.class_names for t in tasks}
    model = PromptedCLIP(backbone, classes, MmAPConfig(layers=()), Partition.single(list(classes)))
    model.to(next(backbone.model.parameters()).device)
    return accuracy([t.name for t in tasks], evaluate_counts(model, tasks, split, batch_size))


@torch.no_grad()
def feature_centroids(backbone, tasks: Sequence[TaskData], split: str = "train", batch_size: int = 256) -> Tensor:
    """(T, E) each task's mean L2-normalised frozen image feature on `split`, L2-normalised."""
    model = backbone.model.eval()
    device = next(model.parameters()).device
    rows = []
    for task in tasks:
        total = None
        for images, _ in DataLoader(task.split(split), batch_size=batch_size):
            feats = F.normalize(model.encode_image(images.to(device)).float(), dim=-1).sum(0)  # (E,)
            total = feats if total is None else total + feats
        rows.append(total / len(task.split(split)))
    return F.normalize(torch.stack(rows), dim=-1).cpu()  # (T, E)


def proxy_affinity(method: str, backbone, tasks: Sequence[TaskData]) -> Tensor:
    """The (T, T) affinity of a training-free proxy (`PROXIES`), from the training split."""
    if method == "zeroshot":
        acc = zero_shot_accuracy(backbone, tasks, "train")
        a = torch.tensor([acc[t.name] for t in tasks])  # (T,)
        return -(a[:, None] - a[None, :]).abs()
    if method == "features":
        c = feature_centroids(backbone, tasks)  # (T, E)
        return c @ c.T
    raise ValueError(f"proxy method={method!r} is not valid; choose one of {PROXIES}")
