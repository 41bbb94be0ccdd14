"""Multi-task batches: every task in every batch, so no task's prompt ever goes without a gradient.

Each batch holds a fixed quota of samples from every task: an equal share by default, or a share
proportional to the task's size (at least one each). An epoch lasts until the task that needs the most
batches has been seen once; smaller tasks cycle through fresh reshuffles. Order depends only on
(seed, epoch), so a resumed run sees the same batches as an uninterrupted one.

Under DDP every rank builds the same global batch and keeps every `world_size`-th sample of each task's
quota, so the union of the ranks' batches is exactly the single-process batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..config import SAMPLING_MODES as MODES


def task_quotas(sizes: Sequence[int], batch_size: int, mode: str = "equal") -> list[int]:
    """Samples per task in one global batch of `batch_size`."""
    T = len(sizes)
    if mode not in MODES:
        raise ValueError(f"sampling={mode!r} is not valid; choose one of {MODES}")
    if batch_size < T:
        raise ValueError(f"batch_size={batch_size} must be >= the number of tasks ({T}): every task in every batch")
    if any(s == 0 for s in sizes):
        raise ValueError(f"task sizes {list(sizes)} include an empty task; every task needs samples")
    if batch_size > sum(sizes):  # refused before a batch of repeated images is ever allocated
        raise ValueError(
            f"batch_size={batch_size} exceeds the {sum(sizes)} training images of the {T} tasks "
            f"({', '.join(map(str, sizes))}): one batch would repeat every image; use batch_size <= {sum(sizes)}"
        )
    if mode == "equal":
        return [batch_size // T + (1 if t < batch_size % T else 0) for t in range(T)]
    total = sum(sizes)
    exact = [batch_size * s / total for s in sizes]
    quotas = [math.floor(e) for e in exact]
    for t in sorted(range(T), key=lambda t: quotas[t] - exact[t])[: batch_size - sum(quotas)]:
        quotas[t] += 1  # largest remainders first
    for t in range(T):  # at least one sample of every task, taken from the largest quota
        if quotas[t] == 0:
            quotas[t] = 1
            quotas[max(range(T), key=quotas.__getitem__)] -= 1
    return quotas


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of indices into a `MultiTaskDataset` whose tasks have sizes `sizes`."""

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        mode: str = "equal",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.sizes = list(sizes)
        self.quotas = task_quotas(self.sizes, batch_size, mode)
        if min(self.quotas) < world_size:
            raise ValueError(
                f"batch_size={batch_size} gives a task only {min(self.quotas)} samples per batch, fewer than the "
                f"{world_size} workers; use batch_size >= {world_size * len(self.sizes)} so every worker sees every "
                "task"
            )
        self.offsets = [sum(self.sizes[:t]) for t in range(len(self.sizes))]
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(math.ceil(s / q) for s, q in zip(self.sizes, self.quotas))

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self)
        streams = []
        for size, quota, offset in zip(self.sizes, self.quotas, self.offsets):
            reps = math.ceil(n * quota / size)
            order = torch.cat([torch.randperm(size, generator=g) for _ in range(reps)])[: n * quota]
            streams.append((order + offset).view(n, quota))  # (batches, quota)
        for b in range(n):
            yield [i for s in streams for i in s[b, self.rank :: self.world_size].tolist()]
