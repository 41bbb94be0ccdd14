"""The README's matched-budget table from a designs study: every design at each of its budgets, and its
paired difference to MmAP (kron) at the same prompt length.

    python analysis/designs_table.py ~/mmap-ray/studies/designs-budget/results

Accuracy is test accuracy (mean over tasks, %), mean ± std over seeds. The difference to kron pairs the two
runs of one seed (same data, same seed) and gives a 95% t interval over the seeds; "no detectable
difference" is an interval that contains 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from mmap_ray.report import load_study  # noqa: E402
from mmap_ray.report.cli import print_table  # noqa: E402
from mmap_ray.report.load import completed  # noqa: E402
from mmap_ray.stats import seed_interval  # noqa: E402

BASE = "projection=kron"
PROMPT_FREE = ("clip-adapter", "bitfit", "layers=none")  # designs without prompts: n_tokens does not apply


def paired(a: pd.Series, b: pd.Series) -> str:
    """'+1.2 [-0.3, +2.7]': mean of a - b (in points) over the seeds both have, with a 95% t interval."""
    d = seed_interval((a - b).dropna().to_numpy())
    return "–" if d is None else str(d)


def table(results: str) -> pd.DataFrame:
    t = completed(load_study(results).trials)
    t = t.assign(design=t["variant"].astype(str), acc=t["test_mean"])
    rows = []
    for (design, n_tokens), g in t.sort_values("n_tokens").groupby(["design", "n_tokens"], sort=False):
        by_seed = g.set_index("seed")["acc"]
        base = t[(t["design"] == BASE) & (t["n_tokens"] == n_tokens)].set_index("seed")["acc"]
        prompts = not any(word in design for word in PROMPT_FREE)  # the others ignore n_tokens
        rows.append(
            {
                "design": design.removeprefix("projection="),
                "n_tokens": n_tokens if prompts else "–",
                "trainable params": f"{int(g['trainable_params'].iloc[0]):,}",
                "test mean (%)": f"{by_seed.mean():.1f} ± {by_seed.std(ddof=1):.1f}",
                "seeds": len(by_seed),
                "vs kron, same n_tokens (paired, 95% CI)": paired(by_seed, base) if prompts and design != BASE else "",
            }
        )
    meta = Path(results).parent / "study.json"  # the study's own order of designs
    variants = json.loads(meta.read_text())["variants"] if meta.is_file() else list(dict.fromkeys(t["design"]))
    order = {d: i for i, d in enumerate(variants)}
    out = pd.DataFrame(rows)
    return out.sort_values("design", key=lambda c: c.map(lambda d: order.get("projection=" + d, 99)), kind="stable")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a designs study's results folder")
    return print_table("designs_table.py", p, lambda args: table(args.results), argv)


if __name__ == "__main__":
    sys.exit(main())
