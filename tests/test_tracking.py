"""Experiment tracking: a study with --tracking tensorboard mlflow, read back as a user would, with MLflow's
search and TensorBoard's own event reader."""

from __future__ import annotations

import pytest

from mmap_ray.results import load
from mmap_ray.storage import location
from mmap_ray.study import StudyConfig
from mmap_ray.study.tracking import check_tracking


@pytest.mark.slow
def test_study_tracks_every_trial_as_the_studys_question_in_mlflow_and_tensorboard(smoke_study):
    """A user's path: a smoke study with --tracking mlflow tensorboard, then MLflow's own search by the
    names of the Parquet columns, and TensorBoard's own reader: one run per trial, every epoch's scalars."""
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results, said_all = smoke_study  # conftest's smoke study, run with --tracking tensorboard mlflow
    study = results.parent
    uri = f"sqlite:///{study / 'mlflow.db'}"
    for said in (
        f"tracking: mlflow experiment 'smoke' at {uri}",
        f"tracking: tensorboard runs in {study / 'tensorboard'}",
    ):
        assert said_all.count(said) == 2  # where tracking goes, at the start and at the end
    assert "performance bottleneck" not in said_all  # tracking does not hold up Tune
    rows = load(study / "results").set_index("scheme", drop=False)
    epochs = load(study / "results", "epochs")
    # the epoch's mean over tasks, in percent as in the table (a column of each task's row)
    curve = epochs.groupby(["config_id", "epoch"], observed=True)["val_mean"].first().groupby(level=0).apply(list)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"], filter_string="params.scheme = 'single'")
    assert len(runs) == 1
    single = rows.loc["single"]
    run = runs.iloc[0]
    assert run["params.config_id"] == single["config_id"] and run["params.seed"] == str(single["seed"])
    assert run["params.n_tokens"] == "2" and run["params.partition"] == "Art+Clipart+Product+RealWorld"
    assert run["tags.mlflow.runName"] == f"single Art+Clipart+Product+RealWorld s0 [{single['config_id'][:8]}]"
    assert run["metrics.test/mean"] == pytest.approx(single["test_mean"], abs=1e-6)
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(run["run_id"], "val/mean")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(curve[single["config_id"]], abs=1e-6)
    every = mlflow.search_runs(experiment_names=["smoke"])
    assert len(every) == 2 and (every["status"] == "FINISHED").all()
    logged = {c.removeprefix("metrics.") for c in every.columns if c.startswith("metrics.")}
    assert {"val/mean", "val/Art", "train/loss", "lr", "test/mean"} <= logged
    assert not logged & {"n_tokens", "seed", "epochs", "config/trial"}  # no setting logged as a metric

    runs_dir = study / "tensorboard"
    assert len(list(runs_dir.iterdir())) == len(rows) == 2
    for folder in runs_dir.iterdir():
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert {"val/mean", "train/loss", "lr", "test/mean"} <= set(acc.Tags()["scalars"])
        val = [e.value for e in acc.Scalars("val/mean")]
        config_id = folder.name.rsplit("[", 1)[1].rstrip("]")
        match = [v for cid, v in curve.items() if cid.startswith(config_id)]
        assert len(match) == 1 and val == pytest.approx(match[0], rel=1e-6)  # float32 events


def test_tracking_is_checked_before_anything_starts(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"StudyConfig.tracking has \['neptune'\]; valid: \['mlflow', 'tensorboard'"):
        StudyConfig(tracking=("neptune",))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"the study is in object storage .* set MLFLOW_TRACKING_URI"):
        check_tracking(("mlflow",), location("s3://bucket/studies/g"))
    check_tracking(("mlflow", "tensorboard"), location(tmp_path))  # installed (test extras), local: fine
