"""Ray Train on a real local Ray instance: DDP equivalence, one history row format with the in-process
loop, resume, resource checks (faults: tests/faults)."""

import json
import time

import pytest
import torch
from conftest import DDP_TRAIN as DDP_CFG
from conftest import TWO_TASK_RUN as RUN

from mmap_ray.distributed import RUN_NAME, WorkerSpec, fit_distributed
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import replace

pytestmark = pytest.mark.slow


def test_two_workers_equal_one_process_with_double_batch(two_worker_run):
    _, ref, state, _ = two_worker_run
    assert set(state["trainable"]) == set(ref)
    for n, t in state["trainable"].items():
        torch.testing.assert_close(t, ref[n], rtol=0, atol=1e-5, msg=n)


def test_both_paths_write_the_same_history_rows(two_worker_run):
    """One loop, one row format: the in-process rows and the Ray rows have the same keys in the same
    order (test accuracy in the last row) and the same values, up to float summation order."""
    local, _, state, _ = two_worker_run
    ray_rows = state["history"]
    assert [list(r) for r in local] == [list(r) for r in ray_rows]
    assert {k for k in local[-1] if k.startswith("test/")} == {"test/Art", "test/Product", "test/mean"}
    for a, b in zip(local, ray_rows, strict=True):
        for k in a:
            if k in ("predictions", "test_images"):  # every test image's outcome, in order; which images
                assert a[k] == b[k]
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_rerunning_a_finished_run_resumes_instead_of_retraining(two_worker_run):
    *_, first, folder = two_worker_run  # the finished two-worker run above, run again with the same settings
    cfg = DDP_CFG
    ckpts = sorted(p.name for p in (folder / RUN_NAME).glob("checkpoint_*"))
    again = fit_distributed(replace(RUN, train=cfg), folder, WorkerSpec(workers=2))
    assert sorted(p.name for p in (folder / RUN_NAME).glob("checkpoint_*")) == ckpts  # nothing retrained
    assert again["history"] == first["history"]


def test_impossible_request_fails_fast(ray_local, tmp_path):
    start = time.time()
    with pytest.raises(ValueError, match=r"need \{'CPU': 3.0, 'GPU': 0.0\} but the Ray cluster has \{'CPU': 2.0"):
        fit_distributed(replace(RUN, train=TrainConfig(epochs=1)), tmp_path, WorkerSpec(workers=3))
    with pytest.raises(ValueError, match=r"'GPU': 2\} but the Ray cluster has \{'CPU': 2.0, 'GPU': 0\}"):
        gpus = WorkerSpec(workers=2, cpus_per_worker=0.5, gpus_per_worker=1)
        fit_distributed(replace(RUN, train=TrainConfig(epochs=1)), tmp_path, gpus)
    assert time.time() - start < 10


def test_cli_train_with_workers(ray_local, tmp_path):
    from mmap_ray.cli import main

    out = tmp_path / "run"
    run = ["--pretrained", "none", "--n-tokens", "2", "--domains", "Art,Product", "--shots", "4"]
    workers = ["--epochs", "1", "--batch-size", "16", "--workers", "2", "--cpus-per-worker", "0.5"]
    argv = ["train", *run, *workers, "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"Art", "Product", "mean"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
