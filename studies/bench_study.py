"""The default study's time line: `mmap-ray study` with its typed defaults, run in this process as the command
runs it (`study.program.main`), timed by phase, with the whole machine's busy share in each.

Phases: `imports` (mmap_ray's study program, torch), `Ray start` (a local Ray instance), `partitions` (the tiny
CLIP, toy2 and the gradient and look-ahead probes choosing each seed's partition), `trials` (Ray Tune running
the 13 trials, two at a time on 2 cores), `report` (reading the results, the leaderboard, report.md, report.html
and its figures), `other` (the checks, the lock, study.json, the rest). Under `trials`: the trials' own
seconds (`wall_s` of their rows, build to last row), summed, against the phase's wall seconds times the
trials that run at once: the share of the cores' time the trials themselves held.

    .venv/bin/python studies/bench_study.py              # the default study (minutes), in a temporary folder
    .venv/bin/python studies/bench_study.py --smoke      # the smoke preset, a short check
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()

import pandas as pd  # noqa: E402  (after T0: the imports are a phase)
from bench_trial import Clock  # noqa: E402

import mmap_ray.distributed  # noqa: E402
import mmap_ray.report  # noqa: E402
from mmap_ray.study import program  # noqa: E402
from mmap_ray.study import run as study_run  # noqa: E402

IMPORTED = time.perf_counter() - T0


def measure(argv: list[str]) -> tuple[pd.DataFrame, dict]:
    """Run `mmap-ray study ARGV` in a temporary storage folder, timed by phase: (one row per phase, totals)."""
    line = Clock()
    wrapped = {
        (mmap_ray.distributed, "ensure_ray"): "Ray start",
        (study_run, "plan_partitions"): "partitions",
        (study_run, "_run_trials"): "trials",
        (mmap_ray.report, "load_study"): "report",
        (mmap_ray.report, "write_report"): "report",
    }
    saved = {key: getattr(*key) for key in wrapped}
    for (module, name), phase in wrapped.items():
        setattr(module, name, line.wrap(phase, getattr(module, name)))
    try:
        with tempfile.TemporaryDirectory() as storage:
            args = [*argv, "--storage", storage, "--name", "bench"]
            study = program.build_study(program.build_parser().parse_args(args))
            status = line.wrap("study", program.main)(args)
            if status != 0:
                raise SystemExit(f"bench_study: mmap-ray study {' '.join(args)} exited {status}")
            rows = pd.read_parquet(Path(storage) / "bench" / "results" / "trials")
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
    phases = ["Ray start", "partitions", "trials", "report"]
    line.rest("study", phases)
    line.wall["imports"] = IMPORTED
    total = sum(line.wall[p] for p in ["imports", *phases, "other"])
    table = pd.DataFrame(
        [
            {
                "phase": p,
                "seconds": round(line.wall[p], 1),
                "share %": round(100 * line.wall[p] / total, 1),
                "machine busy %": line.machine_busy(p),
            }
            for p in ["imports", *phases, "other"]
        ]
    )
    at_once = max(1, int(os.cpu_count() // study.resources.cpus_per_worker))  # a local Ray holds every core
    totals = {
        "study s": round(total, 1),
        "trials": len(rows),
        "trial s (mean)": round(float(rows["wall_s"].mean()), 1),
        "trials at once": at_once,
        "trial-held share of the trials phase %": round(
            100 * rows["wall_s"].sum() / (line.wall["trials"] * at_once), 1
        ),
        "machine busy % (study)": line.machine_busy("study"),
    }
    return table, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the smoke preset instead of the default study")
    args = parser.parse_args(argv)
    table, totals = measure(["--smoke"] if args.smoke else [])
    print(table.to_markdown(index=False))
    print(", ".join(f"{k}: {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
