"""Ray Train on a real local Ray instance: DDP equivalence, resume, resource checks (faults: tests/faults)."""

import json
import time

import pytest
import torch

from mmap_ray.distributed import RUN_NAME, WorkerSpec, fit_distributed
from mmap_ray.engine import TrainConfig, train
from mmap_ray.runspec import build_run, spec

pytestmark = pytest.mark.slow

RUN = spec(pretrained="none", n_tokens=2, domains="Art,Product", partition="Art|Product", shots=4)


def _trainable(state):
    return state["trainable"]


def test_two_workers_equal_one_process_with_double_batch(ray_local, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_steps=2)  # global batch 16 = 2 workers x 8
    model, tasks = build_run(RUN)
    train(model, tasks, cfg, progress=False)
    ref = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    state = fit_distributed(RUN, cfg, tmp_path / "ddp", WorkerSpec(workers=2))
    assert set(_trainable(state)) == set(ref)
    for n, t in _trainable(state).items():
        torch.testing.assert_close(t, ref[n], rtol=0, atol=1e-5, msg=n)


def test_rerunning_a_finished_run_resumes_instead_of_retraining(ray_local, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16)
    first = fit_distributed(RUN, cfg, tmp_path, WorkerSpec(workers=2))
    ckpts = sorted(p.name for p in (tmp_path / RUN_NAME).glob("checkpoint_*"))
    again = fit_distributed(RUN, cfg, tmp_path, WorkerSpec(workers=2))
    assert sorted(p.name for p in (tmp_path / RUN_NAME).glob("checkpoint_*")) == ckpts  # nothing retrained
    assert again["history"] == first["history"]


def test_impossible_request_fails_fast(ray_local, tmp_path):
    start = time.time()
    with pytest.raises(ValueError, match=r"need \{'CPU': 3.0, 'GPU': 0.0\} but the Ray cluster has \{'CPU': 2.0"):
        fit_distributed(RUN, TrainConfig(epochs=1), tmp_path, WorkerSpec(workers=3))
    with pytest.raises(ValueError, match=r"'GPU': 2\} but the Ray cluster has \{'CPU': 2.0, 'GPU': 0\}"):
        fit_distributed(RUN, TrainConfig(epochs=1), tmp_path, WorkerSpec(workers=2, cpus_per_worker=0.5, gpus_per_worker=1))
    assert time.time() - start < 10


def test_cli_train_with_workers(ray_local, tmp_path):
    from mmap_ray.cli import main

    out = tmp_path / "run"
    argv = ["train", "--pretrained", "none", "--n-tokens", "2", "--domains", "Art,Product", "--shots", "4",
            "--epochs", "1", "--batch-size", "16", "--workers", "2", "--cpus-per-worker", "0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"Art", "Product", "mean"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
