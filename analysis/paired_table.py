"""A study's results along one setting, each value paired with a base value by seed: the README's grouping and
ablation tables.

    python analysis/paired_table.py ~/mmap-ray/studies/grouping/results --by scheme --base single
    python analysis/paired_table.py ~/mmap-ray/studies/ablation-layers/results --by depth --base 3

Rows: each value of the setting (a trial that two schemes share counts for both), with validation and
test accuracy in % (mean ± std over seeds), its seeds and trainable parameters, and the test-accuracy
difference to the base value, paired by seed, with a 95% t interval ("no detectable difference" when the
interval contains 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from mmap_ray.report import load_study  # noqa: E402
from mmap_ray.report.cli import print_table  # noqa: E402
from mmap_ray.report.load import completed  # noqa: E402
from mmap_ray.report.tables import percent_cell  # noqa: E402
from mmap_ray.stats import seed_interval  # noqa: E402


def table(results: str, by: str, base: str) -> pd.DataFrame:
    t = completed(load_study(results).trials)
    if by not in t:
        raise ValueError(f"--by {by!r} is not a column of {results}; e.g. scheme, n_tokens, depth, variant")
    if by == "scheme":  # a trial two schemes chose names both ("gradient, lookahead"): it counts for each
        t = t.assign(scheme=t["scheme"].astype(str).str.split(", ")).explode("scheme")
    t = t.assign(value=t[by].astype(str))
    if base not in set(t["value"]):
        raise ValueError(f"--base {base!r} is not a value of {by}; the values are {sorted(set(t['value']))}")
    reference = t[t["value"] == base].set_index("seed")["test_mean"]
    rows = []
    for value, g in t.groupby("value", sort=False):
        diff = seed_interval((g.set_index("seed")["test_mean"] - reference).dropna().to_numpy())
        rows.append(
            {
                by: value,
                "val mean (%)": percent_cell(g["val_mean_final"]),
                "test mean (%)": percent_cell(g["test_mean"]),
                "seeds": len(g),
                "trainable params": f"{int(g['trainable_params'].iloc[0]):,}",
                f"test vs {base} (paired, 95% CI)": "" if value == base or diff is None else f"{diff} {diff.verdict}",
            }
        )
    out = pd.DataFrame(rows)
    numeric = pd.to_numeric(out[by], errors="coerce")
    if numeric.notna().all():  # a numeric setting in its own order
        return out.iloc[numeric.argsort()].reset_index(drop=True)
    means = t.groupby("value")["test_mean"].mean()
    return out.iloc[(-means[out[by]].to_numpy()).argsort(kind="stable")].reset_index(drop=True)  # best first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a study's results folder")
    p.add_argument("--by", default="scheme", help="the setting that varies (default: scheme)")
    p.add_argument("--base", required=True, help="the value every other one is paired with, e.g. single")
    return print_table("paired_table.py", p, lambda args: table(args.results, args.by, args.base), argv)


if __name__ == "__main__":
    sys.exit(main())
