"""Storage locations (local and a real S3-protocol server) and the versioned Parquet results on them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port

from mmap_ray.results import SCHEMA_KEY, SCHEMA_VERSION, load, write_table
from mmap_ray.storage import check_reachable, location

ROWS = [{"trial_id": "t1", "status": "TERMINATED", "val_mean_final": 0.5, "seed": 0, "schema_version": SCHEMA_VERSION}]


def test_local_location_is_absolute_and_writes_atomically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = location("runs/studies") / "s" / "study.json"
    assert loc.is_local and loc.path == str(tmp_path / "runs" / "studies" / "s" / "study.json")
    loc.write_text("one")
    loc.write_text("two")
    assert loc.read_text() == "two"
    assert sorted(p.name for p in (tmp_path / "runs" / "studies" / "s").iterdir()) == ["study.json"]  # no temp files


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("s3:///x", "names no bucket"),
        ("s3://b/x?access_key=AK&secret_key=SK", "carries credentials (['access_key', 'secret_key'])"),
    ],
)
def test_bad_storage_uris_name_the_field(uri, needle):
    with pytest.raises(ValueError, match="storage_path=") as e:
        location(uri)
    assert needle in str(e.value)


def test_s3_read_write_glob_and_results_roundtrip(s3):
    base, _ = s3
    root = location(base.format(prefix="unit"))
    check_reachable(root)
    (root / "a" / "x.json").write_text("{}")
    assert (root / "a" / "x.json").read_text() == "{}" and (root / "a").is_dir() and not (root / "b").exists()
    write_table(root / "results", "trials", "a-s0", ROWS)
    write_table(root / "results", "trials", "b-s0", [{**ROWS[0], "trial_id": "t2"}])
    write_table(root / "results", "trials", "b-s0", [{**ROWS[0], "trial_id": "t2", "val_mean_final": 0.75}])
    df = load(root / "results")  # the URI string works as well as the Location
    assert sorted(df["trial_id"]) == ["t1", "t2"]
    assert df.set_index("trial_id").loc["t2", "val_mean_final"] == 0.75  # rewritten, not duplicated
    assert [f.name for f in (root / "results" / "trials").glob("*")] == ["a-s0.parquet", "b-s0.parquet"]


def test_missing_bucket_and_unreachable_endpoint_fail_clearly(s3):
    base, _ = s3
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        check_reachable(location(base.format(prefix="x").replace("mmap-test", "no-such-bucket")))
    with pytest.raises(ValueError, match="cannot reach the object store: .*connect_timeout"):
        check_reachable(location(base.format(prefix="x") + "&connect_timeout=1"))  # not an option pyarrow knows
    with pytest.raises(ValueError, match="cannot reach the object store"):
        check_reachable(location("s3://mmap-test/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"))


def test_newer_schema_is_refused_with_the_version(tmp_path):
    path = write_table(tmp_path, "trials", "t1", ROWS)
    meta = pq.read_table(path.path).schema.metadata
    assert meta[SCHEMA_KEY] == str(SCHEMA_VERSION).encode()
    newer = pa.Table.from_pylist([{**ROWS[0], "schema_version": SCHEMA_VERSION + 1}])
    pq.write_table(newer.replace_schema_metadata({SCHEMA_KEY: str(SCHEMA_VERSION + 1).encode()}), path.path)
    with pytest.raises(
        ValueError,
        match=rf"schema v{SCHEMA_VERSION + 1}, written by a newer mmap-ray; this one reads up to v{SCHEMA_VERSION}",
    ):
        load(tmp_path)


def test_v1_layout_files_without_the_metadata_key_read_as_version_1(tmp_path):
    (tmp_path / "epochs" / "scheme=single").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"trial_id": "t1", "epoch": 1, "task": "Art", "val_acc": 0.5}]),
        tmp_path / "epochs" / "scheme=single" / "t1.parquet",
    )
    df = load(tmp_path, "epochs")
    assert list(df["trial_id"]) == ["t1"] and list(df["scheme"]) == ["single"]


def test_v5_files_read_in_percent_with_the_epoch_mean_as_a_column(tmp_path):
    """Before v6 accuracies were fractions and the epochs table had rows of a pseudo-task "mean"."""

    def v5(table: str, rows: list[dict]) -> None:
        (tmp_path / table).mkdir()
        arrow = pa.Table.from_pylist(rows)
        pq.write_table(arrow.replace_schema_metadata({SCHEMA_KEY: b"5"}), tmp_path / table / "c-s0.parquet")

    ident = {"study": "old", "config_id": "c", "seed": 0, "trial_id": "t"}
    v5(
        "trials",
        [
            {
                **ident,
                "schema_version": 5,
                "test_mean": 0.8,
                "test_Art": 0.7,
                "val_Art_best": 0.9,
                "val_mean_final": 0.85,
                "zeroshot_mean": 0.25,
                "wall_s": 3.0,
                "git_commit": "x",
                "mmap_ray": "0",
            }
        ],
    )
    v5(
        "epochs",
        [
            {**ident, "epoch": e, "task": t, "val_acc": a + e / 10, "train_loss": 1.0, "test_acc": None}
            for e in (1, 2)
            for t, a in (("Art", 0.3), ("Clipart", 0.5), ("mean", 0.4))
        ],
    )
    trials = load(tmp_path)
    assert trials[["test_mean", "test_Art", "val_Art_best", "val_mean_final", "zeroshot_mean"]].iloc[0].tolist() == (
        pytest.approx([80, 70, 90, 85, 25])
    )
    assert trials["wall_s"].iloc[0] == 3.0  # not an accuracy: unchanged
    epochs = load(tmp_path, "epochs").sort_values(["epoch", "task"])
    assert list(epochs["task"]) == ["Art", "Clipart"] * 2  # "mean" is no task any more
    assert epochs["val_acc"].tolist() == pytest.approx([40, 60, 50, 70])
    assert epochs["val_mean"].tolist() == pytest.approx([50, 50, 60, 60])


def test_object_store_lost_mid_study_gives_a_storage_error(s3):
    """The server goes away between two writes: the second raises StorageError naming the object."""
    import boto3
    from moto.server import ThreadedMotoServer

    from mmap_ray.storage import StorageError

    base, _ = s3
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    uri = f"s3://lost/x?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    root = location(uri)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="lost")
    write_table(root, "trials", "t1", ROWS)
    server.stop()
    with pytest.raises(StorageError, match=r"cannot write s3://lost/x/trials/t2.parquet\?endpoint_override"):
        write_table(root, "trials", "t2", ROWS)
