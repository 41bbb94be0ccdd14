"""Task affinity for grouping: how much training on one task helps another, measured on a shared MmAP.

`tag` is TAG (Fifty et al. 2021) as its paper and published code define it: one MmAP shared by all tasks
(one group, no task-specific prompts) is trained on all tasks jointly with the study's own schedule
(`TrainConfig`: epochs, batch size, optimizer, lr schedule, weight decay, clipping). Every `tag_every`-th
step (10, as TAG's code), before that step trains, each task i takes a look-ahead step on the shared
parameters alone: plain SGD with weight decay at the schedule's current learning rate, no optimizer state,
θ'_i = θ - lr (g_i + wd θ). The affinity onto task j is Z[i->j] = 1 - L_j(θ'_i) / L_j(θ) on the same batch,
averaged over every measurement of the run. `grouping.tag_partition` then scores a partition as TAG does.

`gradient` and `lookahead` are short *probes* (our own, not TAG): after `affinity_warmup_steps` steps of
joint training at a fixed `affinity_lr` (AdamW), the affinity is measured on every `affinity_every`-th of
the next `affinity_steps` steps and averaged:

- gradient probe: each task's gradient g_i on the shared prompt parameters; the affinity is cos(g_i, g_j).
- lookahead probe: Z[i->j] as above, but θ'_i is where the optimizer's own update (AdamW, with its
  moments and step count, which carry every task's history) would take the shared parameters given g_i.
  The update is taken and undone: weights and optimizer state are restored bit for bit.

Measuring never changes the training run it observes (tested). With `affinity_balance` (our addition; TAG
draws batches as training does) each task's images are drawn class-balanced in the probes: where tasks see
their classes at different rates, each task's gradient is otherwise dominated by its label prior.

`zeroshot` and `features` are training-free proxies (proxies.py), computed here so that every scheme
goes through one function.

Gradients are computed with `torch.autograd.grad` (no `.grad` is written by measuring). Under DDP, pass
`reduce` (e.g. an all-reduce mean): it is applied once per measured step to the stacked per-task gradients
and losses before any similarity is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import AffinityConfig  # noqa: F401  (the name callers know)
from .data.base import MultiTaskDataset, TaskData, class_balanced
from .data.sampler import MultiTaskBatchSampler
from .engine import TrainConfig, make_optimizer, train_step
from .grouping import AFFINITY_SCHEMES, Partition, choose_partition, fixed_partition
from .model import PromptedCLIP
from .prompts import MmAPConfig
from .proxies import PROXIES, proxy_affinity


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


def _lookahead(model: PromptedCLIP, batch, grads: Tensor, losses: Tensor, opt: torch.optim.Optimizer) -> Tensor:
    """Z (T, T) for one batch: Z[i, j] = 1 - L_j(θ'_i) / L_j(θ), θ'_i = the optimizer's step on g_i alone.

    Each step is taken for real on the live parameters and undone: their values and the optimizer's state
    are put back exactly (the step count and moments included)."""
    images, labels, task_ids = batch
    shared = list(shared_parameters(model).values())
    T = grads.shape[0]
    z = torch.zeros(T, T)
    values = [p.detach().clone() for p in shared]
    states = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for p in shared}
    saved_grads = [p.grad for p in shared]
    try:
        for i in range(T):
            offset = 0
            for p in shared:
                p.grad = grads[i, offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            opt.step()
            with torch.no_grad():
                z[i] = 1 - per_task_loss(model(images, task_ids), labels, task_ids, T).cpu() / losses.cpu()
            with torch.no_grad():
                for p, v in zip(shared, values):
                    p.copy_(v)
            for p in shared:
                opt.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in states[p].items()}
    finally:
        for p, g in zip(shared, saved_grads):
            p.grad = g
    return z


def _stream(tasks, cfg: AffinityConfig, stream: int, device: torch.device):
    """Endless multi-task batches, reshuffled every pass; `stream` separates warm-up from measuring."""
    train = [class_balanced(t.train) if cfg.affinity_balance else t.train for t in tasks]  # built once
    data = MultiTaskDataset(train)
    sampler = MultiTaskBatchSampler([len(d) for d in train], cfg.affinity_batch_size, seed=cfg.seed)
    epoch = 0
    while True:
        sampler.set_epoch(1000 * stream + epoch)
        for batch in DataLoader(data, batch_sampler=sampler):
            yield tuple(x.to(device) for x in batch)
        epoch += 1


def shared_model(backbone, tasks: Sequence[TaskData], mmap: MmAPConfig | None = None) -> PromptedCLIP:
    """One MmAP shared by all tasks: a single group and no task-specific prompts."""
    base = mmap or MmAPConfig()
    cfg = MmAPConfig(**{**base.__dict__, "task_prompts": False})
    names = [t.name for t in tasks]
    return PromptedCLIP(backbone, {t.name: t.class_names for t in tasks}, cfg, Partition.single(names))


def joint_optimizer(model: PromptedCLIP, cfg: AffinityConfig) -> torch.optim.Optimizer:
    """The affinity run's optimizer: AdamW at a constant `cfg.affinity_lr` on the shared prompts."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.affinity_lr)


def warm_up(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: AffinityConfig,
    opt: torch.optim.Optimizer | None = None,
    on_step: Callable[[], object] = lambda: None,
) -> torch.optim.Optimizer:
    """Train the shared MmAP on all tasks for `cfg.affinity_warmup_steps` steps through the training loop's
    step (`engine.train_step`), in full precision like the measuring phase; returns the optimizer.
    `on_step` is called after each step (a progress bar's update)."""
    device = next(model.parameters()).device
    opt = opt or joint_optimizer(model, cfg)
    model.train()
    for step, batch in zip(range(cfg.affinity_warmup_steps), _stream(tasks, cfg, 0, device)):
        train_step(model, batch, opt, step=step, where="of the affinity warm-up", precision="fp32")
        on_step()
    return opt


def measure_affinity(
    model: PromptedCLIP,
    tasks: Sequence[TaskData],
    cfg: AffinityConfig,
    opt: torch.optim.Optimizer | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    on_step: Callable[[], object] = lambda: None,
) -> Tensor:
    """Affinity matrix (T, T) over `cfg.affinity_steps` further joint training steps with `opt` (a fresh
    `joint_optimizer` if None), measured on every `cfg.affinity_every`-th step's batch before it trains;
    `on_step` is called after each step."""
    device = next(model.parameters()).device
    opt = opt or joint_optimizer(model, cfg)
    T = len(tasks)
    total = torch.zeros(T, T)
    model.train()
    for step, batch in zip(range(cfg.affinity_steps), _stream(tasks, cfg, 1, device)):
        if step % cfg.affinity_every == 0:
            grads, losses = task_gradients(model, batch, T, reduce)
            if cfg.method == "gradient":
                unit = F.normalize(grads, dim=1)
                total += (unit @ unit.T).cpu()
            else:
                total += _lookahead(model, batch, grads, losses, opt)
        where = "of the affinity measurement"
        train_step(model, batch, opt, step=cfg.affinity_warmup_steps + step, where=where, precision="fp32")
        on_step()
    return total / cfg.measured_steps


def tag_lookahead(model: PromptedCLIP, batch, num_tasks: int, lr: float, weight_decay: float = 0.0) -> Tensor:
    """TAG's Z (T, T) on one batch: Z[i, j] = 1 - L_j(θ - lr (g_i + wd θ)) / L_j(θ), g_i the gradient of task
    i's loss on the shared parameters θ. The shared parameters are put back exactly afterwards."""
    images, labels, task_ids = batch
    grads, losses = task_gradients(model, batch, num_tasks)  # (T, P), (T,)
    shared = list(shared_parameters(model).values())
    theta = torch.cat([p.detach().flatten() for p in shared])  # (P,)
    z = torch.zeros(num_tasks, num_tasks)
    with torch.no_grad():
        try:
            for i in range(num_tasks):
                _assign(shared, theta - lr * (grads[i] + weight_decay * theta))
                z[i] = 1 - per_task_loss(model(images, task_ids), labels, task_ids, num_tasks).cpu() / losses.cpu()
        finally:
            _assign(shared, theta)
    return z


def _assign(params: list[torch.nn.Parameter], flat: Tensor) -> None:
    """Copy a flat vector (P,) into `params`, in order."""
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def tag_affinity(
    model: PromptedCLIP, tasks: Sequence[TaskData], train: TrainConfig, every: int = 10, progress: bool = False
) -> tuple[Tensor, int]:
    """TAG: train `model` (one shared MmAP) on all tasks with `train`'s schedule, measuring `tag_lookahead`
    before every `every`-th step; returns the mean Z (T, T) and how many steps were measured. `progress`: a
    progress bar over the steps (on stderr)."""
    device = next(model.parameters()).device
    params = model.set_trainable(False)
    sampler = MultiTaskBatchSampler([len(t.train) for t in tasks], train.batch_size, train.sampling, train.seed)
    loader = DataLoader(MultiTaskDataset([t.train for t in tasks]), batch_sampler=sampler)
    steps = train.epochs * len(sampler)
    opt, sched = make_optimizer(params, train, steps)
    total, measured, step = torch.zeros(len(tasks), len(tasks)), 0, 0
    with tqdm(total=steps, desc=f"tag affinity (seed {train.seed})", disable=not progress, leave=False) as bar:
        for epoch in range(train.epochs):
            sampler.set_epoch(epoch)
            model.train()
            for batch in loader:
                batch = tuple(x.to(device) for x in batch)
                if step % every == 0:
                    total += tag_lookahead(model, batch, len(tasks), sched.get_last_lr()[0], train.weight_decay)
                    measured += 1
                where = "of TAG's joint training"
                train_step(
                    model, batch, opt, sched, grad_clip=train.grad_clip, step=step, where=where, precision="fp32"
                )
                step += 1
                bar.update()
    return total / max(measured, 1), measured


def task_affinity(
    backbone,
    tasks: Sequence[TaskData],
    cfg: AffinityConfig,
    mmap: MmAPConfig | None = None,
    progress: bool = False,
    train: TrainConfig | None = None,
) -> Tensor:
    """The (T, T) affinity of `cfg.method` on a fresh MmAP shared by all tasks (`mmap`'s design as one
    group, no task prompts): `tag` over a joint run with `train`'s schedule, the probes over their short
    run; a training-free proxy (`proxies.PROXIES`) from the frozen backbone. `progress`: a progress bar
    over the steps (on stderr)."""
    if cfg.method in PROXIES:
        return proxy_affinity(cfg.method, backbone, tasks)
    torch.manual_seed(cfg.seed)
    model = shared_model(backbone, tasks, mmap).to(next(backbone.model.parameters()).device)  # the backbone's device
    if cfg.method == "tag":
        return tag_affinity(model, tasks, replace(train or TrainConfig(), seed=cfg.seed), cfg.tag_every, progress)[0]
    total = cfg.affinity_warmup_steps + cfg.affinity_steps
    with tqdm(total=total, desc=f"{cfg.method} affinity (seed {cfg.seed})", disable=not progress, leave=False) as bar:
        opt = warm_up(model, tasks, cfg, on_step=bar.update)
        return measure_affinity(model, tasks, cfg, opt, on_step=bar.update)


def plan_partition(
    scheme: str,
    backbone,
    tasks: Sequence[TaskData],
    cfg: AffinityConfig,
    mmap: MmAPConfig,
    train: TrainConfig,
    k: int | None = None,
    progress: bool = False,
) -> tuple[Partition, Tensor | None]:
    """The partition `scheme` chooses for `tasks` (seeded by `cfg.seed`), and the affinity matrix it chose
    from (None for a fixed scheme): the one decision `mmap-ray group` and a study's planning share.

    Affinity is measured on one MmAP of the run's own design (`mmap`, as one group without task prompts);
    `tag` trains it with the run's own schedule (`train`), the probes with their short run (`cfg`)."""
    names = [t.name for t in tasks]
    if scheme not in AFFINITY_SCHEMES:
        return fixed_partition(scheme, names, k, cfg.seed), None
    cfg = replace(cfg, method=scheme)
    affinity = task_affinity(backbone, tasks, cfg, mmap, progress=progress, train=train)
    return choose_partition(scheme, affinity, names, k), affinity
