"""Fault injection: a Ray Train worker (rank 1, then rank 0) dies mid-run; the run resumes from its checkpoint.

The final history and prompts must equal an undisturbed run with the same seed. The fault comes from
the test (tests/plugins/mmap_ray_faults.py): the session's local Ray starts with that plugin on its workers'
path and a fault plan file (`fault_plan`), which each test arms before its run and disarms after.
"""

import json

import pytest
import torch
from conftest import DDP_TRAIN as DDP  # a rank dies at the start of the second epoch, resumes from the first
from conftest import TWO_TASK_RUN as RUN

from mmap_ray.distributed import WorkerSpec, fit_distributed
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import replace

pytestmark = [pytest.mark.slow, pytest.mark.faults]

CFG = TrainConfig(epochs=3, batch_size=16, lr=5e-3, warmup_steps=2)


@pytest.fixture
def clean(two_worker_run) -> dict:
    """The undisturbed two-worker run (conftest's `two_worker_run`, shared with tests/test_distributed.py)."""
    return two_worker_run[2]


def test_each_rank_killed_mid_run_recovers_with_same_results(clean, tmp_path, fault_plan):
    """Rank 1 exits (os._exit) at the start of the second epoch; the run restarts from the first epoch's
    checkpoint, and then rank 0 exits at the start of that same epoch: two failures, one per rank, each
    followed by a resume, and the result is the undisturbed run's."""
    died = {rank: tmp_path / f".rank-{rank}-failed-once" for rank in (0, 1)}
    deaths = [
        {"rank": 1, "epoch": 1, "marker": str(died[1])},
        {"rank": 0, "epoch": 1, "marker": str(died[0]), "after": str(died[1])},  # only in the restarted run
    ]
    fault_plan.write_text(json.dumps({"die": deaths}))
    try:
        hurt = fit_distributed(replace(RUN, train=DDP), tmp_path, WorkerSpec(workers=2, max_failures=2))
    finally:
        fault_plan.unlink()
    assert died[0].is_file() and died[1].is_file()  # both failures really happened
    assert died[1].stat().st_mtime_ns < died[0].stat().st_mtime_ns  # one after the other, not together
    assert [r["epoch"] for r in hurt["history"]] == [1, 2]
    for a, b in zip(clean["history"], hurt["history"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k == "predictions":  # every test image's outcome: the same images, the same answers
                assert a[k] == b[k]
            else:
                assert a[k] == pytest.approx(b[k], abs=1e-6), k
    for n, t in clean["trainable"].items():
        torch.testing.assert_close(hurt["trainable"][n], t, rtol=0, atol=1e-6)


def test_one_worker_study_trial_killed_mid_run_is_retried_by_tune_from_its_checkpoint(ray_local, fault_plan, tmp_path):
    """A one-worker trial trains in the Tune trial's process: when that process dies, Tune runs the trial
    again (max_failures), it resumes from its newest checkpoint, and the row equals an undisturbed one."""
    from mmap_ray.results import load
    from mmap_ray.study import StudyConfig, run_study

    def study(name: str) -> StudyConfig:
        return StudyConfig(
            name=name,
            storage=str(tmp_path),
            schemes=("single",),
            seeds=(0,),
            run=replace(RUN, partition=None, train=replace(CFG, checkpoint_every=1)),
            resources=WorkerSpec(cpus_per_worker=1, max_failures=1),
        )

    run_study(study("clean"), log=lambda *a: None)
    die = {"rank": 0, "epoch": 2, "marker": str(tmp_path / ".test-failed-once")}
    fault_plan.write_text(json.dumps({"die": die}))
    said: list[str] = []
    try:
        run_study(study("hurt"), log=lambda *a: said.append(" ".join(map(str, a))))
    finally:
        fault_plan.unlink()
    assert (tmp_path / ".test-failed-once").is_file()  # the trial's process really died, at the third epoch
    # one line for the failure (Tune's own traceback is off), naming the trial and what Tune does next
    [line] = [s for s in said if " failed (" in s]
    assert (
        line.startswith("trial ") and "actor died" in line and line.endswith("runs it again from its newest checkpoint")
    )
    clean, hurt = (load(tmp_path / n / "results").iloc[0] for n in ("clean", "hurt"))
    assert hurt["status"] == "TERMINATED" and hurt["epochs_run"] == 3
    for col in ["val_mean_final", "test_mean", "test_Art", "test_Product"]:
        assert hurt[col] == pytest.approx(clean[col], abs=1e-6), col
    preds = [load(tmp_path / n / "results", "predictions").sort_values(["task", "image"]) for n in ("clean", "hurt")]
    assert preds[0]["prediction"].tolist() == preds[1]["prediction"].tolist()
    epochs = [load(tmp_path / n / "results", "epochs") for n in ("clean", "hurt")]
    assert sorted(epochs[1]["epoch"]) == sorted(epochs[0]["epoch"])  # no epoch's rows twice after the retry
