"""`mmap-ray compare`: two runs' per-image predictions on the same images, paired.

Per task and for the mean over tasks: the accuracy difference A - B with a 95% paired bootstrap interval
(images resampled within each task) and McNemar's exact test. Files that are not of the same images (their
`mmap_ray.data` digests differ) or that repeat an image are refused in one line.
"""

from __future__ import annotations

import argparse

import pandas as pd

from .predictions import read_predictions
from .stats import mcnemar, paired_bootstrap


def add_compare(sub, help: str) -> None:
    p = sub.add_parser(
        "compare",
        help=help,
        description="Compare the per-image predictions of two runs (`mmap-ray eval --predictions`) on the same "
        "images: per task and for the mean over tasks, the accuracy difference A - B with a 95% paired "
        "bootstrap interval (images resampled within each task, both outcomes kept together) and McNemar's "
        "exact test on the images only one run gets right. An interval containing 0 is no detectable difference.",
    )
    p.add_argument("a", help="predictions Parquet file of run A")
    p.add_argument("b", help="predictions Parquet file of run B")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = read_predictions(args.a), read_predictions(args.b)
    key = ["task", "image"]
    for path, df in ((args.a, a), (args.b, b)):
        if (dup := int(df.duplicated(key).sum())) or df.empty:
            what = f"{dup} images twice (rows repeated)" if dup else "no images"
            raise ValueError(f"predictions file {path} holds {what}: write it again with `mmap-ray eval --predictions`")
    if a.attrs["data"] and b.attrs["data"] and a.attrs["data"] != b.attrs["data"]:
        raise ValueError(
            f"{args.a} and {args.b} are predictions on different images ({_data(a)} vs {_data(b)}): evaluate both "
            f"runs on the same dataset, split and data seed"
        )
    for path, df in ((args.a, a), (args.b, b)):
        if not df.attrs["data"]:
            print(f"note: {path} does not say which images it holds (an older file): paired by task, image and label")
    joined = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    unmatched = joined[joined["_merge"] != "both"]
    if len(unmatched) or (joined["label_a"] != joined["label_b"]).any():
        raise ValueError(
            f"{args.a} and {args.b} are not predictions on the same images ({len(unmatched)} images in only "
            f"one, {int((joined['label_a'] != joined['label_b']).sum())} with different labels): evaluate both "
            f"runs on the same data, split and data seed"
        )
    rows = []
    for task, g in [*joined.groupby("task", sort=False), ("mean", joined)]:
        groups = g["task"].astype("category").cat.codes.to_numpy()
        d = paired_bootstrap(g["correct_a"].to_numpy(), g["correct_b"].to_numpy(), groups, seed=args.seed)
        only_a, only_b, p = mcnemar(g["correct_a"].to_numpy(), g["correct_b"].to_numpy())
        rows.append(
            {
                "task": task,
                "images": len(g),
                "A (%)": 100 * g.groupby("task")["correct_a"].mean().mean(),
                "B (%)": 100 * g.groupby("task")["correct_b"].mean().mean(),
                "A - B, 95% CI (points)": str(d),
                "verdict": d.verdict,
                "only A right": only_a,
                "only B right": only_b,
                "McNemar p": p,
            }
        )
    table = pd.DataFrame(rows)
    print(f"A: {args.a}\nB: {args.b}\n(mean: over tasks; CI: paired bootstrap over images within each task)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}" if v < 1 else f"{v:.1f}"))
    return 0


def _data(predictions) -> str:
    data = predictions.attrs["data"]
    return f"{data.get('split', '?')} images {data.get('images', '?')}"
