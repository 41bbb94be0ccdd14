"""Measurement pieces for `studies/benchmark.py`: what an MmAP step costs, and checks that variants agree.

Why: DESIGN.md §3 claims an MmAP step costs about forward + input-gradient backward (~2x a frozen
forward, against ~3x for full fine-tuning), that truncating the text context is exact and cheap, that a
fused multi-task forward beats a loop over tasks, and that DDP all-reduces only the prompts. This module
holds the pure-PyTorch pieces that measure those claims (timers, step functions, FLOP counts, peak memory
in a fresh process, DDP bucket bytes over gloo) and the correctness checks the comparisons rest on (same
logits, same prompt gradients). No Ray here: the Ray overhead figure lives in the study script.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmap_ray.backbone import TINY_MODEL, Backbone, BackboneConfig, load_backbone
from mmap_ray.data.toy import CLASSES, DOMAINS, PAIRS
from mmap_ray.model import PromptedCLIP
from mmap_ray.prompts import MmAPConfig

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity); first matching substring wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


@dataclass(frozen=True)
class Setup:
    """One benchmarked configuration: backbone, batch, alignment layers, device."""

    model: str = TINY_MODEL
    batch_size: int = 16
    layers: str | None = None  # alignment layers ("6-10"); None: the default (every block but the last)
    truncate_context: bool = True
    device: str = "cpu"
    seed: int = 0


class Batch(NamedTuple):
    images: Tensor  # (B, 3, H, W)
    task_ids: Tensor  # (B,)
    labels: Tensor  # (B,)


def tasks() -> dict[str, list[str]]:
    """The toy benchmark's tasks: 4 domains x 12 shared classes (48 class prompts per step)."""
    return {d: list(CLASSES) for d in DOMAINS}


def load(setup: Setup) -> Backbone:
    """The setup's backbone with random weights (speed does not depend on the weights)."""
    torch.manual_seed(setup.seed)
    return load_backbone(BackboneConfig(setup.model))


def prompted(backbone: Backbone, setup: Setup) -> PromptedCLIP:
    """A PromptedCLIP on `backbone`; the prompt init depends only on (seed, layers), never on call order."""
    torch.manual_seed(setup.seed)
    cfg = MmAPConfig(layers=setup.layers)
    model = PromptedCLIP(backbone, tasks(), cfg, partition=PAIRS, truncate_context=setup.truncate_context)
    return model.to(setup.device)


def make_batch(model: PromptedCLIP, batch_size: int, seed: int = 0, rank: int = 0) -> Batch:
    """Random images with every task present (task of sample i is i mod T) and random labels."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    size = model.clip.visual.image_size
    n_tasks = len(model.task_names)
    images = torch.randn(batch_size, 3, *size, generator=g)
    task_ids = torch.arange(batch_size) % n_tasks
    labels = torch.randint(int(model.class_valid.sum(1).min()), (batch_size,), generator=g)
    device = model.text_tokens.device
    return Batch(images.to(device), task_ids.to(device), labels.to(device))


def first_half_layers(info_depth: int) -> str:
    """Alignment layers from half depth to the last-but-one block, so half the blocks sit below the first."""
    lo, hi = info_depth // 2, max(info_depth // 2, info_depth - 2)
    return f"{lo}-{hi}"


# ---- steps ----------------------------------------------------------------------------------------


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)


def loss_of(model: PromptedCLIP, batch: Batch, forward: Callable | None = None) -> Tensor:
    with autocast(batch.images.device.type):
        logits = (forward or model)(batch.images, batch.task_ids)  # (B, C_max)
    return F.cross_entropy(logits.float(), batch.labels)


def frozen_forward(model: PromptedCLIP, batch: Batch) -> Tensor:
    """Inference: the same logits, no autograd at all."""
    with torch.no_grad(), autocast(batch.images.device.type):
        return model(batch.images, batch.task_ids)


def train_step(model: PromptedCLIP, opt: torch.optim.Optimizer, batch: Batch, forward: Callable | None = None) -> None:
    """Forward, loss, backward, optimizer step: what one training step costs."""
    loss = loss_of(model, batch, forward)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def optimizer(params: list[Tensor]) -> torch.optim.Optimizer:
    """AdamW with lr 0: the full cost of an update that leaves the weights unchanged across repeats."""
    return torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)


@contextmanager
def backbone_trainable(model: PromptedCLIP, trainable: bool = True) -> Iterator[None]:
    """Full fine-tuning inside the block (every backbone weight gets a gradient); frozen again after it.

    The backbone stays in eval mode (no dropout in these models), so both variants compute the same forward.
    """
    model.clip.requires_grad_(trainable)
    try:
        yield
    finally:
        model.clip.requires_grad_(False)
        for p in model.clip.parameters():
            p.grad = None


@contextmanager
def grad_below_first_layer(model: PromptedCLIP, enabled: bool = True) -> Iterator[None]:
    """Run the blocks below the first alignment layer with autograd on (the no-grad default off)."""
    model.grad_below_first_layer = enabled
    try:
        yield
    finally:
        model.grad_below_first_layer = False


def text_tower_step(model: PromptedCLIP) -> Tensor:
    """The text tower's share of a step: every task's class prompts forward, then backward to the prompts."""
    feats, _ = model.text_features(torch.arange(len(model.task_names), device=model.text_tokens.device))  # (R, E)
    feats.float().sum().backward()
    model.bank.zero_grad(set_to_none=True)
    return feats.detach()


def loop_forward(model: PromptedCLIP, images: Tensor, task_ids: Tensor) -> Tensor:
    """The baseline fused batching replaces: one model call per task present, logits put back in order."""
    order = torch.argsort(task_ids, stable=True)  # (B,)
    parts = [
        model(images[idx], task_ids[idx]) for idx in torch.split(order, torch.bincount(task_ids).tolist()) if len(idx)
    ]
    return torch.cat(parts)[torch.argsort(order)]  # (B, C_max)


# ---- correctness checks ----------------------------------------------------------------------------


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """Largest |a - b| over finite entries; positions that are -inf in both count as equal."""
    both_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    d = torch.where(both_inf, torch.zeros_like(a), (a.float() - b.float()).abs())
    return float(d.max())


def prompt_grads(model: PromptedCLIP, batch: Batch, forward: Callable | None = None) -> list[Tensor]:
    """Gradients of the loss with respect to every prompt parameter, in parameter order."""
    model.bank.zero_grad(set_to_none=True)
    loss_of(model, batch, forward).backward()
    grads = [p.grad.detach().clone() for p in model.bank.parameters()]
    model.bank.zero_grad(set_to_none=True)
    return grads


def grads_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def check_no_grad_below(model: PromptedCLIP, batch: Batch) -> float:
    """Max prompt-gradient difference between the no-grad default and running every block with grad."""
    default = prompt_grads(model, batch)
    with grad_below_first_layer(model):
        every = prompt_grads(model, batch)
    return grads_diff(default, every)


def check_truncation(truncated: PromptedCLIP, full: PromptedCLIP, batch: Batch) -> float:
    """Max logit difference between a truncated and a full 77-token text context (same prompts)."""
    return max_abs_diff(frozen_forward(truncated, batch), frozen_forward(full, batch))


def check_fused(model: PromptedCLIP, batch: Batch) -> float:
    """Max logit difference between the fused multi-task forward and a loop over tasks."""
    with torch.no_grad():
        return max_abs_diff(model(batch.images, batch.task_ids), loop_forward(model, batch.images, batch.task_ids))


# ---- timing and FLOPs ------------------------------------------------------------------------------


def synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each variant; variants interleave within every repeat so load drift hits all alike."""
    sync = synchronizer(device)
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    """min / median / max of the per-repeat ratios num[i] / den[i], and both medians in seconds."""
    ratios = [n / d for n, d in zip(num, den, strict=True)]
    return {
        "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "numerator_s": statistics.median(num),
        "denominator_s": statistics.median(den),
        "repeats": len(ratios),
    }


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions `fn` runs, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from BF16_PEAK_TFLOPS, or None if it is not in the table."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# ---- memory ----------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; falls back to the peak from getrusage)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def peak_rss(interval_s: float = 0.001) -> Iterator[dict]:
    """Samples RSS every `interval_s` on a thread (torch releases the GIL in its kernels); out["peak"]."""
    out = {"peak": rss_bytes()}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], rss_bytes())
            stop.wait(interval_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], rss_bytes())


def step_memory(setup_dict: dict, full_finetune: bool, steps: int = 2) -> dict[str, int]:
    """Peak memory of training steps, counted from before the model was built (weights included).

    CPU: run it in a fresh process (`memory_in_subprocess`): peak RSS minus the RSS after imports.
    CUDA: `max_memory_allocated` over the steps, with the weights already on the device.
    """
    setup = Setup(**setup_dict)
    cuda = setup.device == "cuda"
    base = torch.cuda.memory_allocated() if cuda else rss_bytes()
    model = prompted(load(setup), setup)
    batch = make_batch(model, setup.batch_size, setup.seed)
    with backbone_trainable(model, full_finetune):
        opt = optimizer([p for p in model.parameters() if p.requires_grad])
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            built = torch.cuda.memory_allocated()
            for _ in range(steps):
                train_step(model, opt, batch)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            built = rss_bytes()
            with peak_rss() as rss:
                for _ in range(steps):
                    train_step(model, opt, batch)
            peak = rss["peak"]
    return {"peak_bytes": peak - base, "model_bytes": built - base}


def memory_in_subprocess(setup: Setup, full_finetune: bool) -> dict[str, int]:
    """`step_memory` in a fresh spawned process, so no earlier allocation or allocator cache blurs the peak."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(step_memory, asdict(setup), full_finetune).result()


# ---- communication ---------------------------------------------------------------------------------


def trainable_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients DDP all-reduces each step: every parameter that requires a gradient."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _ddp_worker(rank: int, world: int, init_file: str, setup_dict: dict, full_finetune: bool, out_dir: str) -> None:
    """One gloo DDP rank: one training step with a comm hook that counts the bytes of every bucket."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        setup = Setup(**setup_dict)
        model = prompted(load(setup), setup)
        model.clip.requires_grad_(full_finetune)
        ddp = DDP(model, broadcast_buffers=False, find_unused_parameters=False)
        counted = {"bytes": 0, "buckets": 0}

        def counting_hook(state, bucket):  # no annotations: DDP rejects the string ones of postponed evaluation
            buf = bucket.buffer()  # the flattened gradients of this bucket
            state["bytes"] += buf.numel() * buf.element_size()
            state["buckets"] += 1
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(counted, counting_hook)
        batch = make_batch(model, len(model.task_names), setup.seed, rank)  # every task on every rank
        loss_of(model, batch, ddp).backward()
        result = {**counted, "trainable_bytes": trainable_bytes(model), "rank": rank}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def ddp_bucket_bytes(setup: Setup, full_finetune: bool, out_dir: str | Path, world: int = 2) -> list[dict]:
    """Run one DDP step on `world` gloo processes; per rank: bytes and buckets all-reduced, trainable bytes."""
    import tempfile

    import torch.multiprocessing as mp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    with tempfile.TemporaryDirectory() as d:
        init_file = str(Path(d) / "store")
        mp.start_processes(
            _ddp_worker,
            args=(world, init_file, asdict(setup), full_finetune, str(out)),
            nprocs=world,
            start_method="spawn",
        )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
