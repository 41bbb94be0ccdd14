"""Fault injection: a Ray Train worker (rank 0 or rank 1) dies mid-run; the run resumes from its checkpoint.

The final history and prompts must equal an undisturbed run with the same seed.
"""

import pytest
import torch

from mmap_ray.distributed import FAIL_ENV, FAIL_RANK_ENV, WorkerSpec, fit_distributed
from mmap_ray.engine import TrainConfig
from mmap_ray.runspec import spec

pytestmark = [pytest.mark.slow, pytest.mark.faults]

RUN = spec(pretrained="none", n_tokens=2, domains="Art,Product", partition="Art|Product", shots=4)
CFG = TrainConfig(epochs=3, batch_size=16, lr=5e-3, warmup_steps=2)


@pytest.fixture(scope="module")
def clean(ray_local, tmp_path_factory):
    return fit_distributed(RUN, CFG, tmp_path_factory.mktemp("clean"), WorkerSpec(workers=2))


@pytest.mark.parametrize("rank", [0, 1])
def test_worker_killed_mid_run_recovers_with_same_results(clean, rank, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ENV, "1")  # the rank exits (os._exit) once, at the start of the second epoch
    monkeypatch.setenv(FAIL_RANK_ENV, str(rank))
    hurt = fit_distributed(RUN, CFG, tmp_path, WorkerSpec(workers=2, max_failures=1))
    assert (tmp_path / ".test-failed-once").is_file()  # the failure really happened
    assert [r["epoch"] for r in hurt["history"]] == [1, 2, 3]
    for a, b in zip(clean["history"], hurt["history"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
    for n, t in clean["trainable"].items():
        torch.testing.assert_close(hurt["trainable"][n], t, rtol=0, atol=1e-6)
