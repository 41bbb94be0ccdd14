"""DomainNet-sized results: how writing, `mmap-ray report` and `mmap-ray compare` grow with the rows.

A study on DomainNet (6 domains x 345 classes) stores 175,000 test predictions per trial; at 100 trials that
is 17.5 million rows for the report to read and bootstrap. This fabricates such results (accuracies drawn at
random: it measures the data path, not a method) and writes them through the study's own writer
(`results.write_table`, as `study/callback.py` does: one trial row and one predictions file per trial), then
runs the two commands as a user does, as subprocesses, timing each and reading its peak resident memory.
The first N trials of the largest folder are hard-linked into a folder per size, so each size is a study
of its own on the same files.

    .venv/bin/python studies/bench_results.py                       # 10, 30 and 100 trials
    .venv/bin/python studies/bench_results.py --trials 5 --images 20000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmap_ray.predictions import write_predictions
from mmap_ray.results import (
    PREDICTIONS,
    SCHEMA_VERSION,
    TRIAL_PREDICTION_SCHEMA,
    TRIALS,
    canonical_json,
    config_id,
    row_key,
    trial_schema,
    write_table,
)

TASKS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]  # DomainNet's domains
CLASSES = 345
SEEDS = 5  # trials are configurations x seeds
MMAP_RAY = Path(sys.executable).with_name("mmap-ray")


def _outcomes(rng: np.random.Generator, images: int, acc: float) -> dict[str, np.ndarray]:
    """The same `images` test images for every run (tasks and labels fixed), predictions right with
    probability `acc`."""
    task = np.repeat(np.arange(len(TASKS)), -(-images // len(TASKS)))[:images]
    label = np.random.default_rng(12345).integers(0, CLASSES, images)
    correct = rng.random(images) < acc
    wrong = (label + rng.integers(1, CLASSES, images)) % CLASSES
    return {"task": task, "image": np.arange(images), "label": label, "prediction": np.where(correct, label, wrong)}


def write_trial(results: Path, i: int, images: int, rng: np.random.Generator) -> tuple[str, float]:
    """Trial `i`: its row and predictions, as the study writes them (rows as dicts through `write_table`);
    returns its file name and the seconds the writes took. Trials alternate one prompt for all tasks
    (`single`) and one per task (`independent`), each pair on one seed, SEEDS seeds per prompt length, so the
    first n trials of any even n are pairs the report compares."""
    n_tokens, single, seed = 2 + i // (2 * SEEDS), i % 2 == 0, (i // 2) % SEEDS
    partition = "+".join(TASKS) if single else "|".join(TASKS)
    config = {"partition": partition, "n_tokens": n_tokens, "layers": [0, 1, 2], "projection": "kron",
              "combine": "concat", "dataset": "domainnet", "lr": 2e-3}  # fmt: skip
    cid = config_id(config)
    acc = 0.55 + 0.01 * (not single) + 0.01 * rng.standard_normal()
    out = _outcomes(rng, images, acc)
    start = time.perf_counter()
    preds = [
        {"study": "domainnet", "config_id": cid, "seed": seed, "task": TASKS[t], "image": int(im), "label": int(la),
         "prediction": int(pr), "correct": bool(la == pr)}
        for t, im, la, pr in zip(out["task"], out["image"], out["label"], out["prediction"], strict=True)
    ]  # fmt: skip
    write_table(results, PREDICTIONS, row_key(cid, seed), preds, TRIAL_PREDICTION_SCHEMA)
    right = pd.Series(out["label"] == out["prediction"]).groupby(out["task"]).mean() * 100
    row = {
        **config,
        "study": "domainnet",
        "config_id": cid,
        "config": canonical_json(config),
        "seed": seed,
        "trial_id": f"t{i:04d}",
        "scheme": "single" if single else "independent",  # the report pairs each scheme with `single` by seed
        "status": "TERMINATED",
        "error": "",
        "early_stopped": False,
        "k": 1 if single else len(TASKS),
        "depth": 3,
        "epochs_run": 1,
        "trainable_params": 1000 * n_tokens,
        "total_params": 149_620_737 + 1000 * n_tokens,
        "wall_s": 600.0,
        "device_hours": 600.0 / 3600,
        "device_kind": "cpu",
        "val_mean_final": float(right.mean()),
        "test_mean": float(right.mean()),
        "schema_version": SCHEMA_VERSION,
        **{f"test_{t}": float(right[k]) for k, t in enumerate(TASKS)},
    }
    write_table(results, TRIALS, row_key(cid, seed), [row], trial_schema(TASKS))
    return f"{row_key(cid, seed)}.parquet", time.perf_counter() - start


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Run a command; (wall seconds, its peak resident memory in GB, the end of its output)."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "peak_kb=%M", *argv], capture_output=True, text=True, env={**os.environ}
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = int(done.stderr.rsplit("peak_kb=", 1)[1].split()[0])
    return wall, peak / 1e6, done.stdout[-300:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 30, 100], help="study sizes (trials)")
    parser.add_argument("--images", type=int, default=175_000, help="test predictions per trial")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)
    if min(args.trials) < 2 or args.images < len(TASKS):
        parser.error("--trials: at least 2 each; --images: at least one per task")
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-results-"))
    full = root / "all" / "results"
    rng = np.random.default_rng(0)
    keys, writes = zip(*(write_trial(full, i, args.images, rng) for i in range(max(args.trials))), strict=True)
    print(f"wrote {max(args.trials)} trials x {args.images:,} predictions to {full}: "
          f"{np.median(writes):.2f} s per trial (median), {sum(writes):.0f} s in all")  # fmt: skip
    rows = []
    for n in sorted(args.trials):
        results = root / f"n{n}" / "results"
        for table in (TRIALS, PREDICTIONS):
            (results / table).mkdir(parents=True, exist_ok=True)
            for key in keys[:n]:
                if not (results / table / key).exists():
                    os.link(full / table / key, results / table / key)
        wall, peak, _ = timed([str(MMAP_RAY), "report", str(results), "--out", str(results.parent / "report")])
        rows.append({"trials": n, "prediction rows": f"{n * args.images:,}", "report s": round(wall, 1),
                     "report peak GB": round(peak, 2)})  # fmt: skip
    # compare: two runs' `eval --predictions` files of the same images
    pair = []
    for name, acc in (("a", 0.55), ("b", 0.56)):
        out = _outcomes(np.random.default_rng(1 if name == "a" else 2), args.images, acc)
        cols = {k: v.tolist() for k, v in out.items()} | {"task": [TASKS[t] for t in out["task"]]}
        cols["correct"] = [la == pr for la, pr in zip(cols["label"], cols["prediction"], strict=True)]
        pair.append(write_predictions(root / f"{name}.parquet", cols, {"split": "test", "images": "bench"}).path)
    wall, peak, _ = timed([str(MMAP_RAY), "compare", *pair])
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\ncompare of two runs' {args.images:,} predictions: {wall:.1f} s, peak {peak:.2f} GB")
    print(f"(resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
