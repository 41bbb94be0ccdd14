"""Fault injection on whole studies: the driver killed mid-study, a trial that diverges (NaN loss)."""

import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from conftest import STUDY, VENV_BIN, study_env as _env
from mmap_ray.distributed import NAN_ENV
from mmap_ray.results import load

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_driver_killed_mid_study_resumes_with_every_trial_once(tmp_path):
    storage = tmp_path / "studies"
    argv = [*STUDY, "--smoke", "--storage", str(storage), "--name", "resume", "--seeds", "0", "1"]
    env = _env(RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = storage / "resume" / "results" / "trials"
    deadline = time.time() + 600
    while time.time() < deadline and not list(results.glob("*/*.parquet")):
        time.sleep(2)
    assert list(results.glob("*/*.parquet")), "no trial finished in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-study
    proc.wait()
    subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    done_before = len(list(results.glob("*/*.parquet")))
    assert done_before < 4
    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    df = load(storage / "resume" / "results")
    assert len(df) == 4 and df["trial_id"].is_unique  # 2 schemes x 2 seeds, each exactly once
    assert sorted(zip(df["scheme"].astype(str), df["seed"], strict=True)) == [
        ("gradient", 0), ("gradient", 1), ("single", 0), ("single", 1)]  # fmt: skip
    files = [p for p in (storage / "resume" / "results").rglob("*") if p.is_file()]
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in files)  # no temp file left behind


def test_diverging_trial_is_recorded_as_errored_and_the_study_goes_on(tmp_path):
    """Seed 1 produces NaN logits from its second epoch: that trial errors with the reason, seed 0 finishes."""
    argv = [*STUDY, "--smoke", "--storage", str(tmp_path), "--name", "nan", "--seeds", "0", "1"]
    out = subprocess.run(argv, env=_env(RAY_AUTH_MODE="disabled", **{NAN_ENV: "1"}), capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    df = load(tmp_path / "nan" / "results").set_index(["scheme", "seed"]).sort_index()
    assert len(df) == 4  # every trial has its row, errored or not
    for scheme in ("single", "gradient"):
        ok, bad = df.loc[(scheme, 0)], df.loc[(scheme, 1)]
        assert ok["status"] == "TERMINATED" and ok["error"] == "" and ok["epochs_run"] == 2
        assert bad["status"] == "ERROR" and bad["epochs_run"] == 1  # the epoch before the divergence is kept
        assert "FloatingPointError: training loss is nan at step 0 of the epoch" in bad["error"]
        assert pd.isna(bad["test_mean"]) and not pd.isna(bad["val_mean_final"])
    epochs = load(tmp_path / "nan" / "results", "epochs")
    assert epochs["val_acc"].notna().all() and epochs["train_loss"].map(float).notna().all()  # no NaN was reported
    assert "2 trials errored" in out.stdout
