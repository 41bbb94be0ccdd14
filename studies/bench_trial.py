"""Where a default study trial's time goes: one trial of `mmap-ray study` (typed defaults, scheme single, seed 0)
trained in this process exactly as a one-worker study trial trains in its Tune process (`study/in_trial.py`:
one torch thread per reserved core, `engine.fit`, a numbered checkpoint folder when one is due), timed by phase.

Phases: `start-up` (a fresh Python importing what a trial process imports: torch, mmap_ray's study, Ray Tune;
paid once per trial process, which Tune reuses across a study's trials), `build` (the tiny CLIP read from its
package file, toy2 rendered, the prompted model built), `train steps` (`engine.train_epoch`: forward,
loss, backward, AdamW), `validation` (each epoch's val accuracy), `test` (the last epoch's test accuracy, the
backbone's zero-shot accuracy and every test image's outcome), `checkpoints` (the checkpoint state and its
folder, when due), `other` (the rest of `engine.fit`). Beside each: the process's CPU seconds over wall seconds
(1.0 = one core busy), and the whole machine's busy share from /proc/stat over the trial.

    .venv/bin/python studies/bench_trial.py             # the default trial (32 epochs)
    .venv/bin/python studies/bench_trial.py --epochs 2  # a short check
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from mmap_ray import build, checkpoint, engine
from mmap_ray.fields import replace
from mmap_ray.grouping import parse_groups
from mmap_ray.study import program
from mmap_ray.study.trials import trial_data_seed

IMPORTS = "import torch, ray.tune, mmap_ray.study.run, mmap_ray.study.in_trial"


def busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat's first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # minus idle and iowait


class Clock:
    """Per phase, added up over every call of the functions it wraps: wall seconds, this process's CPU
    seconds, and the whole machine's busy and total jiffies."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.busy: dict[str, int] = defaultdict(int)
        self.ticks: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            w, c, (b, t) = time.perf_counter(), time.process_time(), busy_ticks()
            try:
                return fn(*args, **kwargs)
            finally:
                b1, t1 = busy_ticks()
                self.wall[phase] += time.perf_counter() - w
                self.cpu[phase] += time.process_time() - c
                self.busy[phase] += b1 - b
                self.ticks[phase] += t1 - t
                self.calls[phase] += 1

        return timed

    def rest(self, whole: str, parts: list[str], name: str = "other") -> None:
        """Book what `whole` took beyond `parts` (phases inside it) as `name`."""
        for table in (self.wall, self.cpu, self.busy, self.ticks):
            table[name] = table[whole] - sum(table[p] for p in parts)

    def machine_busy(self, phase: str) -> float | None:
        """The whole machine's busy share in `phase`, in percent."""
        return round(100 * self.busy[phase] / self.ticks[phase], 1) if self.ticks[phase] else None


def start_up_s() -> float:
    """Wall seconds of a fresh Python importing what a trial process imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - start


def default_trial_run(epochs: int | None):
    """The run of the default study's trial of scheme `single`, seed 0 (`epochs` overrides its length)."""
    study = program.build_study(program.build_parser().parse_args([]))
    names = ("Art", "Clipart", "Product", "RealWorld")
    changes = {"partition": parse_groups("+".join(names)), "train.seed": 0}
    changes["data.data_seed"] = trial_data_seed(study, 0)
    if epochs is not None:
        changes["train.epochs"] = epochs
    return study, replace(study.run, **changes)


def measure(epochs: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Train one default trial in this process, timed by phase: (one row per phase, totals)."""
    study, run = default_trial_run(epochs)
    threads = max(1, int(study.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    clock = Clock()
    originals = {
        (engine, "train_epoch"): "train steps",
        (engine, "train_step"): "step",  # counted, inside train steps
        (engine, "_split_accuracy"): "validation",
        (engine, "_test_outcomes"): "test",
        (checkpoint, "state"): "checkpoints",
        (checkpoint, "save_numbered"): "checkpoints",
    }
    saved = {key: getattr(*key) for key in originals}
    for (module, name), phase in originals.items():
        setattr(module, name, clock.wrap(phase, getattr(module, name)))
    with tempfile.TemporaryDirectory() as folder:

        def report(row: dict, state: dict | None) -> None:  # the trial's report, without Tune's
            if state is not None:
                checkpoint.save_numbered(state, Path(folder) / "ray-train")

        def trial() -> None:
            model, tasks = clock.wrap("build", build.build_run)(run)
            clock.wrap("fit", engine.fit)(model, tasks, run.train, engine.Context(torch.device("cpu"), report=report))

        try:
            clock.wrap("trial", trial)()
        finally:
            for (module, name), fn in saved.items():
                setattr(module, name, fn)
    inner = ["train steps", "validation", "test", "checkpoints"]
    clock.rest("fit", inner)
    clock.calls["checkpoints"] //= 2  # each checkpoint is one `state` and one `save_numbered` call
    clock.wall["start-up"] = start_up_s()
    phases = ["start-up", "build", *inner, "other"]
    total = sum(clock.wall[p] for p in phases)
    rows = [
        {
            "phase": p,
            "seconds": round(clock.wall[p], 2),
            "share %": round(100 * clock.wall[p] / total, 1),
            "calls": clock.calls[p] if p in clock.calls else None,
            "process cpu / wall": round(clock.cpu[p] / clock.wall[p], 2) if clock.cpu.get(p) else None,
            "machine busy %": clock.machine_busy(p) if p != "start-up" else None,
        }
        for p in phases
    ]
    totals = {
        "epochs": run.train.epochs,
        "torch threads": threads,
        "trial s (start-up excluded)": round(clock.wall["trial"], 1),
        "steps": clock.calls["step"],
        "train step ms": round(1000 * clock.wall["train steps"] / max(1, clock.calls["step"]), 1),
        "machine busy % (trial)": clock.machine_busy("trial"),
    }
    return pd.DataFrame(rows), totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="the trial's epochs (default: the study's, 32)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: at least 1")
    table, totals = measure(args.epochs)
    print(table.to_markdown(index=False))
    print(", ".join(f"{k}: {v}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
