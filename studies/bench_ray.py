"""The benchmark's Ray figure: one small toy trial through Tune + Train (1 and 2 workers) / the same run
in-process, measured with the study's own trial pattern (a Tune trial whose driver runs a Ray Train run).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bench_table import row

from mmap_ray.backbone import TINY_MODEL


def _trial(config: dict) -> None:
    """A Tune trial whose driver runs the toy run through Ray Train (the study's trial_driver pattern)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from mmap_ray.config import RunConfig
    from mmap_ray.distributed import WorkerSpec, fit_distributed
    from mmap_ray.fields import from_dict

    run, workers = from_dict(RunConfig, config["run"]), from_dict(WorkerSpec, config["workers"])
    fit_distributed(run, Path(config["out"]), workers, callbacks=[TuneReportCallback()])


def ray_overhead(out: Path, epochs: int) -> list[dict]:
    """Wall time of one toy run through Tune + Train (1 and 2 workers) / in-process (build, train, test)."""
    # Over 60 lines on purpose: the in-process reference and both Ray runs are timed in one place, in order.
    import ray
    from ray import tune

    from mmap_ray.build import build_run
    from mmap_ray.config import RunConfig
    from mmap_ray.engine import TrainConfig, evaluate, train
    from mmap_ray.fields import to_dict
    from mmap_ray.toyclip import pretrained_toy_clip

    run = RunConfig(train=TrainConfig(epochs=epochs, batch_size=64))
    cfg = run.train
    pretrained_toy_clip()  # build the cached toy CLIP now, outside every timing
    t0 = time.perf_counter()
    model, tasks = build_run(run)
    train(model, tasks, cfg, progress=False)
    evaluate(model, tasks, "test")
    in_process = time.perf_counter() - t0

    ncpu = os.cpu_count() or 1
    t0 = time.perf_counter()
    # One logical CPU more than the cores, so the trial driver's 0.01 CPU and the workers' whole cores fit.
    ray.init(address="local", num_cpus=ncpu + 1, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows = []
    try:
        for workers in (1, 2):
            folder = (out / "ray" / f"workers{workers}").resolve()
            shutil.rmtree(folder, ignore_errors=True)  # a fresh run: never resume an old checkpoint
            config = {
                "run": to_dict(run),
                "out": str(folder / "train"),
                "workers": {"workers": workers, "cpus_per_worker": ncpu / workers, "max_failures": 0},
            }
            tuner = tune.Tuner(
                tune.with_resources(_trial, {"cpu": 0.01}),
                param_space=config,
                run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0),
            )
            t0 = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - t0
            if grid.errors:
                raise RuntimeError(f"the Ray overhead trial with {workers} workers failed: {grid.errors[0]}")
            rows.append(
                row(
                    "ray",
                    None,
                    f"Tune + Train ({workers} worker{'s' * (workers > 1)}) / in-process",
                    ratio_min=wall / in_process,
                    ratio_median=wall / in_process,
                    ratio_max=wall / in_process,
                    repeats=1,
                    numerator_s=wall,
                    denominator_s=in_process,
                    model=TINY_MODEL,
                    device="cpu",
                    batch_size=cfg.batch_size,
                    note=f"toy run, {epochs} epochs; ray.init {init_s:.1f} s not included",
                )
            )
    finally:
        ray.shutdown()
    return rows
