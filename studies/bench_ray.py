"""The benchmark's Ray figures: one toy trial through Tune, as a study runs it (`study.run.fit_trial`: in the
trial's own process with 1 worker, a nested Ray Train run with 2), against the same run in this process,
with a per-phase breakdown of the difference from timestamps recorded here and by Tune.

Phases (seconds): `start` (tuner.fit called -> the trial function entered: Tune's driver, the trial's
actor), `first epoch` (the function entered -> its first report: the build, for Ray Train also the
controller, placement group and worker processes, then one epoch), `other epochs` (the later reports, with
their checkpoints), `end` (the last report -> tuner.fit returns). The in-process reference has the same
phases (build + first epoch, other epochs), timed from the loop's reports.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from bench_table import single

from mmap_ray.backbone import TINY_MODEL


def _trial(config: dict) -> None:
    """A Tune trial that trains the toy run the way a study trial does, and records when it ran."""
    from mmap_ray.config import RunConfig
    from mmap_ray.distributed import WorkerSpec
    from mmap_ray.fields import from_dict
    from mmap_ray.storage import location
    from mmap_ray.study.run import fit_trial

    entered = time.time()
    run, workers = from_dict(RunConfig, config["run"]), from_dict(WorkerSpec, config["workers"])
    fit_trial(run, location(config["out"]), workers)
    Path(config["times"]).write_text(json.dumps({"entered": entered, "left": time.time()}))


def _in_process(run) -> tuple[float, list[float]]:
    """Wall time of the run in this process (build, train, test) and the time of each epoch's report."""
    import torch

    from mmap_ray.build import build_run
    from mmap_ray.engine import Context, fit

    t0 = time.time()
    reports: list[float] = []
    model, tasks = build_run(run)
    fit(model, tasks, run.train, Context(torch.device("cpu"), report=lambda r, s: reports.append(time.time())))
    return time.time() - t0, [t - t0 for t in reports]


def _phases(t_fit: float, entered: float, left: float, done: float, iters: list[float]) -> dict[str, float]:
    """The trial's phases from the driver's, the trial's and Tune's timestamps (`iters`: time_this_iter_s)."""
    return {
        "start": entered - t_fit,
        "first epoch": iters[0],
        "other epochs": sum(iters[1:]),
        "end": done - entered - sum(iters),
        "left": left - entered - sum(iters),  # of "end": inside the trial function, after its last report
    }


def ray_overhead(out: Path, epochs: int) -> list[dict]:
    """Tune trial (1 worker, in process; 2 workers, Ray Train) / in-process, with each phase's share."""
    # Over 60 lines on purpose: the in-process reference and both Ray runs are timed in one place, in order.
    import ray
    from ray import tune

    from mmap_ray.config import RunConfig
    from mmap_ray.distributed import WorkerSpec
    from mmap_ray.engine import TrainConfig
    from mmap_ray.fields import to_dict
    from mmap_ray.study.in_trial import trial_resources
    from mmap_ray.study.run import driver_cpu
    from mmap_ray.toyclip import pretrained_toy_clip

    run = RunConfig(train=TrainConfig(epochs=epochs, batch_size=64))
    pretrained_toy_clip()  # build the cached toy CLIP now, outside every timing
    in_process, reports = _in_process(run)
    ref = {"first epoch": reports[0], "other epochs": reports[-1] - reports[0]}

    ncpu = os.cpu_count() or 1
    t0 = time.perf_counter()
    # One logical CPU more than the cores, so a Train trial's 0.01 CPU and its workers' whole cores fit.
    ray.init(address="local", num_cpus=ncpu + 1, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows = []
    try:
        for workers in (1, 2):
            folder = (out / "ray" / f"workers{workers}").resolve()
            shutil.rmtree(folder, ignore_errors=True)  # a fresh run: never resume an old checkpoint
            spec = WorkerSpec(workers=workers, cpus_per_worker=ncpu / workers, max_failures=0)
            config = {
                "run": to_dict(run),
                "out": str(folder / "train"),
                "times": str(folder / "times.json"),
                "workers": to_dict(spec),
            }
            tuner = tune.Tuner(
                tune.with_resources(_trial, trial_resources(spec, driver_cpu(spec))),
                param_space=config,
                run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0),
            )
            t_fit = time.time()
            grid = tuner.fit()
            done = time.time()
            if grid.errors:
                raise RuntimeError(f"the Ray overhead trial with {workers} workers failed: {grid.errors[0]}")
            times = json.loads((folder / "times.json").read_text())
            iters = grid[0].metrics_dataframe["time_this_iter_s"].tolist()
            phases = _phases(t_fit, times["entered"], times["left"], done, iters)
            extra = {
                "start": phases["start"],
                "first epoch": phases["first epoch"] - ref["first epoch"],
                "other epochs": phases["other epochs"] - ref["other epochs"],
                "end": phases["end"],
            }
            wall = done - t_fit
            how = "1 worker, in the trial's process" if workers == 1 else f"{workers} workers, Ray Train"
            breakdown = ", ".join(f"{k} {v:+.1f} s" for k, v in extra.items())
            rows.append(
                single(
                    "ray",
                    None,
                    f"Tune trial ({how}) / in-process",
                    wall,
                    in_process,
                    numerator_s=wall,
                    denominator_s=in_process,
                    model=TINY_MODEL,
                    device="cpu",
                    batch_size=run.train.batch_size,
                    note=(
                        f"toy run, {epochs} epochs; what the trial adds, by phase: {breakdown} "
                        f"(in the trial after its last report {phases['left']:.1f} s); ray.init {init_s:.1f} s "
                        f"not included"
                    ),
                )
            )
    finally:
        ray.shutdown()
    return rows
