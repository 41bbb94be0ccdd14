"""Fault injection on whole studies: a rerun, a second driver, the driver killed or interrupted mid-study,
planted pickles, secrets in the environment, a trial that diverges (NaN loss)."""

import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import STUDY, stop_ray, terminal_signals
from conftest import study_env as _env

from mmap_ray.results import load
from mmap_ray.study import program as grouping

pytestmark = [pytest.mark.slow, pytest.mark.faults]
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAMARKERID0000",
    "AWS_SECRET_ACCESS_KEY": "marker-secret-key-7f3e9a",
    "AWS_SESSION_TOKEN": "marker-session-token-51c2",
}


class _Planted:
    """A pickle that creates a file when it is loaded: what an attacker would put in a shared bucket."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _wait_for(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(1)
    assert predicate(), f"{what} did not happen in {timeout} s"


def _rows(results: Path) -> list[Path]:
    return sorted((results / "trials").glob("*.parquet"))


def _ray_sessions() -> set[str]:
    return set(glob.glob("/tmp/ray/session_2*"))


def _unfinished_checkpoints(study: Path) -> list[Path]:
    """The newest checkpoint folder of each trial run under study/train that has no row yet."""
    finished = {p.stem for p in _rows(study / "results")}
    runs = [r for r in (study / "train").glob("*") if r.name not in finished] if (study / "train").is_dir() else []
    return [max(found) for r in runs if (found := sorted((r / "ray-train").glob("checkpoint_*/state.pt")))]


def _plant_pickles(study: Path, evil: bytes) -> None:
    """A pickle that would run code, in every place of the study folder a pickle could be read from: Tune's
    state (tuner.pkl, the searcher, the experiment-state files), and files named like ours."""
    for path in [
        "tune/tuner.pkl",
        *(str(p.relative_to(study) / "tuner.pkl") for p in (study / "tune").iterdir()),
        "tune/searcher-state.pkl",
        "partitions.pkl",
        "results/trials/x.pkl",
    ]:
        (study / path).parent.mkdir(parents=True, exist_ok=True)
        (study / path).write_bytes(evil)
    for exp in (study / "tune").iterdir():
        for f in exp.glob("experiment_state*.json"):
            f.write_bytes(evil)


@pytest.mark.slow(minutes=4)
def test_killed_driver_second_driver_sigterm_ctrl_c_and_planted_pickles_keep_one_row_per_config_and_seed(
    tmp_path, capsys
):
    """One study through every way a driver ends, each followed by --resume: killed (its lock left behind), a
    second driver refused meanwhile, SIGTERM (what `ray job stop` sends), Ctrl-C; pickles planted in the folder
    (Tune's state, an unfinished trial's newest checkpoint) are never loaded. Every stop is one line, the last
    resume completes the study with each (config, seed) row exactly once, a plain rerun changes nothing, and no
    secret from the environment lands in any file."""
    storage = tmp_path / "studies"
    study, results = storage / "int", storage / "int" / "results"
    # 12 epochs and one trial at a time: trials long enough (several seconds each) that a stop after a new row
    # finds the next one running (with all 4 at once finishing together, every row could be there first)
    argv = [*STUDY, "--smoke", "--storage", str(storage), "--name", "int", "--seeds", "0", "1", "--epochs", "12"]
    argv += ["--max-concurrent-trials", "1"]
    env = _env(RAY_AUTH_MODE="disabled", **SECRETS)
    sessions_before = _ray_sessions()
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(_Planted(marker))

    def start(*extra: str) -> subprocess.Popen:
        pipe = subprocess.PIPE
        return subprocess.Popen(
            [*argv, *extra],
            env=env,
            stdout=pipe,
            stderr=pipe,
            text=True,
            start_new_session=True,
            preexec_fn=terminal_signals,
        )

    # 1. the driver is killed mid-study, leaving its lock behind; a second driver meanwhile is refused
    proc = start()
    _wait_for(lambda: (study / "study.json").exists(), "the study start")
    assert grouping.main([*argv[len(STUDY) :], "--resume"], prog="grouping.py") == 2  # in this process: a refusal
    second = capsys.readouterr().err
    assert f"in use by another driver (pid {proc.pid} on host" in second, second[-3000:]
    _wait_for(lambda: _rows(results), "a finished trial")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    stop_ray(driver_pid=proc.pid)  # only the Ray this driver started, not every Ray on the machine
    assert 1 <= len(_rows(results)) < 4 and (study / ".lock").exists(), _rows(results)
    _plant_pickles(study, evil)

    # 2. --resume takes the dead driver's lock over; SIGTERM then ends it in one line within `ray job stop`'s
    # 3 s grace (exit 143), the lock released
    first = len(_rows(results))
    proc = start("--resume")
    _wait_for(lambda: len(_rows(results)) > first and _unfinished_checkpoints(study), "a new row and a running trial")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - sent
    stop_ray(driver_pid=proc.pid)
    assert "taking over the lock" in out + err and "that process is gone" in out + err, err[-3000:]
    assert proc.returncode == 143 and took < 3, (proc.returncode, took, err[-3000:])
    assert "stopped by SIGTERM" in err and "continue with --resume" in err and "Traceback" not in err, err[-3000:]
    assert not (study / ".lock").exists()  # released: the next resume needs no takeover

    # 3. the unfinished trial's newest checkpoint becomes the pickle: --resume moves it aside (naming it), never
    # loads it, and continues that trial from an earlier checkpoint or afresh; Ctrl-C then stops it (exit 130)
    [newest] = _unfinished_checkpoints(study)
    # a folder named later than any the trial could still write (its process dies with its raylet, a moment
    # after the driver): the planted file is the newest checkpoint whatever the dying process does
    planted = newest.parent.with_name("checkpoint_9999-12-31_23-59-59.999999") / "state.pt"
    planted.parent.mkdir()
    planted.write_bytes(evil)
    second_stop = len(_rows(results))
    proc = start("--resume")
    _wait_for(lambda: len(_rows(results)) > second_stop, "a trial finished after the resume")
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=300)
    stop_ray(driver_pid=proc.pid)
    assert proc.returncode == 130, err[-3000:]
    aside = planted.parent.parent / f"unreadable-{planted.parent.name}"
    assert f"{planted}" in out and f"moved it aside to {aside}" in out, out[-3000:]
    assert (aside / "state.pt").is_file()
    done = len(_rows(results))
    assert f"interrupted: {done} of 4 trials have results; continue with --resume" in err
    assert "tables and figures: mmap-ray report" not in out and "report:" not in out  # no partial leaderboard

    # 4. the last --resume completes the study: every (config, seed) exactly once, nothing unpickled
    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {done} of 4 trials have results; running {4 - done}" in resumed.stdout
    assert not marker.exists()  # nothing from the study folder was unpickled
    df = load(results)
    assert len(df) == 4 and len(_rows(results)) == 4  # 2 schemes x 2 seeds, each exactly once
    assert not df.duplicated(["config_id", "seed"]).any() and (df["status"] == "TERMINATED").all()
    assert sorted(zip(df["scheme"].astype(str), df["seed"], strict=True)) == [
        ("gradient", 0),
        ("gradient", 1),
        ("single", 0),
        ("single", 1),
    ]
    assert not (study / ".lock").exists()  # released at the end

    # 5. the same command without --resume (`make run` twice) is refused and changes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in _rows(results)}
    assert grouping.main(argv[len(STUDY) :], prog="grouping.py") == 2
    rerun = capsys.readouterr().err
    assert "study 'int' already exists" in rerun and "with 4 trial results" in rerun, rerun[-3000:]
    assert {p: p.stat().st_mtime_ns for p in _rows(results)} == mtimes

    files = [p for p in results.rglob("*") if p.is_file() and p.suffix != ".pkl"]
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in files)  # no temp file left behind
    leaked = []  # no secret from the environment in any file we caused to be written
    for root in [storage, *(_ray_sessions() - sessions_before)]:
        for p in Path(root).rglob("*"):
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 50_000_000:
                data = p.read_bytes()
                leaked += [f"{p}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    assert not leaked, leaked


def test_diverging_trial_is_recorded_as_errored_and_every_client_reads_the_folder(tmp_path, capsys, fault_plan):
    """Seed 1 produces NaN logits from its second epoch: that trial errors with the reason, seed 0 finishes.
    (In this process, on the session's Ray, whose workers read the fault plan.)"""
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads

    fault_plan.write_text(json.dumps({"nan_seed": 1}))
    try:
        code = grouping.main(["--smoke", "--storage", str(tmp_path), "--name", "nan", "--seeds", "0", "1"])
    finally:
        fault_plan.unlink()
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
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
    assert "2 trials errored" in out.out
    said = [ln for ln in out.out.splitlines() if " errored: " in ln]  # one line each as it errors, no traceback
    assert len(said) == 2 and all("FloatingPointError: training loss is nan" in ln for ln in said), said
    assert "Traceback" not in out.out + out.err
    folder = str(tmp_path / "nan" / "results" / "trials")  # the documented readers, on a folder with failed trials
    assert len(pd.read_parquet(folder)) == 4
    assert pads.dataset(folder, partitioning="hive").to_table().num_rows == 4
    sql = f"select count(*), count(test_mean) from read_parquet('{folder}/*.parquet', hive_partitioning=true)"
    assert duckdb.sql(sql).fetchall() == [(4, 2)]
    assert pl.scan_parquet(folder, hive_partitioning=True).collect()["test_mean"].null_count() == 2

    # a study whose every trial errored exits 1 with one line, not 0 with an empty leaderboard: the summary
    # of the same results with the finished rows taken out (grouping.py's last step, as main calls it)
    failed = tmp_path / "nan-failed" / "results"
    shutil.copytree(tmp_path / "nan" / "results", failed)
    for path in (failed / "trials").glob("*.parquet"):
        if pd.read_parquet(path)["status"].iloc[0] == "TERMINATED":
            path.unlink()
    assert grouping.summarise(failed) == 1
    err = capsys.readouterr().err
    assert f"none of the 2 trials produced an accuracy; their errors are in the `error` column of {failed}" in err
