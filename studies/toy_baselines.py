"""The toy benchmark's comparison table: zero-shot, the five prompt kinds' relatives and full fine-tuning.

Runs `mmap-ray train` / `mmap-ray eval` in-process for every method and seed, then prints (and writes)
a Markdown table of test accuracy, mean ± std over seeds. This is what the README's table comes from:

    .venv/bin/python studies/toy_baselines.py --seeds 0 1 2 --out runs/toy-baselines
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mmap_ray.cli import main as mmap_ray

PARTITION = "Art+Clipart|Product+RealWorld"
METHODS = {  # name -> extra `mmap-ray train` options (None: zero-shot evaluation, no training)
    "zero-shot": None,
    "MmAP (kron)": ["--projection", "kron"],
    "text-only (CoOp-deep)": ["--projection", "text"],
    "visual-only (VPT-deep)": ["--projection", "visual"],
    "MaPLe-style (linear)": ["--projection", "linear"],
    "independent (IVLP)": ["--projection", "independent"],
    "full fine-tuning": ["--full-finetune", "--layers", "none", "--lr", "1e-4"],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/toy-baselines")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = []
    for name, extra in METHODS.items():
        for seed in args.seeds if extra is not None else args.seeds[:1]:
            run = out / f"{name.split()[0].lower()}-seed{seed}"
            if extra is None:
                code = mmap_ray(["eval", "--out", str(run / "test.json")])
                acc = json.loads((run / "test.json").read_text())
            else:
                code = mmap_ray(["train", "--partition", PARTITION, "--epochs", str(args.epochs), "--seed", str(seed),
                                 "--out", str(run), "--no-progress", *extra])  # fmt: skip
                summary = json.loads((run / "summary.json").read_text())
                acc = summary["test"] | {"trainable": summary["trainable_params"]}
            if code:
                return code
            rows.append({"method": name, "seed": seed, **acc})
    lines = ["| method | Art | Clipart | Product | RealWorld | mean | trainable params |", "|---|---|---|---|---|---|---|"]
    for name in METHODS:
        rs = [r for r in rows if r["method"] == name]
        cell = lambda k: (  # noqa: E731
            f"{100 * statistics.mean(r[k] for r in rs):.1f} ± {100 * statistics.pstdev(r[k] for r in rs):.1f}"
        )
        params = f"{rs[0]['trainable']:,}" if "trainable" in rs[0] else "0"
        lines.append(f"| {name} | " + " | ".join(cell(k) for k in ("Art", "Clipart", "Product", "RealWorld", "mean")) + f" | {params} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
