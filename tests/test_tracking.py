"""Experiment tracking (issue 20, part 5): a study with --tracking tensorboard mlflow writes every trial's
per-epoch rows to TensorBoard event files and to an MLflow file store, read back here with real readers."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import STUDY
from conftest import study_env as _env

from mmap_ray.results import load
from mmap_ray.storage import location
from mmap_ray.study import StudyConfig
from mmap_ray.study.tracking import check_tracking, mlflow_store


def _tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard event file: the TFRecord framing read here, the Event protos by
    tensorboardX's own protobuf classes."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos, out = path.read_bytes(), 0, {}
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + length])  # after the length and its crc
        pos += 12 + length + 4  # and the data's crc
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


@pytest.mark.slow
def test_study_tracks_every_epoch_in_tensorboard_and_mlflow(tmp_path):
    import mlflow

    argv = [*STUDY, "--smoke", "--storage", str(tmp_path), "--name", "tracked", "--tracking", "tensorboard", "mlflow"]
    out = subprocess.run(argv, env=_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = load(tmp_path / "tracked" / "results")
    epochs = load(tmp_path / "tracked" / "results", "epochs")
    events = sorted((tmp_path / "tracked" / "tune").rglob("events.out.tfevents.*"))
    assert len(events) == len(rows) == 2
    for path in events:
        scalars = _tensorboard_scalars(path)
        val = [v for _, v in sorted(scalars["ray/tune/val/mean"])]
        assert len(val) == 2  # one point per epoch
        # the same values as the Parquet epochs table of one of the trials
        per_trial = epochs[epochs["task"] == "mean"].groupby("config_id", observed=True)["val_acc"].apply(list)
        assert any(val == pytest.approx(v, abs=1e-6) for v in per_trial)
    client = mlflow.MlflowClient(tracking_uri=mlflow_store(location(tmp_path / "tracked")))
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 2
    finals = sorted(r.data.metrics["test/mean"] for r in runs)
    assert finals == pytest.approx(sorted(rows["test_mean"]), abs=1e-6)
    history = client.get_metric_history(runs[0].info.run_id, "val/mean")
    assert len(history) == 2


def test_tracking_is_checked_before_anything_starts(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"StudyConfig.tracking has \['neptune'\]; valid: \['mlflow', 'tensorboard'"):
        StudyConfig(tracking=("neptune",))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"the study is in object storage .* set MLFLOW_TRACKING_URI"):
        check_tracking(("mlflow",), location("s3://bucket/studies/g"))
    check_tracking(("mlflow", "tensorboard"), location(tmp_path))  # installed (test extras), local: fine
