"""GPU acceptance check: what a CPU cannot show about mmap-ray, checked on one GPU in a few minutes.

    python studies/gpu_check.py                       # on a GPU node; every check
    python studies/gpu_check.py --only logits,ddp     # some of them (to rerun one that failed)

Prints one PASS or FAIL line per check with the figures behind it, then a summary line; exits 0 when
every check passes, 1 otherwise. A check that raises is a FAIL line naming the exception, never a
traceback. The checks (`gpu_checks.py`, thresholds in BENCHMARKS.md):

- logits: fp32 logits of ViT-B-16 (random weights) with MmAP prompts, CPU vs GPU, TF32 off;
- bf16: 50 toy training steps with bf16 autocast reach the test accuracy of fp32 within a point;
- throughput: achieved TFLOP/s of the MmAP step and its ratio to full fine-tuning (`benchmark.step_cost`);
- ddp: 2 Ray Train workers with 0.5 GPU each (gloo) end with the prompts of 1 process with the double batch.

Without CUDA it says so in one line on stderr and exits 2, before importing open_clip or Ray.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_checks.py lives next to this file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated checks (default: all): logits,bf16,throughput,ddp")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA is not available (torch {torch.__version__}, torch.cuda.is_available() is False); "
            "run it on a GPU node: python studies/gpu_check.py",
            file=sys.stderr,
        )
        return 2
    try:
        import gpu_checks  # open_clip and Ray: only once there is a GPU to check
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        print(f"gpu_check: the checks cannot be imported: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    names = [n.strip() for n in args.only.split(",")] if args.only else list(gpu_checks.CHECKS)
    unknown = [n for n in names if n not in gpu_checks.CHECKS]
    if unknown:
        print(f"gpu_check: --only names {unknown}; the checks are {list(gpu_checks.CHECKS)}", file=sys.stderr)
        return 2
    start, passed = time.perf_counter(), 0
    for name in names:
        began = time.perf_counter()
        verdict = gpu_checks.run_check(gpu_checks.CHECKS[name], "cuda")
        print(gpu_checks.report_line(name, verdict, time.perf_counter() - began), flush=True)
        passed += verdict.passed
    device = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    print(f"summary: {passed}/{len(names)} checks passed on {device} in {time.perf_counter() - start:.0f} s")
    return 0 if passed == len(names) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("gpu_check: interrupted", file=sys.stderr)
        sys.exit(130)
