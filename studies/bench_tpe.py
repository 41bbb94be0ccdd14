"""Search at scale: the time Optuna's TPE takes to suggest a trial as a search study grows to 1,000 trials.

A search study's driver asks the searcher for every trial (`mmap_ray.study.trials.searcher`: Ray Tune's
OptunaSearch over the study's own search space, TPE), and tells it every result. This times exactly those two
calls, with no Ray and no training: each trial's "accuracy" is a fixed function of its settings plus noise, so
TPE has a landscape to model. Figures: the median suggestion time over a window of trials at 10, 100 and 1,000
told results, against a trial's time (the default study's trials take about a minute on 2 cores).

    .venv/bin/python studies/bench_tpe.py               # 1,000 trials, the default and a wide search space
    .venv/bin/python studies/bench_tpe.py --trials 100  # shorter
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import zlib

import pandas as pd

from mmap_ray.study import program
from mmap_ray.study.trials import search_space, searcher

SPACES = {  # name -> study flags (search mode)
    "default": [],
    "wide": ["--depths", "3", "6", "9", "12", "--projections", "kron", "linear", "phm", "--combines", "concat", "add"],
}
WINDOW = 10  # suggestions timed around each checkpoint


def _accuracy(params: dict, rng: random.Random) -> float:
    """A landscape over the settings: best lr near 2e-3, a per-choice offset, noise of 1 point."""
    score = 70.0 - 8.0 * (math.log10(params["lr"]) - math.log10(2e-3)) ** 2
    for key, value in sorted(params.items()):
        if key != "lr":
            score += zlib.crc32(f"{key}={value}".encode()) % 7 - 3.0
    return score + rng.gauss(0.0, 1.0)


def run(flags: list[str], trials: int, seed: int = 0) -> pd.DataFrame:
    """Suggest and tell `trials` trials; one row per trial: results told before it, seconds to suggest it and
    to tell its result, and its settings."""
    args = ["--mode", "search", "--storage", "/nonexistent-never-written", "--seeds", str(seed), *flags]
    study = program.build_study(program.build_parser().parse_args(args))
    search = searcher(study, pd.DataFrame())
    rng = random.Random(seed)
    rows = []
    for i in range(trials):
        start = time.perf_counter()
        params = search.suggest(f"t{i}")
        suggest_s = time.perf_counter() - start
        start = time.perf_counter()
        search.on_trial_complete(f"t{i}", {"val_mean_final": _accuracy(params, rng), **params})
        rows.append({"told": i, "suggest_s": suggest_s, "tell_s": time.perf_counter() - start, **params})
    return pd.DataFrame(rows).assign(axes=len(search_space(study)))


def summary(df: pd.DataFrame, trials: int) -> list[dict]:
    """Median suggestion and tell time over the WINDOW trials before 10, 100, 1,000 told results."""
    out = []
    for at in (n for n in (10, 100, 1000) if n <= trials):
        window = df[(df["told"] >= at - WINDOW) & (df["told"] < at)]
        out.append(
            {
                "told results": at,
                "suggest ms (median)": round(1000 * statistics.median(window["suggest_s"]), 2),
                "tell ms (median)": round(1000 * statistics.median(window["tell_s"]), 2),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials to suggest and tell (default 1000)")
    args = parser.parse_args(argv)
    if args.trials < 10:
        parser.error(f"--trials {args.trials}: at least 10")
    for name, flags in SPACES.items():
        start = time.perf_counter()
        df = run(flags, args.trials)
        total = time.perf_counter() - start
        print(f"\n{name} search space ({df['axes'].iloc[0]} axes), {args.trials} trials: {total:.1f} s in all")
        print(pd.DataFrame(summary(df, args.trials)).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
