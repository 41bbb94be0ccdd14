"""The default study's time line: `mmap-ray study` with its typed defaults, run in this process as the command
runs it (`study.program.main`), timed by phase, with the whole machine's busy share in each.

Phases: `imports` (mmap_ray's study program, torch), `Ray start` (a local Ray instance), `partitions` (the tiny
CLIP, toy2 and the gradient and look-ahead probes choosing each seed's partition), `trials` (Ray Tune running
the 13 trials, two at a time on 2 cores), `load` (reading the results back), `report` (the leaderboard,
report.md, report.html and its figures), `other` (the checks, the lock, study.json, the rest). Under
`trials`: the trials' own seconds (`wall_s` of their rows, build to last row), summed, against the
phase's wall seconds times the trials that run at once: the share of the cores' time the trials held.

Study scale (`--scale N ...`): studies of N one-epoch smoke trials (random-weight tiny CLIP, 2 images per
class, one core per trial), in compare mode (N seeds of scheme `single`) and in search mode (TPE, N samples,
no ASHA), each in a fresh process. Per size: the overhead per trial (the trials phase's slot-seconds over
N, minus a trial's own seconds), the driver's peak resident memory, the driver's seconds writing a trial's
results (its three Parquet files), reading the whole study back (`load_study`), the report (after the read),
and in search mode the mean time of one TPE suggestion (Tune's OptunaSearch.suggest, in the driver).

    .venv/bin/python studies/bench_study.py              # the default study (minutes), in a temporary folder
    .venv/bin/python studies/bench_study.py --smoke      # the smoke preset, a short check
    .venv/bin/python studies/bench_study.py --scale 10 100 1000  # study scale (1,000 trials: about 20 min per mode)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()

import pandas as pd  # noqa: E402  (after T0: the imports are a phase)
from bench_trial import Clock  # noqa: E402

import mmap_ray.distributed  # noqa: E402
import mmap_ray.report  # noqa: E402
import mmap_ray.study.callback  # noqa: E402
from mmap_ray.study import program  # noqa: E402
from mmap_ray.study import run as study_run  # noqa: E402

IMPORTED = time.perf_counter() - T0


def measure(argv: list[str]) -> tuple[pd.DataFrame, dict]:
    """Run `mmap-ray study ARGV` in a temporary storage folder, timed by phase: (one row per phase, totals)."""
    from ray.tune.search.optuna import OptunaSearch

    line = Clock()
    wrapped = {
        (mmap_ray.distributed, "ensure_ray"): "Ray start",
        (study_run, "plan_partitions"): "partitions",
        (study_run, "_run_trials"): "trials",
        (mmap_ray.report, "load_study"): "load",
        (mmap_ray.report, "write_report"): "report",
        (mmap_ray.study.callback, "write_table"): "write",  # inside trials: each trial's three files
        (OptunaSearch, "suggest"): "suggest",  # inside trials, in search mode
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
    phases = ["Ray start", "partitions", "trials", "load", "report"]
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
        "overhead s per trial": round(line.wall["trials"] * at_once / len(rows) - float(rows["wall_s"].mean()), 2),
        "write s per trial": round(line.wall["write"] / len(rows), 3),
        "load s": round(line.wall["load"], 1),
        "report s": round(line.wall["report"], 1),
        "suggest ms (mean)": round(1000 * line.wall["suggest"] / line.calls["suggest"], 1)
        if line.calls["suggest"]
        else None,
        "driver peak MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return table, totals


def scale_args(trials: int, mode: str) -> list[str]:
    """`mmap-ray study` flags for `trials` one-epoch smoke trials in `mode` (compare or search)."""
    common = ["--smoke", "--schemes", "single", "--epochs", "1", "--cpus-per-worker", "1"]  # a core per trial
    if mode == "compare":
        return [*common, "--seeds", *map(str, range(trials))]
    return [*common, "--mode", "search", "--num-samples", str(trials), "--no-asha"]


def scale(sizes: list[int]) -> pd.DataFrame:
    """One row per (mode, size): each study in a fresh Python (`--one`), so that memory is its own."""
    rows = []
    for mode in ("compare", "search"):
        for n in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, str(n)], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                raise SystemExit(f"bench_study: {mode} study of {n} trials failed:\n{out.stderr[-3000:]}")
            totals = json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])
            keep = ["trials", "trial s (mean)", "overhead s per trial", "write s per trial", "load s", "report s"]
            keep += ["suggest ms (mean)", "driver peak MB", "study s"]
            rows.append({"mode": mode, **{k: totals[k] for k in keep}})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the smoke preset instead of the default study")
    parser.add_argument("--scale", type=int, nargs="+", metavar="N", help="study scale: studies of N trials")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)  # one study of --scale
    args = parser.parse_args(argv)
    if args.scale:
        if min(args.scale) < 1:
            parser.error(f"--scale {min(args.scale)}: at least 1 trial")
        print(scale(args.scale).to_markdown(index=False))
        return 0
    if args.one:
        _, totals = measure(scale_args(int(args.one[1]), args.one[0]))
        print(json.dumps(totals))
        return 0
    table, totals = measure(["--smoke"] if args.smoke else [])
    print(table.to_markdown(index=False))
    print(", ".join(f"{k}: {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
