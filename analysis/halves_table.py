"""toy3's mechanism, per partition: test accuracy on each task's abundant half of the classes and on its
scarce half (the names only a partner of the same convention can teach), from a study's per-image outcomes.

    python analysis/halves_table.py ~/mmap-ray/studies/oracle-k2/results

Rows: each partition (best test mean first), with the test mean, the accuracy on the abundant half and on
the scarce half, each in % as mean ± std over seeds, and the number of seeds. A study on another dataset
than toy3 is refused: its classes have no halves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from mmap_ray.data.toy import ABUNDANT  # noqa: E402
from mmap_ray.report import load_study  # noqa: E402
from mmap_ray.report.cli import print_table  # noqa: E402
from mmap_ray.report.load import completed  # noqa: E402
from mmap_ray.report.tables import percent_cell  # noqa: E402


def table(results: str) -> pd.DataFrame:
    study = load_study(results)
    trials = completed(study.trials)
    datasets = set(trials["dataset"].astype(str))
    if datasets != {"toy3"}:
        raise ValueError(f"{results} is a study on {sorted(datasets)}; only toy3's classes have halves")
    p = study.predictions
    if p.empty:
        raise ValueError(f"{results} has no per-image outcomes (its predictions table): no halves to count")
    p = p.assign(half=[("abundant" if c in ABUNDANT[t] else "scarce") for t, c in zip(p["task"], p["label"])])
    halves = 100 * p.groupby(["config_id", "seed", "half"])["correct"].mean().unstack("half")  # percent
    halves = halves.reset_index()
    t = trials[["config_id", "seed", "partition", "test_mean"]].astype({"config_id": str, "partition": str})
    t = t.merge(halves, on=["config_id", "seed"], how="inner")
    rows = [
        {
            "partition": part,
            "test mean (%)": percent_cell(g["test_mean"]),
            "abundant half (%)": percent_cell(g["abundant"]),
            "scarce half (%)": percent_cell(g["scarce"]),
            "seeds": len(g),
            "_order": g["test_mean"].mean(),
        }
        for part, g in t.groupby("partition", sort=False)
    ]
    return pd.DataFrame(rows).sort_values("_order", ascending=False).drop(columns="_order").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a toy3 study's results folder")
    return print_table("halves_table.py", p, lambda args: table(args.results), argv)


if __name__ == "__main__":
    sys.exit(main())
