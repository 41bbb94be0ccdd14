"""The toy benchmark's comparison table: zero-shot, the five prompt kinds' relatives and full fine-tuning.

Runs `mmap-ray train` / `mmap-ray eval` in-process for every method and seed, then writes the rows three
ways: `rows.json`, a Parquet table (`OUT/results/baselines/scheme=<method>/seed<N>.parquet`, which
`mmap-ray report RESULTS --baselines OUT` puts next to a study's own rows) and `table.md`, test accuracy
mean ± std over seeds. This is what the README's table comes from:

    .venv/bin/python studies/toy_baselines.py --seeds 0 1 2 --out runs/toy-baselines
    .venv/bin/python studies/toy_baselines.py --from-rows --out runs/toy-baselines   # re-write, no training
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from mmap_ray.cli import main as mmap_ray
from mmap_ray.report import (
    BASELINES,
    METHOD_SLUGS,
    baseline_comparisons,
    markdown_table,
    mean_std,
)
from mmap_ray.results import SCHEMA_VERSION, load, write_table

PARTITION = "Art+Clipart|Product+RealWorld"
METHODS = {  # name -> extra `mmap-ray train` options (None: zero-shot evaluation, no training)
    "zero-shot": None,
    "MmAP (kron)": ["--projection", "kron"],
    "CoOp (shallow)": ["--projection", "coop"],
    "text-deep (CoOp-deep)": ["--projection", "text-deep"],
    "visual-deep (VPT-deep)": ["--projection", "visual-deep"],
    "CLIP-Adapter": ["--projection", "clip-adapter"],
    "BitFit": ["--projection", "bitfit"],
    "MaPLe-style (linear)": ["--projection", "linear"],
    "independent (IVLP)": ["--projection", "independent"],
    "full fine-tuning": ["--full-finetune", "--layers", "none", "--lr", "1e-4"],
}


def measure(out: Path, seeds: list[int], epochs: int) -> list[dict]:
    """Train (or evaluate) every method for every seed; one row of test accuracies per run."""
    rows = []
    for name, extra in METHODS.items():
        for seed in seeds if extra is not None else seeds[:1]:
            run = out / f"{name.split()[0].lower()}-seed{seed}"
            if extra is None:
                code = mmap_ray(["eval", "--out", str(run / "test.json")])
                acc = json.loads((run / "test.json").read_text())
            else:
                code = mmap_ray(
                    [
                        "train",
                        "--partition",
                        PARTITION,
                        "--epochs",
                        str(epochs),
                        "--seed",
                        str(seed),
                        "--out",
                        str(run),
                        "--no-progress",
                        *extra,
                    ]
                )
                summary = json.loads((run / "summary.json").read_text())
                acc = summary["test"] | {"trainable": summary["trainable_params"], "total": summary["total_params"]}
            if code:
                raise RuntimeError(f"{name} (seed {seed}) failed with exit status {code}")
            rows.append(
                {"method": name, "seed": seed, "epochs": 0 if extra is None else epochs, "unit": "percent", **acc}
            )
    return rows


def parquet_row(row: dict) -> dict:
    """A rows.json row (accuracies in percent, as `mmap-ray train` summaries hold them; fractions in rows
    written before they did, which carry no "unit") in the study's column names (test_<task>, test_mean,
    trainable_params)."""
    skip = {"method", "seed", "epochs", "mean", "trainable", "total", "unit"}
    scale = 1 if row.get("unit") == "percent" else 100
    return {
        "method": row["method"],
        "seed": row["seed"],
        "epochs": row.get("epochs"),
        **{f"test_{k}": scale * v for k, v in row.items() if k not in skip},
        "test_mean": scale * row["mean"],
        "trainable_params": row.get("trainable", 0),
        "total_params": row.get("total"),
        "schema_version": SCHEMA_VERSION,
    }


def write_outputs(rows: list[dict], out: Path) -> str:
    """rows.json, the Parquet rows and table.md; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        write_table(out / "results", BASELINES, f"{METHOD_SLUGS[row['method']]}-seed{row['seed']}", [parquet_row(row)])
    table = mean_std(baseline_comparisons(load(out / "results", BASELINES))).drop(columns="source")
    order = pd.Index([m for m in METHODS if m in table.index], name="method")
    text = markdown_table(table.loc[order].reset_index())
    (out / "table.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/toy-baselines")
    p.add_argument("--from-rows", action="store_true", help="re-write the table and Parquet rows from OUT/rows.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.from_rows:
        if not (out / "rows.json").is_file():
            print(f"toy baselines: error: --from-rows needs {out / 'rows.json'}", file=sys.stderr)
            return 2
        rows = json.loads((out / "rows.json").read_text())
    else:
        try:
            rows = measure(out, args.seeds, args.epochs)
        except RuntimeError as e:
            print(f"toy baselines: error: {e}", file=sys.stderr)
            return 1
    print(write_outputs(rows, out))
    print(f"rows (Parquet): {out / 'results'}  (use: mmap-ray report RESULTS --baselines {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
