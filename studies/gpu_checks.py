"""The checks of `studies/gpu_check.py`, each a function of the device it checks, returning a `Verdict`.

Why a file of its own: the script must refuse a machine without CUDA in one line, before open_clip and Ray
are imported (about 5 s); these checks import both. On a CPU they run too (tests/test_gpu_check.py): the
CPU is then its own reference, which exercises every step but the GPU kernels.

1. `logits_agree`: ViT-B-16 (random weights) with MmAP prompts gives the same fp32 logits on the device as
   on the CPU, TF32 off: max |difference| <= LOGIT_ATOL.
2. `bf16_matches_fp32`: the toy run (tiny CLIP pretrained on the toy benchmark) trained 50 steps with bf16
   autocast and in fp32, same seed: test accuracy within ACCURACY_POINTS.
3. `step_throughput`: the benchmark's step cost (`benchmark.step_cost`): achieved FLOP/s of an MmAP step
   and of a full fine-tuning step, and their ratio; passes when it runs and the ratio is a number.
4. `ddp_matches_double_batch`: 2 Ray Train workers with half a GPU and batch b each end with the prompts
   of one process with batch 2b: max |difference| <= DDP_ATOL.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py and benchmark.py live next to this file
import bench  # noqa: E402
import benchmark  # noqa: E402

from mmap_ray.build import build_run  # noqa: E402
from mmap_ray.config import DataConfig, ModelConfig, RunConfig  # noqa: E402
from mmap_ray.distributed import WorkerSpec, ddp_backend, fit_distributed  # noqa: E402
from mmap_ray.engine import TrainConfig, train  # noqa: E402
from mmap_ray.evaluation import autocast  # noqa: E402
from mmap_ray.fields import replace  # noqa: E402
from mmap_ray.prompts import MmAPConfig  # noqa: E402

# fp32 logits of ViT-B-16 (logit scale 14.3 at random init) differ from fp64 by 1.6e-6 on a CPU: 1e-4 leaves
# room for another summation order, while TF32 (10 mantissa bits) or bf16 miss it by orders of magnitude.
LOGIT_ATOL = 1e-4
ACCURACY_POINTS = 1.0  # |bf16 - fp32| toy test accuracy, in points
# A DDP fault (gradients summed, not averaged; a rank on the wrong share) moves prompts by ~lr (5e-3) per
# step; 1e-4 leaves room for kernels that sum in another order at batch 8 than at 16.
DDP_ATOL = 1e-4
STEPS = 50
# `mmap-ray train`'s default run cut to STEPS steps: 50 images per class, 12 per task in a batch of 48.
TOY_RUN = RunConfig(data=DataConfig(shots=STEPS), train=TrainConfig(epochs=1, batch_size=48))
# Two toy tasks on random weights, 2 epochs of global batch 16, in fp32 (bf16 rounds batch 8 and 16 apart)
DDP_RUN = RunConfig(
    data=DataConfig(domains=("Art", "Product"), shots=4),
    backbone=ModelConfig(pretrained=None),
    prompts=MmAPConfig(n_tokens=2),
    partition=(("Art",), ("Product",)),
    train=TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_steps=2, precision="fp32"),
)


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: passed or not, the figures behind it in words, and by name (for tests)."""

    passed: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


@contextmanager
def tf32_off() -> Iterator[None]:
    """Full fp32 CUDA matmuls and convolutions inside the block (TF32 keeps 10 mantissa bits of each input)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- 1. CPU vs device logits ---------------------------------------------------------------------------


def logits_agree(
    device: str, model: str = "ViT-B-16", batch_size: int = 4, precision: str = "fp32", atol: float = LOGIT_ATOL
) -> Verdict:
    """The prompted model's logits on `device` at `precision` against fp32 on the CPU: same weights, prompts
    and images; TF32 off."""
    setup = bench.Setup(model=model, batch_size=batch_size)
    prompted = bench.prompted(bench.load(setup), setup).eval()
    batch = bench.make_batch(prompted, batch_size)  # on the CPU
    with torch.no_grad():
        reference = prompted(batch.images, batch.task_ids)  # (B, C_max), fp32
        prompted.to(device)
        with tf32_off(), autocast(torch.device(device), precision):
            logits = prompted(batch.images.to(device), batch.task_ids.to(device))  # (B, C_max)
    diff = bench.max_abs_diff(reference, logits.cpu())
    scale = float(prompted.clip.logit_scale.exp())
    detail = (
        f"{model}, {batch_size} images x {reference.shape[1]} classes, {precision} on {device}, TF32 off: "
        f"max |logit difference| from fp32 on the CPU {diff:.2g} (limit {atol:g}; logit scale {scale:.3g})"
    )
    return Verdict(diff <= atol, detail, {"max_abs_diff": diff, "logit_scale": scale})


# ---- 2. bf16 vs fp32 training --------------------------------------------------------------------------


def train_here(run: RunConfig) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """`run` trained in this process: its history and its trainable tensors (on the CPU) at the end."""
    model, tasks = build_run(run)
    history = train(model, tasks, run.train, progress=False)
    return history, {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def bf16_matches_fp32(device: str, run: RunConfig = TOY_RUN, points: float = ACCURACY_POINTS) -> Verdict:
    """`run` trained twice on `device` from the same seed, with bf16 autocast and in fp32 (TF32 off):
    their mean test accuracies differ by at most `points`."""
    last = {}
    with tf32_off():
        for precision in ("bf16", "fp32"):
            history, _ = train_here(replace(run, **{"train.device": device, "train.precision": precision}))
            last[precision] = history[-1]
    figures = {f"{k}_{p}": 100 * last[p][f"{k}/mean"] for k in ("test", "val") for p in last}
    figures.update({f"loss_{p}": last[p]["train_loss"] for p in last})
    gap = abs(figures["test_bf16"] - figures["test_fp32"])
    detail = (
        f"toy test accuracy bf16 {figures['test_bf16']:.2f}% vs fp32 {figures['test_fp32']:.2f}% "
        f"(gap {gap:.2f} points, limit {points:g}); val {figures['val_bf16']:.2f}% vs {figures['val_fp32']:.2f}%; "
        f"last-epoch train loss {figures['loss_bf16']:.4f} vs {figures['loss_fp32']:.4f}"
    )
    return Verdict(gap <= points, detail, {**figures, "gap_points": gap})


# ---- 3. achieved FLOP/s, MmAP vs full fine-tuning ------------------------------------------------------


def step_throughput(device: str, model: str = "ViT-B-16", batch_size: int = 128, repeats: int = 3) -> Verdict:
    """The benchmark's step-cost figures on `device` (bf16 autocast on CUDA): the achieved FLOP/s of an MmAP
    step and of a full fine-tuning step, and MmAP's share of full fine-tuning's rate."""
    rows = benchmark.step_cost(bench.Setup(model=model, batch_size=batch_size, device=device), repeats)
    by_figure = {r["figure"]: r for r in rows}
    mmap, full = by_figure["MmAP step / frozen forward"], by_figure["full FT step / frozen forward"]
    ratio = by_figure["full FT step / MmAP step"]  # step time and FLOPs, full FT / MmAP
    rate_ratio = ratio["ratio_median"] / ratio["flop_ratio"]  # MmAP FLOP/s / full FT FLOP/s
    peak = [r["note"] for r in rows if r["group"] == "gpu" and r["figure"].startswith("MmAP step")]
    detail = (
        f"{model} batch {batch_size}: MmAP step {mmap['note']}, full FT step {full['note']}; MmAP / full FT: "
        f"{rate_ratio:.2f}x the FLOP/s, {1 / ratio['ratio_median']:.2f}x the step time, "
        f"{1 / ratio['flop_ratio']:.2f}x the FLOPs" + "".join(f"; MmAP vs bf16 peak: {n}" for n in peak)
    )
    figures = {"rate_ratio": rate_ratio, "time_ratio": ratio["ratio_median"], "flop_ratio": ratio["flop_ratio"]}
    return Verdict(math.isfinite(rate_ratio) and rate_ratio > 0, detail, figures)


# ---- 4. DDP: 2 workers x b = 1 process x 2b ------------------------------------------------------------


def train_both_ways(
    run: RunConfig, folder: str | Path, spec: WorkerSpec
) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """`run` in this process (its global batch) and as `spec.workers` Ray Train workers in `folder` (each a
    1/workers share of every batch): the in-process history and trainable tensors, the workers' final state."""
    history, trainable = train_here(run)
    return history, trainable, fit_distributed(run, folder, spec)


def trainable_gap(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between two sets of trainable tensors by name; inf if they name different tensors."""
    if set(reference) != set(other):
        return math.inf
    return max(float((reference[n] - other[n].cpu()).abs().max()) for n in reference)


def ddp_matches_double_batch(
    device: str, run: RunConfig = DDP_RUN, workers: int = 2, atol: float = DDP_ATOL
) -> Verdict:
    """`workers` Ray Train workers sharing `device` (1/workers GPU each on CUDA) train `run` to the prompts of
    one process with the whole batch."""
    share = 1 / workers if device == "cuda" else 0.0
    spec = WorkerSpec(workers=workers, gpus_per_worker=share, max_failures=0)
    run = replace(run, **{"train.device": device})
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-", ignore_cleanup_errors=True) as folder:
        _, trainable, state = train_both_ways(run, folder, spec)
    gap = trainable_gap(trainable, state["trainable"])
    per_worker = run.train.batch_size // workers
    detail = (
        f"{workers} Ray Train workers x batch {per_worker} ({share:g} GPU each, {ddp_backend(spec)}) vs 1 process "
        f"x batch {run.train.batch_size}, {run.train.epochs} epochs in {run.train.precision}: max |prompt "
        f"difference| {gap:.2g} over {len(trainable)} tensors (limit {atol:g})"
    )
    return Verdict(gap <= atol, detail, {"max_abs_diff": gap})


# ---- running them --------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[str], Verdict]] = {
    "logits": logits_agree,
    "bf16": bf16_matches_fp32,
    "throughput": step_throughput,
    "ddp": ddp_matches_double_batch,
}


def run_check(check: Callable[[str], Verdict], device: str) -> Verdict:
    """`check(device)` with its prints sent to stderr; one that raises fails, naming the exception in one line."""
    try:
        with redirect_stdout(sys.stderr):  # stdout carries the report lines only
            return check(device)
    except Exception as e:  # noqa: BLE001 - a failing check is a FAIL line, never a traceback
        message = next((line for line in str(e).splitlines() if line.strip()), "")
        return Verdict(False, f"raised {type(e).__name__}: {message}"[:400])


def report_line(name: str, verdict: Verdict, seconds: float) -> str:
    """One line per check: PASS or FAIL, its name, its figures and how long it took."""
    return f"{'PASS' if verdict.passed else 'FAIL'} {name}: {verdict.detail} [{seconds:.0f} s]"
