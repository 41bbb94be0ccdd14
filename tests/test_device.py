"""--device on every command (issue 20, part 1), on a machine without CUDA: 'auto' and 'cpu' train here,
'cuda' is refused with one line before anything is built or written."""

import json

import pytest
import torch

from mmap_ray.cli import main
from mmap_ray.config import RunConfig
from mmap_ray.distributed import WorkerSpec
from mmap_ray.engine import TrainConfig, resolve_device
from mmap_ray.study import StudyConfig

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
FAST = ["--pretrained", "none", "--n-tokens", "2", "--epochs", "1", "--batch-size", "16", "--no-progress"]
ONE_TASK = ["--domains", "Art", "--shots", "2"]


def test_auto_and_cpu_resolve_to_the_cpu_and_cuda_is_refused_naming_the_setting():
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"TrainConfig.device='cuda' but this process sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("command", ["train", "eval", "group"])
def test_every_command_refuses_cuda_without_a_gpu_before_writing(command, tmp_path, capsys):
    out = tmp_path / "out"
    options = FAST if command == "train" else ["--pretrained", "none"]
    assert main([command, *options, *ONE_TASK, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device='cuda' but this process sees no CUDA device" in err[0], err
    assert not out.exists()


def test_eval_of_a_run_takes_device_as_how_it_runs_not_as_a_setting_it_would_ignore(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, *ONE_TASK, "--device", "cpu", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", "--run", str(run), "--device", "cpu", "--out", str(tmp_path / "acc.json")]) == 0
    assert json.loads((tmp_path / "acc.json").read_text()) == summary["test"]


def test_a_study_asking_for_cuda_must_reserve_gpus_for_its_trials():
    with pytest.raises(ValueError, match=r"device='cuda' but resources.gpus_per_worker=0: trials reserve no GPU"):
        StudyConfig(run=RunConfig(train=TrainConfig(device="cuda")))
    StudyConfig(run=RunConfig(train=TrainConfig(device="cuda")), resources=WorkerSpec(gpus_per_worker=0.5))
