"""The GPU acceptance check (issue 20, part 4) on a machine without CUDA: the script refuses in one line
before importing open_clip or Ray, and its checks run on the CPU, where the CPU is its own reference.

Each check must be able to fail: bf16 logits against the fp32 reference, prompts that moved, a check
that raises. The DDP check's two runs are `train_both_ways`, which tests/test_distributed.py runs on Ray.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO

from mmap_ray.backbone import TINY_MODEL
from mmap_ray.distributed import WorkerSpec, ddp_backend
from mmap_ray.evaluation import autocast
from mmap_ray.fields import replace

sys.path.insert(0, str(REPO / "studies"))
import gpu_checks  # noqa: E402

SCRIPT = REPO / "studies" / "gpu_check.py"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
# One toy task on random weights, one epoch of a few steps: both precisions' arms in seconds
ONE_TASK_RUN = replace(gpu_checks.DDP_RUN, **{"data.domains": ("Art",), "partition": None, "train.epochs": 1})


@no_cuda
def test_without_cuda_the_script_says_so_in_one_line_and_exits_2():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""
    err = out.stderr.splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0] and "python studies/gpu_check.py" in err[0], err


@no_cuda
def test_without_cuda_main_imports_neither_open_clip_nor_ray():
    code = (
        f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gpu_check; rc = gpu_check.main([]); "
        "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'open_clip', 'ray', 'mmap_ray', 'gpu_checks'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "[]"], out.stdout + out.stderr


@no_cuda
def test_main_prints_a_line_per_check_then_a_summary(monkeypatch, capsys):
    """main's report on a GPU node, with CUDA pretended (it cannot run here): the check fails on the device."""
    import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "no GPU")
    assert gpu_check.main(["--only", "nope"]) == 2
    assert gpu_check.main(["--only", "ddp"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("FAIL ddp: raised "), out
    assert out[1].startswith("summary: 0/1 checks passed on no GPU, torch "), out


def test_logits_agree_in_fp32_and_bf16_logits_fail():
    same = gpu_checks.logits_agree("cpu", TINY_MODEL)
    assert same.passed and same.figures["max_abs_diff"] <= gpu_checks.LOGIT_ATOL
    assert same.figures["logit_scale"] == pytest.approx(1 / 0.07)  # open_clip's initial temperature
    rounded = gpu_checks.logits_agree("cpu", TINY_MODEL, precision="bf16")  # what TF32 or bf16 would do
    assert not rounded.passed and rounded.figures["max_abs_diff"] > 10 * gpu_checks.LOGIT_ATOL
    assert "bf16 on cpu" in rounded.detail and "limit 0.0001" in rounded.detail


def test_bf16_and_fp32_arms_train_apart_and_are_compared():
    verdict = gpu_checks.bf16_matches_fp32("cpu", ONE_TASK_RUN)
    f = verdict.figures
    assert f["loss_bf16"] != f["loss_fp32"]  # the precision reaches the training loop
    assert f["gap_points"] == pytest.approx(abs(f["test_bf16"] - f["test_fp32"]))
    assert verdict.passed == (f["gap_points"] <= gpu_checks.ACCURACY_POINTS)
    assert all(0 <= f[k] <= 100 for k in ("test_bf16", "test_fp32", "val_bf16", "val_fp32"))


def test_precision_names_are_checked():
    with pytest.raises(ValueError, match=r"precision='fp16' is not valid; choose one of \('auto', 'bf16', 'fp32'\)"):
        autocast(torch.device("cpu"), "fp16")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(torch.device("cpu")):  # auto: fp32 on a CPU
        assert not torch.is_autocast_enabled("cpu")


def test_step_throughput_reports_mmap_against_full_finetuning():
    verdict = gpu_checks.step_throughput("cpu", TINY_MODEL, batch_size=4, repeats=1)
    assert verdict.passed and verdict.figures["rate_ratio"] > 0
    assert verdict.figures["flop_ratio"] > 1  # full fine-tuning also computes the backbone's weight gradients
    assert "GFLOP/s achieved" in verdict.detail and "the FLOP/s" in verdict.detail


def test_trainable_gap_sees_prompts_that_moved():
    prompts = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    assert gpu_checks.trainable_gap(prompts, {k: v.clone() for k, v in prompts.items()}) == 0
    moved = {**prompts, "b": prompts["b"] + 1e-3}  # what one DDP step with summed gradients would do
    assert gpu_checks.trainable_gap(prompts, moved) == pytest.approx(1e-3, rel=1e-4)
    assert gpu_checks.trainable_gap(prompts, moved) > gpu_checks.DDP_ATOL
    assert gpu_checks.trainable_gap(prompts, {"a": prompts["a"]}) == float("inf")


def test_workers_sharing_a_gpu_use_gloo():
    """NCCL refuses two ranks on one GPU ("Duplicate GPU detected"); fractional GPUs may share one."""
    assert ddp_backend(WorkerSpec(workers=2, gpus_per_worker=0.5)) == "gloo"
    assert ddp_backend(WorkerSpec(workers=2, gpus_per_worker=1)) == "nccl"
    assert ddp_backend(WorkerSpec(workers=2)) == "gloo"


def test_a_check_that_raises_is_one_fail_line_and_prints_go_to_stderr(capsys):
    def noisy(device: str) -> gpu_checks.Verdict:
        print("chatter")
        return gpu_checks.logits_agree(device, model="no-such-model")

    verdict = gpu_checks.run_check(noisy, "cpu")
    line = gpu_checks.report_line("logits", verdict, 1.2)
    assert not verdict.passed and "\n" not in line
    assert line.startswith("FAIL logits: raised ValueError: BackboneConfig.model='no-such-model'"), line
    assert line.endswith("[1 s]")
    out, err = capsys.readouterr()
    assert out == "" and "chatter" in err
