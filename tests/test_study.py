"""The study end to end: job submission to a real Ray head with token auth, Parquet output, resume, bad input."""

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, STUDY, VENV_BIN, free_port, stop_ray
from conftest import study_env as _env

from mmap_ray.fields import from_dict
from mmap_ray.results import load
from mmap_ray.study import StudyConfig, program


def _ray(*args, env=None, timeout=120):
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


def _outcome(address: list[str], job_id: str) -> str:
    """A submitted job's whole log, once it has ended, and its final status line."""
    logs = _ray("job", "logs", "--follow", *address, job_id, timeout=900)
    return logs.stdout + logs.stderr + _ray("job", "status", *address, job_id).stdout


def _check_smoke_results(results: Path, schemes: set[str]) -> pd.DataFrame:
    df = load(results)
    assert len(df) == len(schemes) and set(df["scheme"]) == schemes
    assert df["trial_id"].is_unique and (df["status"] == "TERMINATED").all()
    for col, kind in (
        ("val_mean_final", "f"),
        ("test_mean", "f"),
        ("trainable_params", "i"),
        ("epochs_run", "i"),
        ("device_hours", "f"),
        ("seed", "i"),
    ):
        assert df[col].dtype.kind == kind, col
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert {"partition", "git_commit", "schema_version", "val_Art_final", "test_RealWorld"} <= set(df.columns)
    assert (df["epochs_run"] == 2).all() and df["val_mean_final"].between(0, 100).all()
    epochs = load(results, "epochs")
    assert len(epochs) == len(schemes) * 2 * 4  # trials x epochs x tasks: no pseudo-task "mean"
    assert set(epochs["task"]) == {"Art", "Clipart", "Product", "RealWorld"}
    # the epoch's mean over tasks is a column of each of its rows, in percent like val_acc
    means = epochs.groupby(["config_id", "seed", "epoch"])
    assert (means["val_acc"].mean() - means["val_mean"].first()).abs().max() < 1e-9
    last = epochs[epochs["epoch"] == 2].groupby(["config_id", "seed"])["val_mean"].first()
    assert (last - df.set_index(["config_id", "seed"])["val_mean_final"].reindex(last.index)).abs().max() < 1e-9
    # every trial's test images, one row each, keyed by (config_id, seed): they give its test accuracy back
    preds = load(results, "predictions")
    assert len(preds) == len(df) * preds.groupby(["config_id", "seed"]).size().iloc[0]
    acc = preds.groupby(["config_id", "seed", "task"], observed=True)["correct"].mean().groupby(level=[0, 1]).mean()
    merged = df.set_index(["config_id", "seed"])["test_mean"]
    assert (100 * acc.reindex(merged.index) - merged).abs().max() < 1e-9  # percent, as the console prints
    # the backbone's zero-shot accuracy on the same test images, in every row (the smoke study's backbone is
    # random, so only its range is known)
    assert df["zeroshot_mean"].between(0, 100).all() and df["zeroshot_Art"].notna().all()
    return df


@pytest.mark.slow(minutes=4)
def test_ray_job_submit_smoke_study_with_token_auth(tmp_path, auth_token):
    port, dash = free_port(), free_port()
    # a temp dir of its own: the address file there (ray_current_cluster) is not where a plain ray.init()
    # elsewhere on the machine (another test worker, a user's study) looks for a cluster to join
    temp = tempfile.mkdtemp(prefix="mmr", dir="/tmp")  # short: Ray's socket paths are limited
    start = _ray(
        "start",
        "--head",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        # ports of its own, so that a Ray already running on this machine (a user's study) neither blocks nor
        # is disturbed by this one: the job agent's default 52365 and the client server's 10001 are fixed
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--temp-dir={temp}",
    )
    assert start.returncode == 0, start.stderr
    try:
        assert auth_token.is_file()  # token authentication is on
        job = ["--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO), "--"]
        study = ["python", "studies/grouping.py", "--smoke"]
        # a relative --storage would land in Ray's temporary copy of the working dir: refused, the job fails
        # (it runs beside the next job; its outcome is read at the end)
        rel = _ray(
            "job",
            "submit",
            "--no-wait",
            "--submission-id",
            "relbar",
            *job,
            *study,
            "--name",
            "relbar",
            "--storage",
            "jobrel",
        )
        assert rel.returncode == 0, rel.stderr
        # `ray job stop` on a running study (SIGTERM, SIGKILL 3 s later): the job is STOPPED, its log ends in one
        # line, the lock is released, and the same study submitted again with --resume completes below
        storage = tmp_path / "studies"
        absolute = ["--name", "smoke", "--storage", str(storage)]
        submitted = _ray("job", "submit", "--no-wait", "--submission-id", "stopme", *job, *study, *absolute)
        assert submitted.returncode == 0, submitted.stderr
        deadline = time.monotonic() + 300
        while not (storage / "smoke" / "study.json").is_file():  # the driver holds the lock and is planning
            assert time.monotonic() < deadline, _ray("job", "logs", *job[:2], "stopme").stdout[-3000:]
            time.sleep(0.2)
        stopped = _ray("job", "stop", *job[:2], "stopme")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "Job 'stopme' was stopped" in _ray("job", "status", *job[:2], "stopme").stdout
        log = _ray("job", "logs", *job[:2], "stopme").stdout
        assert "study 'smoke' stopped by SIGTERM" in log and "continue with --resume" in log, log[-3000:]
        assert "Traceback" not in log and not (storage / "smoke" / ".lock").exists()
        # an absolute --storage (resumed), and none (the default, $MMAP_RAY_STORAGE of the head, else
        # ~/mmap-ray/studies), side by side: each lands every row, with accuracies, where the job's log says
        dflt = _ray("job", "submit", "--no-wait", "--submission-id", "dflt", *job, *study, "--name", "dflt")
        assert dflt.returncode == 0, dflt.stderr
        resumed = _ray("job", "submit", *job, *study, *absolute, "--resume", timeout=900)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
        for name, said in (("smoke", resumed.stdout + resumed.stderr), ("dflt", _outcome(job[:2], "dflt"))):
            assert "succeeded" in said.lower(), said[-3000:]
            results = Path(re.search(r"^results: (\S+)", said, re.M).group(1))
            if name == "smoke":
                assert results == storage / name / "results" and "resuming: 0 of 2 trials have results" in said
            else:
                assert results == Path(os.environ["MMAP_RAY_STORAGE"]) / name / "results"
            df = _check_smoke_results(results, {"single", "gradient"})
            assert df["test_mean"].notna().all() and (df["epochs_run"] == 2).all()
            # the job's copy of the working dir has no .git: the rows name the code by its sources' digest
            assert df["git_commit"].str.fullmatch(r"sources-[0-9a-f]{16}").all(), df["git_commit"].tolist()
        said = _outcome(job[:2], "relbar")
        assert "failed" in said.lower(), said[-3000:]
        assert "StudyConfig.storage (--storage)='jobrel' is a relative path" in said and "Traceback" not in said
        assert "pass an absolute path" in said and "results:" not in said
        no_token = _ray("job", "list", "--address", f"http://127.0.0.1:{dash}", env=_env(RAY_AUTH_MODE="disabled"))
        assert no_token.returncode != 0  # the dashboard refuses a client without the token
    finally:
        stop_ray(gcs_port=port)  # this head only, not every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_study_on_an_s3_server_end_to_end(s3, tmp_path):
    """storage_path on a real S3-protocol server: Tune state, Train checkpoints and our Parquet all land there."""
    import boto3

    base, creds = s3
    storage = base.format(prefix="studies")
    argv = [*STUDY, "--smoke", "--storage", storage, "--name", "s3"]
    out = subprocess.run(
        argv, env=_env(RAY_AUTH_MODE="disabled", **creds), capture_output=True, text=True, timeout=900, cwd=tmp_path
    )  # the report of an object-store study is written in the current folder
    assert out.returncode == 0, out.stderr[-3000:]
    results = storage.replace("/studies?", "/studies/s3/results?")
    assert results in out.stdout
    _check_smoke_results(results, {"single", "gradient"})
    # Tune's status table: the columns a researcher scans, each trial's partition in full, no config dump
    header = next(line for line in out.stdout.splitlines() if line.startswith("| Trial name"))
    columns = [c.strip() for c in header.split("|")[3:-1]]
    assert columns[:6] == ["loc", "scheme", "partition", "n_tokens", "depth", "seed"]
    assert "| Art+Clipart+Product+RealWorld |" in out.stdout and "val acc" in out.stdout
    assert "trial/run/train" not in out.stdout
    endpoint = "http://" + storage.split("endpoint_override=")[1].split("&")[0]
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="mmap-test", Prefix="studies/s3/")[
            "Contents"
        ]
    ]
    assert {"studies/s3/study.json", "studies/s3/partitions.json"} <= set(keys)
    assert any(k.startswith("studies/s3/tune/") for k in keys)  # Tune's experiment state, for --resume
    assert sum(k.endswith("/state.pt") and "/ray-train/checkpoint_" in k for k in keys) >= 2  # Train checkpoints
    assert not [k for k in keys if ".tmp" in k]
    assert "studies/s3/.lock" not in keys  # the object-store lock was taken and released
    assert (tmp_path / "s3-report" / "report.md").is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--preset", "imagenet"], "--preset 'imagenet' is not valid"),
        (["--preset", "office-home"], "needs --root"),
        (["--preset", "office-home", "--root", "/no/such/data"], "/no/such/data does not exist"),
        (["--smoke", "--gpus-per-worker", "4"], "but the Ray cluster has"),
    ],
)
def test_bad_study_settings_fail_before_any_trial(argv, needle, tmp_path, ray_local, capsys):
    """In this process, on the session's Ray (2 CPUs, no GPU); as a subprocess, the launcher's refusals are
    in tests/test_entry_points.py and a refused `ray job submit` in the job test above."""
    code = program.main([*argv, "--storage", str(tmp_path)], prog="grouping.py")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("grouping.py: error: ") and needle in err, err[-2000:]
    assert not list(tmp_path.glob("*/tune"))  # no trial was started


def test_study_config_errors():
    with pytest.raises(ValueError, match=r"fields \['schemes'\] are empty"):
        StudyConfig(schemes=())
    with pytest.raises(ValueError, match="mode='grid' is not valid"):
        StudyConfig(mode="grid")
    with pytest.raises(ValueError, match=r"StudyConfig.run.data has unknown settings \['datset'\]"):
        from_dict(StudyConfig, {"run": {"data": {"datset": "toy"}}})
    with pytest.raises(ValueError, match=r"StudyConfig.storage='hdfs://nn/x': unsupported scheme 'hdfs'"):
        StudyConfig(storage="hdfs://nn/x")
    with pytest.raises(ValueError, match=r"StudyConfig.name='a/b': use letters"):
        StudyConfig(name="a/b")
    assert StudyConfig(storage="s3://bucket/x/", name="g").study_dir == "s3://bucket/x/g"


@pytest.mark.slow
def test_search_mode_pareto_with_optuna_and_asha(tmp_path, ray_local, capsys):
    argv = [
        "--smoke",
        "--mode",
        "search",
        "--objective",
        "pareto",
        "--num-samples",
        "3",
        "--name",
        "pareto",
        "--storage",
        str(tmp_path),
    ]
    code = program.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    df = load(tmp_path / "pareto" / "results")
    assert len(df) == 3 and df["trial_id"].is_unique
    assert set(df["scheme"].astype(str)) <= {"single", "gradient"} and df["lr"].between(5e-4, 5e-3).all()
    assert df["trainable_params"].notna().all()  # the second objective was reported
    header = next(line for line in out.out.splitlines() if line.startswith("| Trial name"))
    assert {"scheme", "n_tokens", "lr"} <= {c.strip() for c in header.split("|")}
