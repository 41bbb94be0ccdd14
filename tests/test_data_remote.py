"""A dataset folder in object storage (a real moto S3-protocol server, real pyarrow): push, stage per node,
load, train from it, and refuse what does not match its manifest."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO
from test_data_folders import make_domainnet, make_tree, split_of

from mmap_ray.build import run_task_names
from mmap_ray.cli import main
from mmap_ray.config import DataConfig
from mmap_ray.data.folders import FolderDataConfig, load_folder_tasks, task_names
from mmap_ray.data.manifest import MANIFEST, Manifest
from mmap_ray.data.remote import CACHE_ENV, COMPLETE, ManifestMismatch, cache_folder, push, stage
from mmap_ray.storage import location

CLASSES = ("Alarm_Clock", "Desk_Lamp")  # 6 images per class: the fewest that give every split one
FAST = ["--pretrained", "none", "--n-tokens", "2", "--epochs", "1", "--batch-size", "16", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _quiet_s3_server():
    """The moto server logs every request to stderr, where the CLI's one error line is looked for."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """This node's dataset cache, empty for each test."""
    folder = tmp_path / "node-cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def office(tmp_path) -> Path:
    return make_tree(tmp_path / "OfficeHomeDataset", classes=CLASSES, n=6)


@pytest.fixture
def uri(s3, request) -> str:
    """A fresh prefix in the moto bucket for this test, with the endpoint in the URI's query."""
    base, _ = s3
    return base.format(prefix=f"datasets/{request.node.name}/OfficeHomeDataset")


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def one_line_error(capsys, needle: str) -> None:
    """The command's stderr holds one error line (beside progress notes), with `needle` in it, no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mmap-ray ")]  # notes start "mmap-ray: "
    assert len(errors) == 1 and needle in errors[0] and ": error: " in errors[0] and "Traceback" not in err, err


def test_push_stage_and_load_give_the_local_dataset(office, uri, capsys):
    assert main(["data", "push", str(office), uri]) == 0
    assert "pushed 48 files" in capsys.readouterr().out
    manifest = Manifest.from_json((location(uri) / MANIFEST).read_bytes(), uri)
    assert main(["data", "check", uri]) == 0
    assert "48 files, " in capsys.readouterr().out
    assert set(manifest.files) == set(files_of(office)) and manifest.folders() == (
        "Art",
        "Clipart",
        "Product",
        "Real World",
    )

    staged = stage(uri)
    assert (staged.downloaded, staged.kept) == (48, 0)
    assert staged.root.name == "OfficeHomeDataset" and files_of(staged.root) == files_of(office)
    assert json.loads((cache_folder(location(uri)) / COMPLETE).read_text())["uri"] == location(uri).uri

    remote = load_folder_tasks(FolderDataConfig("office-home", uri, shots=3))  # the loader stages it itself
    local = load_folder_tasks(FolderDataConfig("office-home", office, shots=3))
    assert [t.name for t in remote] == [t.name for t in local] == ["Art", "Clipart", "Product", "RealWorld"]
    for r, loc in zip(remote, local):
        assert r.class_names == loc.class_names
        assert split_of(r, staged.root) == split_of(loc, office)  # the same images in the same splits
    # the driver's cheap check reads the manifest only: task names, and a missing domain named
    assert run_task_names(DataConfig("office-home", uri)) == ["Art", "Clipart", "Product", "RealWorld"]
    with pytest.raises(FileNotFoundError, match=r"domain 'Sketch' has no folder: expected s3://.*/Sketch"):
        run_task_names(DataConfig("office-home", uri, domains=("Art", "Sketch")))


@pytest.mark.parametrize(
    "layout, lists, domains",
    [("domainnet", "splits", ("clipart", "real")), ("minidomainnet", "splits_mini", ("clipart", "painting"))],
)
def test_official_split_lists_are_found_in_the_manifest(layout, lists, domains, tmp_path, s3, request):
    """The driver's check finds the domains of list-based layouts from the manifest, as from the folder."""
    root = make_domainnet(tmp_path / layout, domains, ("ant", "bee"), 6, 2, tmp_path / layout / lists)
    uri = s3[0].format(prefix=f"datasets/{request.node.name}/{layout}")
    push(root, uri, log=lambda _: None)
    assert task_names(FolderDataConfig(layout, uri)) == task_names(FolderDataConfig(layout, root)) == list(domains)
    assert [t.name for t in load_folder_tasks(FolderDataConfig(layout, uri))] == list(domains)


def test_a_second_stage_downloads_nothing_and_a_new_push_only_what_changed(office, uri):
    push(office, uri)
    first = stage(uri)
    before = mtimes(first.root)
    again = stage(uri)
    assert (again.downloaded, again.kept) == (0, 48) and mtimes(again.root) == before

    changed = "Art/Alarm_Clock/Alarm_Clock_000.jpg"
    (office / changed).write_bytes((office / "Art/Desk_Lamp/Desk_Lamp_000.jpg").read_bytes())
    (office / "Clipart/Desk_Lamp/Desk_Lamp_005.jpg").unlink()
    push(office, uri)
    update = stage(uri)
    assert (update.downloaded, update.kept) == (1, 46)
    assert files_of(update.root) == files_of(office)  # the removed image is gone from the copy too
    assert {k for k, v in mtimes(update.root).items() if v != before[k]} == {changed}


@pytest.mark.parametrize("bad", [b"truncated", None], ids=["size", "content"])
def test_a_corrupted_object_is_refused_and_nothing_is_marked_complete(office, uri, bad, tmp_path, capsys):
    push(office, uri)
    rel = "Product/Desk_Lamp/Desk_Lamp_003.jpg"
    good = (office / rel).read_bytes()
    (location(uri) / rel).write_bytes(bad or bytes([good[0] ^ 1]) + good[1:])  # shorter, or same size
    with pytest.raises(ManifestMismatch) as e:
        stage(uri)
    message = str(e.value)
    assert message.startswith(f"{rel} in s3://") and f"expected {len(good)} bytes with sha256" in message
    assert f"got {len(bad or good)} bytes" in message and "mmap-ray data push" in message
    folder = cache_folder(location(uri))
    assert not (folder / COMPLETE).exists()
    assert not list(folder.rglob("*.part"))  # the bad download was not left behind

    # the run fails at load time, in one line, and a fixed push stages the rest
    assert main(["train", *FAST, "--dataset", "office-home", "--root", uri, "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, f"{rel} in {location(uri)} does not match the dataset's manifest")
    push(office, uri)
    assert stage(uri).downloaded >= 1 and (folder / COMPLETE).exists()


def test_concurrent_stagers_on_one_node_make_one_correct_copy(office, uri):
    push(office, uri)
    start, results = threading.Barrier(3), []

    def stager() -> None:
        start.wait()
        results.append(stage(uri, threads=4, log=lambda _: None))

    threads = [threading.Thread(target=stager) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.downloaded for r in results) == [0, 0, 48]  # one downloaded; the others waited, then reused
    assert len({r.root for r in results}) == 1 and files_of(results[0].root) == files_of(office)


def test_train_from_the_bucket_end_to_end(office, uri, tmp_path, capsys):
    push(office, uri)
    out = tmp_path / "run"
    argv = ["train", *FAST, "--dataset", "office-home", "--root", uri, "--shots", "2", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test"]) == {"Art", "Clipart", "Product", "RealWorld", "mean"}
    assert json.loads((out / "config.json").read_text())["run"]["data"]["root"] == location(uri).uri  # not a path
    capsys.readouterr()
    assert main(argv) == 0  # resumed: the same config (the URI, not a node's cache path), nothing downloaded
    assert "staging" not in capsys.readouterr().err


def test_bad_input_gets_one_line(office, uri, tmp_path, s3, capsys):
    base, _ = s3
    assert main(["data", "push", str(tmp_path / "nowhere"), uri]) == 2
    one_line_error(capsys, f"{tmp_path / 'nowhere'} is not a folder")
    assert main(["data", "push", str(office), str(tmp_path / "copy")]) == 2
    one_line_error(capsys, "is not an object-storage URI; give s3://BUCKET/PREFIX")
    assert main(["data", "push", str(office), "ftp://host/data"]) == 2
    one_line_error(capsys, "unsupported scheme 'ftp'")
    (tmp_path / "empty" / "Art").mkdir(parents=True)
    assert main(["data", "push", str(tmp_path / "empty"), uri]) == 2
    one_line_error(capsys, f"{tmp_path / 'empty'} holds no files")
    assert main(["data", "push", str(office), base.format(prefix="x").replace("mmap-test", "no-bucket")]) == 2
    one_line_error(capsys, "bucket 'no-bucket' does not exist")
    assert main(["train", *FAST, "--dataset", "office-home", "--root", uri, "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, f"holds no {MANIFEST}: push the dataset folder there first")
    assert main(["data", "check", uri]) == 2
    one_line_error(capsys, f"holds no {MANIFEST}")
    assert main(["data", "stage", str(office)]) == 2
    one_line_error(capsys, "is a local path")
    # a manifest is data, not trusted: a path that would leave the cache is refused before anything is written
    (location(uri) / MANIFEST).write_text(
        json.dumps(
            {
                "format": "mmap-ray-manifest",
                "version": 1,
                "files": {"../../escape.jpg": {"size": 1, "sha256": "0" * 64}},
            }
        )
    )
    assert main(["data", "stage", uri]) == 2
    one_line_error(capsys, "'../../escape.jpg' is not a plain relative path")
    assert not list(tmp_path.rglob("escape.jpg"))


def test_a_study_fails_on_a_missing_manifest_before_it_starts_ray(uri, tmp_path):
    """In a fresh process (a pytest-xdist worker may already hold the session's Ray): run_study refuses the
    data location before Ray starts and before its study folder exists."""
    code = f"""
import sys; sys.path.insert(0, {str(REPO / "tests")!r})
import ray
from conftest import TWO_TASK_RUN
from mmap_ray.config import DataConfig
from mmap_ray.fields import replace
from mmap_ray.study import StudyConfig, run_study
run = replace(TWO_TASK_RUN, data=DataConfig("office-home", {uri!r}), partition=None)
try:
    run_study(StudyConfig(name="s", storage={str(tmp_path)!r}, schemes=("single",), seeds=(0,), run=run))
except ValueError as e:
    print("refused:", e)
print("ray started:", ray.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(f"refused: StudyConfig.run.data: .* holds no {re.escape(MANIFEST)}", out.stdout), out.stdout
    assert "ray started: False" in out.stdout and not (tmp_path / "s").exists()


# The driver of the study below, in a process of its own: a Ray session started inside pytest after other
# tests' sessions can crash the whole process (Ray keeps actor handles of the earlier session).
REMOTE_STUDY_DRIVER = """
import sys
import ray
from conftest import TWO_TASK_RUN
from mmap_ray.config import DataConfig
from mmap_ray.distributed import WorkerSpec
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import replace
from mmap_ray.study import StudyConfig, run_study

uri, storage, worker_cache = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"MMAP_RAY_DATA_CACHE": worker_cache}})
run = replace(TWO_TASK_RUN, data=DataConfig("office-home", uri, domains=("Art", "Product"), shots=2),
              train=TrainConfig(epochs=1, batch_size=8), partition=None)
run_study(StudyConfig(name="remote", storage=storage, schemes=("single",), seeds=(0,), run=run,
                      resources=WorkerSpec(cpus_per_worker=1)), log=lambda *a: None)
ray.shutdown()
"""


@pytest.mark.slow
def test_a_study_trial_stages_the_dataset_on_its_own_worker(office, uri, s3, tmp_path):
    """A real local Ray whose workers have their own dataset cache (as another node would): the driver stages
    for the partition planning, the trial stages again in its worker process, and both copies are the data."""
    from mmap_ray.results import load

    push(office, uri)
    worker_cache = tmp_path / "worker-node-cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.run(
        [sys.executable, "-c", REMOTE_STUDY_DRIVER, uri, str(tmp_path / "studies"), str(worker_cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    rows = load(tmp_path / "studies" / "remote" / "results")
    assert len(rows) == 1 and (rows["status"] == "TERMINATED").all() and rows["test_mean"].between(0, 100).all()
    driver_copy = stage(uri).root  # complete already: nothing to download
    worker_copy = worker_cache / driver_copy.relative_to(driver_copy.parents[1])
    assert (worker_copy.parent / COMPLETE).is_file() and files_of(worker_copy) == files_of(office)
