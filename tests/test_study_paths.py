"""A study trial's two training paths: one worker trains in the Tune trial's own process (`in_trial`),
two or more as a nested Ray Train run. Same rows, same checkpoints layout, same resume."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TWO_TASK_RUN

from mmap_ray import checkpoint
from mmap_ray.distributed import RUN_NAME, WorkerSpec
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import replace
from mmap_ray.results import load
from mmap_ray.storage import location
from mmap_ray.study import StudyConfig, run_study

pytestmark = pytest.mark.slow

RUN = replace(TWO_TASK_RUN, partition=None, train=TrainConfig(epochs=3, batch_size=16, lr=5e-3, warmup_steps=2))


def study(tmp_path, name: str, **resources) -> StudyConfig:
    """One fixed-partition trial of a seconds-scale run on random weights."""
    return StudyConfig(
        name=name,
        storage=str(tmp_path),
        schemes=("independent",),  # one group prompt per task: the partition reaches the trial
        seeds=(0,),
        run=RUN,
        resources=WorkerSpec(**resources),
    )


def _rows(tmp_path, name: str) -> pd.DataFrame:
    return load(tmp_path / name / "results").sort_values("config_id").reset_index(drop=True)


def test_one_worker_in_process_and_two_ray_train_workers_give_the_same_rows(ray_local, tmp_path):
    """Same config ids, the same accuracies up to float summation order, the same test-image outcomes;
    checkpoints in the same place (`train/<key>/ray-train/checkpoint_*`), every ceil(3/10) = 1 epoch."""
    run_study(study(tmp_path, "one", cpus_per_worker=1), log=lambda *a: None)
    run_study(study(tmp_path, "two", workers=2, cpus_per_worker=0.5), log=lambda *a: None)
    one, two = _rows(tmp_path, "one"), _rows(tmp_path, "two")
    assert list(one["config_id"]) == list(two["config_id"]) and (one["status"] == "TERMINATED").all()
    for col in ["val_mean_final", "test_mean", "test_Art", "test_Product", "zeroshot_mean"]:
        assert one[col].tolist() == pytest.approx(two[col].tolist(), abs=1e-6), col
    order = ["config_id", "task", "image"]
    preds = [load(tmp_path / n / "results", "predictions").sort_values(order) for n in ("one", "two")]
    cols = ["config_id", "task", "image", "label", "prediction", "correct"]
    assert preds[0][cols].reset_index(drop=True).equals(preds[1][cols].reset_index(drop=True))
    for key in one["config_id"] + "-s0":
        newest = checkpoint.newest(location(tmp_path / "one" / "train" / key / RUN_NAME))
        assert newest is not None and [r["epoch"] for r in checkpoint.load(newest / "state.pt")["history"]] == [1, 2, 3]
        assert len(list((tmp_path / "one" / "train" / key / RUN_NAME).glob("checkpoint_*"))) == 2  # the newest 2 kept
