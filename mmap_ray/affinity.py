"""Task affinity for grouping: how much training on one task helps another, measured on a shared MmAP.

Both schemes start the same way: one MmAP shared by all tasks (one group, no task-specific prompts) is
warmed up on all tasks for `warmup_steps` (AdamW, with the training loop's step). Then, over `steps`
multi-task batches at *fixed* weights:

- gradient (our reading of the paper): each task's gradient g_t on the shared prompt parameters; the
  affinity is the pairwise cosine similarity cos(g_i, g_j), averaged over the batches.
- lookahead (TAG, Fifty et al. 2021): Z[i→j] = 1 - L_j(θ - lr·g_i) / L_j(θ): the relative drop of task
  j's loss after a plain gradient step on task i alone, averaged over the batches. The step is taken on
  copies through `torch.func.functional_call`; the live weights are never touched.

`zeroshot` and `features` are training-free proxies (proxies.py), computed here so that every scheme
goes through one function.

The measuring phase computes gradients with `torch.autograd.grad`, so it leaves every weight, `.grad`
and optimizer state bit-identical. Under DDP, pass `reduce` (e.g. an all-reduce mean): it is applied once
per batch to the stacked per-task gradients and losses before any similarity is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.utils.data import DataLoader

from .data.base import MultiTaskDataset, TaskData
from .data.sampler import MultiTaskBatchSampler
from .engine import train_step
from .fields import check_types, option
from .grouping import AFFINITY_SCHEMES, Partition
from .model import PromptedCLIP
from .prompts import MmAPConfig
from .proxies import PROXIES, proxy_affinity

METHODS = AFFINITY_SCHEMES  # gradient, lookahead, and the training-free proxies (proxies.py)


@dataclass(frozen=True)
class AffinityConfig:
    """How task affinity is measured."""

    method: str = "gradient"  # set by the grouping scheme (gradient or lookahead)
    affinity_warmup_steps: int = option(40, "steps of training one shared MmAP before affinity is measured")
    affinity_steps: int = option(20, "batches the affinity is averaged over")
    affinity_batch_size: int = option(64, "batch size of the affinity warm-up and measurement")
    affinity_lr: float = option(2e-3, "learning rate of the affinity warm-up")
    # The plain gradient step of the look-ahead. Too large and every step raises every loss (on the toy
    # benchmark Z < 0 everywhere at 1.0 and 0.05); 0.005 keeps the self-step a descent step there.
    lookahead_lr: float = option(0.005, "the look-ahead's plain gradient step (TAG)")
    seed: int = 0  # set per grouping seed

    def __post_init__(self) -> None:
        check_types(self)
        if self.method not in METHODS:
            raise ValueError(f"AffinityConfig.method={self.method!r} is not valid; choose one of {METHODS}")
        for name in ("affinity_steps", "affinity_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"AffinityConfig.{name}={getattr(self, name)} must be >= 1")
        if self.affinity_warmup_steps < 0:
            raise ValueError(f"AffinityConfig.affinity_warmup_steps={self.affinity_warmup_steps} must be >= 0")
        for name in ("affinity_lr", "lookahead_lr"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"AffinityConfig.{name}={getattr(self, name)} must be > 0 and finite")


def per_task_loss(logits: Tensor, labels: Tensor, task_ids: Tensor, num_tasks: int) -> Tensor:
    """Mean cross-entropy of each task's samples: logits (B, C), labels (B,), task_ids (B,) -> (T,)."""
    losses = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    total = torch.zeros(num_tasks, device=losses.device).index_add(0, task_ids, losses)
    count = torch.zeros(num_tasks, device=losses.device).index_add(0, task_ids, torch.ones_like(losses))
    return total / count.clamp(min=1)


def shared_parameters(model: PromptedCLIP) -> dict[str, torch.nn.Parameter]:
    """The group-shared prompt parameters (what every task's gradient is measured on)."""
    return {f"bank.groups.{n}": p for n, p in model.bank.groups.named_parameters() if p.requires_grad and p.numel()}


def task_gradients(
    model: PromptedCLIP,
    batch: tuple[Tensor, Tensor, Tensor],
    num_tasks: int,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-task gradients (T, P) on the shared parameters, flattened, and per-task losses (T,).

    One forward pass; one `autograd.grad` per task (no `.grad` is written). `reduce`, if given, is called
    once on the (T, P + 1) stack of gradients and losses (the DDP all-reduce point).
    """
    images, labels, task_ids = batch
    params = list(shared_parameters(model).values())
    losses = per_task_loss(model(images, task_ids), labels, task_ids, num_tasks)  # (T,)
    grads = []
    for t in range(num_tasks):
        g = torch.autograd.grad(losses[t], params, retain_graph=t < num_tasks - 1)
        grads.append(torch.cat([x.flatten() for x in g]))
    stacked = torch.cat([torch.stack(grads), losses.detach()[:, None]], dim=1)  # (T, P + 1)
    if reduce is not None:
        stacked = reduce(stacked)
    return stacked[:, :-1], stacked[:, -1]


def _lookahead(model: PromptedCLIP, batch, grads: Tensor, losses: Tensor, lr: float) -> Tensor:
    """Z (T, T) for one batch: Z[i, j] = 1 - L_j(θ - lr·g_i) / L_j(θ), on copies of the weights."""
    images, labels, task_ids = batch
    shared = shared_parameters(model)
    T = grads.shape[0]
    z = torch.zeros(T, T)
    with torch.no_grad():
        for i in range(T):
            stepped, offset = {}, 0
            for name, p in shared.items():
                stepped[name] = p - lr * grads[i, offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            logits = functional_call(model, stepped, (images, task_ids))
            z[i] = 1 - per_task_loss(logits, labels, task_ids, T).cpu() / losses.cpu()
    return z


def _batches(tasks: Sequence[TaskData], batch_size: int, seed: int, epoch: int):
    sampler = MultiTaskBatchSampler([len(t.train) for t in tasks], batch_size, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(MultiTaskDataset([t.train for t in tasks]), batch_sampler=sampler)


def _stream(tasks, cfg: AffinityConfig, stream: int, device: torch.device):
    """Endless multi-task batches, reshuffled every pass; `stream` separates warm-up from measuring."""
    epoch = 0
    while True:
        for batch in _batches(tasks, cfg.affinity_batch_size, cfg.seed, 1000 * stream + epoch):
            yield tuple(x.to(device) for x in batch)
        epoch += 1


def shared_model(backbone, tasks: Sequence[TaskData], mmap: MmAPConfig | None = None) -> PromptedCLIP:
    """One MmAP shared by all tasks: a single group and no task-specific prompts."""
    base = mmap or MmAPConfig()
    cfg = MmAPConfig(**{**base.__dict__, "task_prompts": False})
    names = [t.name for t in tasks]
    return PromptedCLIP(backbone, {t.name: t.class_names for t in tasks}, cfg, Partition.single(names))


def warm_up(model: PromptedCLIP, tasks: Sequence[TaskData], cfg: AffinityConfig) -> None:
    """Train the shared MmAP on all tasks for `cfg.affinity_warmup_steps` steps: AdamW at a constant `cfg.affinity_lr`,
    through the training loop's step (`engine.train_step`), in full precision like the measuring phase."""
    if cfg.affinity_warmup_steps == 0:
        return
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.affinity_lr)
    for step, batch in zip(range(cfg.affinity_warmup_steps), _stream(tasks, cfg, 0, device)):
        train_step(model, batch, opt, step=step, where="of the affinity warm-up", autocast=False)


def measure_affinity(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: AffinityConfig,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Affinity matrix (T, T) at the model's current weights, averaged over `cfg.affinity_steps` batches."""
    device = next(model.parameters()).device
    T = len(tasks)
    total = torch.zeros(T, T)
    for _, batch in zip(range(cfg.affinity_steps), _stream(tasks, cfg, 1, device)):
        grads, losses = task_gradients(model, batch, T, reduce)
        if cfg.method == "gradient":
            unit = F.normalize(grads, dim=1)
            total += (unit @ unit.T).cpu()
        else:
            total += _lookahead(model, batch, grads, losses, cfg.lookahead_lr)
    return total / cfg.affinity_steps


def task_affinity(backbone, tasks: Sequence[TaskData], cfg: AffinityConfig, mmap: MmAPConfig | None = None) -> Tensor:
    """Warm up a fresh shared MmAP on `tasks`, then measure the (T, T) affinity with `cfg.method`; a
    training-free proxy (`proxies.PROXIES`) is computed from the frozen backbone instead."""
    if cfg.method in PROXIES:
        return proxy_affinity(cfg.method, backbone, tasks)
    torch.manual_seed(cfg.seed)
    model = shared_model(backbone, tasks, mmap)
    warm_up(model, tasks, cfg)
    model.eval()
    return measure_affinity(model, tasks, cfg)
