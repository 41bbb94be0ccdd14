"""Benchmarks: what an MmAP step costs against its physical limit and against full fine-tuning, and what Ray adds.

Every figure is a ratio of two variants measured in the same process on the same inputs, after a warm-up,
with the variants interleaved in every repeat; the table gives min / median / max over repeats:

1. step cost (ViT-B-16 with random weights at a small batch, and the tiny toy CLIP): MmAP step / frozen
   forward (physical reference ~2x: forward + input-gradient backward), full fine-tuning / frozen forward
   (~3x), the no-grad-below-the-first-alignment-layer saving, and the text tower at 77 tokens / truncated;
   FLOP ratios from torch's FlopCounterMode beside the time ratios;
2. peak memory of an MmAP step / a full fine-tuning step (fresh process per variant; CUDA: max allocated);
3. bytes DDP all-reduces per step, MmAP / full fine-tuning, counted from the parameters and confirmed by a
   comm hook on a 2-process gloo run;
4. Ray overhead: one small toy trial through Tune as a study runs it (1 worker in the trial's process, 2
   with Ray Train) / in-process, with what each phase adds;
5. one fused multi-task forward / a Python loop over tasks;
   and the gradient and look-ahead affinity steps / one default study trial (toy2, in-process);
6. `--device cuda`: bf16 autocast, achieved TFLOP/s of the training step against the device's bf16 peak;
7. the step at DomainNet's shape (6 tasks x 345 classes) / at Office-Home's (4 x 65), and the text tower's
   share of the DomainNet step (`bench_classes.py`).

Correctness checks (same logits, same prompt gradients) run before the timings and land in the table.
Rows go to Parquet (`<out>/results/benchmarks/scheme=<group>/...`) and the table to BENCHMARKS.md:

    .venv/bin/python studies/benchmark.py            # about 10 minutes on a 2-core CPU
    .venv/bin/python studies/benchmark.py --quick --skip-ray --out /tmp/bench   # seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench*.py next to this script, however it is loaded
import bench  # noqa: E402
from bench_affinity import affinity_cost  # noqa: E402
from bench_classes import class_scaling  # noqa: E402
from bench_ray import ray_overhead  # noqa: E402
from bench_table import load_average, machine, markdown, row, single, write_markdown  # noqa: E402

from mmap_ray.backbone import TINY_MODEL
from mmap_ray.provenance import provenance
from mmap_ray.results import write_table

REPO = Path(__file__).resolve().parents[1]
TABLE = "benchmarks"
# (model, batch) per mode: a small CPU batch for ViT-B-16; the tiny CLIP at its training batch.
MODELS = {
    "cpu": (("ViT-B-16", 4), (TINY_MODEL, 64)),
    "quick": ((TINY_MODEL, 16),),
    "cuda": (("ViT-B-16", 128), (TINY_MODEL, 256)),
}
# ---- 1 and 6: step cost --------------------------------------------------------------------------------


def step_cost(setup: bench.Setup, repeats: int) -> list[dict]:
    """(a) MmAP step / frozen forward, (b) full FT step / frozen forward, FLOP ratios, (6) TFLOP/s on CUDA."""
    # Over 60 lines on purpose: the variants are built, warmed up and timed interleaved in one loop.
    model = bench.prompted(bench.load(setup), setup)
    batch = bench.make_batch(model, setup.batch_size, setup.seed)
    opt = bench.optimizer([p for p in model.parameters() if p.requires_grad])
    full_opt = bench.optimizer(list(model.parameters()))

    def full_step() -> None:
        with bench.backbone_trainable(model):
            bench.train_step(model, full_opt, batch)

    def open_clip_blocks_step() -> None:  # the MmAP step through open_clip's own blocks (no fused path)
        model.fused_blocks = False
        try:
            bench.train_step(model, opt, batch)
        finally:
            model.fused_blocks = True

    variants = {
        "forward": lambda: bench.frozen_forward(model, batch),
        "grad_forward": lambda: bench.loss_of(model, batch),  # builds the graph, no backward
        "mmap": lambda: bench.train_step(model, opt, batch),
        "mmap_open_clip": open_clip_blocks_step,
        "full": full_step,
    }
    # The warm-up round runs under the FLOP counter (counting slows a call down; warm-ups are not timed).
    bench.frozen_forward(model, batch)
    fwd_flops = bench.count_flops(variants["grad_forward"])
    mmap_flops = bench.count_flops(variants["mmap"])
    full_flops = bench.count_flops(full_step)
    t = bench.measure(variants, repeats, warmup=0, device=setup.device)
    rows = [
        row(
            "step_cost",
            setup,
            "forward with autograd / frozen forward",
            **bench.ratio_stats(t["grad_forward"], t["forward"]),
            flop_ratio=1.0,
            note="same forward; the graph is built (prompts require grad), no backward",
        ),
        row(
            "step_cost",
            setup,
            "MmAP step / frozen forward",
            **bench.ratio_stats(t["mmap"], t["forward"]),
            flop_ratio=mmap_flops / fwd_flops,
            note=_rate_note(mmap_flops, t["mmap"], setup.device),
        ),
        row(
            "step_cost",
            setup,
            "MmAP step, open_clip's blocks / fused blocks",
            **bench.ratio_stats(t["mmap_open_clip"], t["mmap"]),
            note="the same step with `PromptedCLIP.fused_blocks` off: what mmap_ray/block.py saves",
        ),
        row(
            "step_cost",
            setup,
            "full FT step / frozen forward",
            **bench.ratio_stats(t["full"], t["forward"]),
            flop_ratio=full_flops / fwd_flops,
            note=_rate_note(full_flops, t["full"], setup.device),
        ),
        row(
            "step_cost",
            setup,
            "full FT step / MmAP step",
            **bench.ratio_stats(t["full"], t["mmap"]),
            flop_ratio=full_flops / mmap_flops,
        ),
    ]
    if setup.device == "cuda":
        rows += [
            _tflops_row(setup, name, flops, t[key])
            for name, flops, key in (("MmAP step", mmap_flops, "mmap"), ("full FT step", full_flops, "full"))
        ]
    return rows


def _rate_note(flops: int, times: list[float], device: str) -> str:
    rate = flops / sorted(times)[len(times) // 2]
    return f"{rate / 1e12:.3g} TFLOP/s achieved" if device == "cuda" else f"{rate / 1e9:.3g} GFLOP/s achieved"


def _tflops_row(setup: bench.Setup, name: str, flops: int, times: list[float]) -> dict:
    """Achieved TFLOP/s over the device's bf16 peak, per repeat."""
    device_name = torch.cuda.get_device_name()
    peak = bench.bf16_peak_tflops(device_name)
    achieved = [flops / s / 1e12 for s in times]
    if peak is None:
        return row(
            "gpu",
            setup,
            f"{name} achieved TFLOP/s",
            note=f"{device_name}: bf16 peak unknown; median {sorted(achieved)[len(achieved) // 2]:.1f} TFLOP/s",
        )
    stats = {**bench.ratio_stats(achieved, [peak] * len(achieved)), "numerator_s": None, "denominator_s": None}
    return row(
        "gpu",
        setup,
        f"{name} TFLOP/s / bf16 peak",
        **stats,
        note=f"{device_name}: median {stats['ratio_median'] * peak:.1f} of {peak:g} TFLOP/s",
    )


def no_grad_below(backbone, setup: bench.Setup, repeats: int) -> list[dict]:
    """(c) MmAP step with every block under autograd / with no-grad below the first alignment layer."""
    layers = bench.first_half_layers(backbone.info.vision_layers)
    half = replace(setup, layers=layers)
    model = bench.prompted(backbone, half)
    batch = bench.make_batch(model, setup.batch_size, setup.seed)
    diff = bench.check_no_grad_below(model, batch)
    opt = bench.optimizer([p for p in model.parameters() if p.requires_grad])

    def all_grad() -> None:
        with bench.grad_below_first_layer(model):
            bench.train_step(model, opt, batch)

    t = bench.measure(
        {"no_grad": lambda: bench.train_step(model, opt, batch), "all_grad": all_grad}, repeats, device=setup.device
    )
    return [
        row(
            "no_grad_below",
            half,
            "MmAP step, all blocks with grad / no-grad below first layer",
            **bench.ratio_stats(t["all_grad"], t["no_grad"]),
            max_abs_diff=diff,
            note="max_abs_diff: prompt gradients",
        )
    ]


def text_context(backbone, setup: bench.Setup, repeats: int) -> list[dict]:
    """(d) The text tower's forward + backward at the full 77 tokens / truncated to the longest prompt."""
    truncated = bench.prompted(backbone, setup)
    full = bench.prompted(backbone, replace(setup, truncate_context=False))
    batch = bench.make_batch(truncated, setup.batch_size, setup.seed)
    diff = bench.check_truncation(truncated, full, batch)
    t = bench.measure(
        {"full": lambda: bench.text_tower_step(full), "truncated": lambda: bench.text_tower_step(truncated)},
        repeats,
        device=setup.device,
    )
    n_short, n_full = truncated.text_tokens.shape[1], full.text_tokens.shape[1]
    tokens = f"{n_short} vs {n_full} tokens, {len(truncated.text_tokens)} class prompts"
    return [
        row(
            "text_context",
            setup,
            "text tower step, 77 tokens / truncated",
            **bench.ratio_stats(t["full"], t["truncated"]),
            note=tokens,
        ),
        row(
            "text_context",
            setup,
            "text logits max |truncated - 77 tokens|",
            max_abs_diff=diff,
            note="logits of the whole model",
        ),
    ]


def multitask(backbone, setup: bench.Setup, repeats: int) -> list[dict]:
    """(5) A training step with a Python loop over tasks / with one fused multi-task forward."""
    model = bench.prompted(backbone, setup)
    batch = bench.make_batch(model, setup.batch_size, setup.seed)
    diff = bench.check_fused(model, batch)
    opt = bench.optimizer([p for p in model.parameters() if p.requires_grad])

    def loop(images, task_ids):
        return bench.loop_forward(model, images, task_ids)

    t = bench.measure(
        {
            "fused": lambda: bench.train_step(model, opt, batch),
            "loop": lambda: bench.train_step(model, opt, batch, loop),
        },
        repeats,
        device=setup.device,
    )
    return [
        row(
            "multitask",
            setup,
            "MmAP step, loop over tasks / fused",
            **bench.ratio_stats(t["loop"], t["fused"]),
            max_abs_diff=diff,
            note=f"{len(model.task_names)} tasks; max_abs_diff: logits",
        )
    ]


# ---- 2 and 3: memory, communication ------------------------------------------------------------------


def memory(setup: bench.Setup) -> list[dict]:
    """Peak memory of MmAP / full fine-tuning steps, weights included (one fresh process per variant)."""
    if setup.device == "cuda":
        mmap, full = bench.step_memory(asdict(setup), False), bench.step_memory(asdict(setup), True)
        how = "CUDA max_memory_allocated, weights included"
    else:
        mmap, full = bench.memory_in_subprocess(setup, False), bench.memory_in_subprocess(setup, True)
        how = "peak RSS above the process before the model was built (weights included), fresh process each"
    return [
        single(
            "memory",
            setup,
            "MmAP peak memory / full FT peak memory",
            mmap["peak_bytes"],
            full["peak_bytes"],
            numerator_bytes=mmap["peak_bytes"],
            denominator_bytes=full["peak_bytes"],
            note=f"{how}; weights {mmap['model_bytes'] / 2**20:.0f} MiB",
        )
    ]


def communication(setup: bench.Setup, out: Path, confirm: bool) -> list[dict]:
    """Bytes all-reduced per DDP step, MmAP / full FT; `confirm`: a 2-process gloo run counts bucket bytes."""
    model = bench.prompted(bench.load(setup), setup)
    mmap_bytes = bench.trainable_bytes(model)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = [
        single(
            "communication",
            setup,
            "all-reduced bytes per step, MmAP / full FT",
            mmap_bytes,
            full_bytes,
            numerator_bytes=mmap_bytes,
            denominator_bytes=full_bytes,
            note="counted from the trainable parameters",
        )
    ]
    if confirm:
        cpu = replace(setup, device="cpu")
        for name, full_ft in (("MmAP", False), ("full FT", True)):
            ranks = bench.ddp_bucket_bytes(cpu, full_ft, out / "ddp")
            hooked, expected = ranks[0]["bytes"], ranks[0]["trainable_bytes"]
            same = all(r["bytes"] == hooked for r in ranks)
            rows.append(
                single(
                    "communication",
                    cpu,
                    f"{name}: DDP hook bytes / trainable-parameter bytes",
                    hooked,
                    expected,
                    numerator_bytes=hooked,
                    denominator_bytes=expected,
                    note=f"2 gloo ranks, {ranks[0]['buckets']} buckets, ranks agree: {same}",
                )
            )
    return rows


def run_all(args: argparse.Namespace, out: Path) -> list[dict]:
    device = args.device
    models = MODELS["quick"] if args.quick else MODELS[device]
    if args.models:
        models = tuple((m.partition(":")[0], int(m.partition(":")[2] or 8)) for m in args.models.split(","))
    rows: list[dict] = []
    for name, batch in models:
        setup = bench.Setup(model=name, batch_size=batch, device=device)
        # On a CPU, ViT-B-16 steps take seconds: its loop-over-tasks and 2-process DDP runs (minutes) are left to
        # the tiny CLIP, whose DDP run confirms the byte count that ViT-B-16's row counts from its parameters.
        light = name == TINY_MODEL or device == "cuda"
        print(
            f"[benchmark] {name} batch {batch} on {device}: step cost, no-grad, text, multi-task, classes, memory, DDP",
            flush=True,
        )
        rows += step_cost(setup, args.repeats)
        backbone = bench.load(setup)
        backbone.model.to(device)
        rows += no_grad_below(backbone, setup, args.repeats)
        rows += text_context(backbone, setup, args.repeats)
        if light:
            rows += multitask(backbone, setup, args.repeats)
        if light:  # ViT-B-16 on a CPU: minutes per DomainNet step; alone, `python studies/bench_classes.py`
            rows += class_scaling(backbone, setup, args.repeats)
        del backbone
        rows += memory(setup)
        rows += communication(setup, out, confirm=light)
    if not args.skip_ray:
        print("[benchmark] Ray overhead", flush=True)
        try:
            rows += ray_overhead(out, 1 if args.quick else args.ray_epochs)
        except Exception as e:  # noqa: BLE001 - keep the figures measured so far; the table says what failed
            rows.append(row("ray", None, "Tune trial / in-process", note=f"failed: {type(e).__name__}: {e}"[:300]))
    if not args.quick and device == "cpu":  # a default trial of toy2 takes a minute: not in the smoke run
        print("[benchmark] affinity step vs one default trial", flush=True)
        rows += affinity_cost()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny model only, seconds-scale (used by the test)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast, TFLOP/s vs peak")
    p.add_argument("--out", default="runs/benchmarks", help="folder for the Parquet rows and scratch files")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3; 2 with --quick)")
    p.add_argument("--models", default=None, help="override the backbones: NAME[:BATCH],... e.g. mmap-ViT-Tiny-8:64")
    p.add_argument("--skip-ray", action="store_true", help="skip the Ray overhead figure (it starts a local Ray)")
    p.add_argument("--ray-epochs", type=int, default=3, help="epochs of the toy trial for the Ray overhead figure")
    p.add_argument(
        "--markdown",
        default=None,
        help="where the table goes (default BENCHMARKS.md; <out>/BENCHMARKS.md with --quick)",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch.cuda.is_available() is False: no CUDA device or a CPU-only torch "
            f"({torch.__version__}); run on a GPU machine or use --device cpu",
            file=sys.stderr,
        )
        return 2
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    out = Path(args.out)
    md = Path(args.markdown) if args.markdown else (out / "BENCHMARKS.md" if args.quick else REPO / "BENCHMARKS.md")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    # random weights must not cost denormal arithmetic (no change seen here); the flag is the process's FPU
    # state, so it is cleared again (Python's default) for whatever runs next in this process
    torch.set_flush_denormal(args.device == "cpu")
    try:
        rows = run_all(args, out)
    finally:
        torch.set_flush_denormal(False)
    info = {
        **machine(),
        "load_before": load_average(load_before),
        "load_after": load_average(os.getloadavg()),
        "wall_s": time.perf_counter() - t0,
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    command = "python studies/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    extra = {**provenance(), **{k: str(v) for k, v in info.items()}, "command": command.strip()}
    for group in dict.fromkeys(r["group"] for r in rows):
        write_table(
            out / "results",
            TABLE,
            f"{group}-{'quick' if args.quick else args.device}",
            [{**r, **extra} for r in rows if r["group"] == group],
        )
    section = markdown(rows, info, command.strip())
    write_markdown(md, section)
    print(section)
    print(f"[benchmark] rows in {out / 'results' / TABLE}, table in {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
