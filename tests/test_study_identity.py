"""Study identity without Ray: config ids, the trial grid, start/resume rules, the lock, the results schema."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as pads
import pytest
from conftest import REPO

from mmap_ray.config import DataConfig, RunConfig
from mmap_ray.distributed import WorkerSpec
from mmap_ray.engine import TrainConfig
from mmap_ray.fields import to_dict
from mmap_ray.lock import LockHeld, acquire
from mmap_ray.results import EPOCH_SCHEMA, EPOCHS, SCHEMA_VERSION, TRIALS, load, row_key, trial_schema, write_table
from mmap_ray.storage import job_working_copy, location, resolve_storage
from mmap_ray.study import (
    AXES,
    Plan,
    StudyConfig,
    Trial,
    check_start,
    grid_trials,
    make_trial,
    search_space,
    searcher,
    trial_of,
)

TASKS = ["Art", "Clipart", "Product", "RealWorld"]
PLANTED, OTHER = "Art+Clipart|Product+RealWorld", "Art|Clipart+Product+RealWorld"


def _trials(tiny, partitions: dict[str, str], **settings) -> list[Trial]:
    study = StudyConfig(**settings)
    return grid_trials(study, Plan(study, partitions, tiny.info))


def test_grid_covers_every_axis_once_and_seed_is_not_identity(tiny):
    parts = {
        f"{s}/{seed}": p
        for seed in (0, 1)
        for s, p in (("single", "|".join(["+".join(TASKS)])), ("independent", "|".join(TASKS)))
    }
    trials = _trials(tiny, parts, schemes=("single", "independent"), seeds=(0, 1), prompt_lengths=(2, 4), depths=(1, 3))
    assert len(trials) == 2 * 2 * 2 * 2 and len({t.key for t in trials}) == 16
    ids = {(t.scheme, t.run.prompts.n_tokens, t.depth): set() for t in trials}
    for t in trials:
        ids[(t.scheme, t.run.prompts.n_tokens, t.depth)].add(t.config_id)
    assert all(len(v) == 1 for v in ids.values())  # seeds 0 and 1 of one configuration share its config_id
    assert len({next(iter(v)) for v in ids.values()}) == 8  # and different configurations never do
    assert {t.depth for t in trials} == {1, 3} and all(t.layers == tuple(range(t.depth)) for t in trials)


def test_each_seed_draws_its_own_data_under_one_config_id(tiny):
    """Seeds vary the data too (issue 17, part 4): data_seed = the study's + seed, and the configuration's
    identity stays one id across seeds; with data_per_seed off every seed reads the study's data_seed."""
    parts = {f"single/{seed}": "+".join(TASKS) for seed in (0, 1, 2)}
    base = RunConfig(data=DataConfig(data_seed=10))
    varied = _trials(tiny, parts, schemes=("single",), seeds=(0, 1, 2), run=base)
    assert [t.run.data.data_seed for t in varied] == [10, 11, 12]
    assert len({t.config_id for t in varied}) == 1 and len({t.key for t in varied}) == 3
    fixed = _trials(tiny, parts, schemes=("single",), seeds=(0, 1, 2), run=base, data_per_seed=False)
    assert [t.run.data.data_seed for t in fixed] == [10, 10, 10]
    assert len({t.config_id for t in fixed}) == 1 and fixed[0].config_id != varied[0].config_id


def test_explicit_partitions_are_two_configurations_and_equal_choices_are_one(tiny):
    parts = {f"{PLANTED}/0": PLANTED, f"{OTHER}/0": OTHER, "gradient/0": PLANTED, "lookahead/0": PLANTED}
    trials = _trials(tiny, parts, schemes=(PLANTED, OTHER, "gradient", "lookahead"), seeds=(0,))
    assert len(trials) == 2  # gradient and lookahead chose the planted partition: the same run, trained once
    by_partition = {t.partition: t for t in trials}
    assert set(by_partition) == {PLANTED, OTHER} and by_partition[PLANTED].config_id != by_partition[OTHER].config_id
    assert by_partition[PLANTED].scheme == f"{PLANTED}, gradient, lookahead"


def test_config_id_resolves_default_layers(tiny):
    parts = {"single/0": "+".join(TASKS)}
    default = _trials(tiny, parts, schemes=("single",), seeds=(0,))[0]
    explicit = _trials(tiny, parts, schemes=("single",), seeds=(0,), depths=(tiny.info.text_layers - 1,))[0]
    assert default.config_id == explicit.config_id  # "default" and "0-2" are the same layers on this backbone
    longer = _trials(tiny, parts, schemes=("single",), seeds=(0,), run=RunConfig(train=TrainConfig(epochs=3)))[0]
    assert longer.config_id != default.config_id


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"seeds": (0, 0)}, r"StudyConfig.seeds=\[0, 0\] repeats \[0\]"),
        ({"schemes": ("single", "single")}, "StudyConfig.schemes=.* repeats"),
        ({"name": ".."}, "StudyConfig.name='..'"),
        ({"name": "."}, "StudyConfig.name='.'"),
        ({"name": "a/b"}, "StudyConfig.name='a/b'"),
        ({"name": "x\n"}, "StudyConfig.name="),
        ({"name": ".hidden"}, "StudyConfig.name='.hidden'"),
    ],
)
def test_bad_identity_settings_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        StudyConfig(**kwargs)


def test_storage_is_resolved_once_against_the_launch_folder(tmp_path, monkeypatch):
    """A relative --storage is made absolute where the driver starts, so no later process (a trial in its own
    working dir) can read it differently; a URI is kept as given. Inside a submitted job's working-dir copy
    it is refused: tests/test_study.py submits a real job for that."""
    monkeypatch.setenv("MMAP_RAY_STORAGE", str(tmp_path / "durable"))
    assert StudyConfig().storage == str(tmp_path / "durable")
    monkeypatch.chdir(tmp_path)
    assert StudyConfig(storage="rel").storage == str(tmp_path / "rel")
    assert resolve_storage("s3://b/x") == "s3://b/x" and resolve_storage("/abs/../abs2") == "/abs2"
    assert job_working_copy() is None
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (copy / "studies").mkdir(parents=True)
    assert job_working_copy(copy / "studies") == copy


def test_start_and_resume_rules(tmp_path):
    study = StudyConfig(storage=str(tmp_path), name="g")
    folder = location(study.study_dir)
    with pytest.raises(ValueError, match=r"--resume: there is no study 'g' in .* to resume"):
        check_start(study, folder, resume=True, overwrite=False)
    check_start(study, folder, resume=False, overwrite=False)  # a new study
    os.makedirs(folder.path)
    (folder / "study.json").write_text(json.dumps(to_dict(study)))
    _write_trial(folder / "results", "abc", 0, 0.5, study="g")
    with pytest.raises(
        ValueError, match=r"study 'g' already exists in .* with 1 trial result; continue it with --resume"
    ):
        check_start(study, folder, resume=False, overwrite=False)
    changed = StudyConfig(
        storage=str(tmp_path), name="g", run=RunConfig(train=TrainConfig(epochs=3)), seeds=(0, 1, 2, 3)
    )
    with pytest.raises(
        ValueError, match=r"run.train.epochs: stored 10, now 3; seeds: stored \[0, 1, 2\], now \[0, 1, 2, 3\]"
    ):
        check_start(changed, folder, resume=True, overwrite=False)
    faster = StudyConfig(
        storage=str(tmp_path), name="g", resources=WorkerSpec(workers=1, autoscale=True), max_concurrent_trials=1
    )
    check_start(faster, folder, resume=True, overwrite=False)  # concurrency and autoscaling may change


def test_lock_refuses_a_second_driver_and_takes_over_a_dead_one(tmp_path):
    folder = location(tmp_path / "s")
    held = acquire(folder)
    with pytest.raises(LockHeld, match=rf"in use by another driver \(pid {os.getpid()} on host"):
        acquire(folder)
    held.release()
    acquire(folder).release()  # released: free again
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x"}))
    acquire(folder).release()  # that process is gone: stale, taken over
    (folder / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x"}))
    with pytest.raises(LockHeld, match="rerun with --break-lock"):
        acquire(folder)
    acquire(folder, break_lock=True).release()


def _write_trial(root, cid: str, seed: int, acc: float | None, study: str = "t") -> None:
    status = "TERMINATED" if acc is not None else "ERROR"
    row = {
        "study": study,
        "config_id": cid,
        "seed": seed,
        "trial_id": f"t{seed}",
        "status": status,
        "error": "" if acc is not None else "FloatingPointError: nan",
        "scheme": "single",
        "layers": [0, 1],
        "depth": 2,
        "val_mean_final": acc,
        "test_mean": acc,
        "val_Art_final": acc,
        "schema_version": SCHEMA_VERSION,
    }
    write_table(root, TRIALS, row_key(cid, seed), [row], trial_schema(["Art"]))
    if acc is not None:
        write_table(
            root,
            EPOCHS,
            row_key(cid, seed),
            [{"config_id": cid, "seed": seed, "epoch": 1, "task": "Art", "val_acc": acc}],
            EPOCH_SCHEMA,
        )


@pytest.mark.parametrize("failed_first", [True, False])
def test_every_parquet_client_reads_a_folder_with_a_failed_trial(tmp_path, failed_first):
    import duckdb
    import polars as pl

    root = tmp_path / "results"
    rows = [("aaa", 0, None), ("bbb", 0, 0.5), ("bbb", 1, 0.6)]  # file names sort the failed trial first
    for cid, seed, acc in rows if failed_first else rows[::-1]:
        _write_trial(root, cid, seed, acc)
    folder = str(root / TRIALS)
    df = pd.read_parquet(folder)
    assert len(df) == 3 and df["val_mean_final"].dtype.kind == "f" and df["layers"].map(list).tolist() == [[0, 1]] * 3
    table = pads.dataset(folder, partitioning="hive").to_table()
    assert table.num_rows == 3 and str(table.schema.field("test_mean").type) == "double"
    assert duckdb.sql(
        f"select count(*), avg(val_mean_final) from read_parquet('{folder}/*.parquet', hive_partitioning=true)"
    ).fetchall() == [(3, pytest.approx(0.55))]
    assert pl.scan_parquet(folder, hive_partitioning=True).collect().height == 3
    assert len(load(root)) == 3 and list(load(root)["status"]).count("ERROR") == 1


def test_loading_a_folder_without_results_names_it(tmp_path):
    with pytest.raises(ValueError, match=f"no trials results in {tmp_path}/nothing/trials"):
        load(tmp_path / "nothing")


def test_overwrite_moves_the_old_study_aside_and_deletes_nothing(tmp_path):
    from mmap_ray.storage import move_aside

    folder = location(tmp_path / "g")
    _write_trial(folder / "results", "abc", 0, 0.5)
    moved = move_aside(folder, "old-1")
    assert not folder.exists() and moved.name == "g.old-1"
    assert len(load(moved / "results")) == 1
    _write_trial(folder / "results", "abc", 0, 0.5)
    with pytest.raises(ValueError, match="g.old-1 exists already"):
        move_aside(folder, "old-1")


def test_overwrite_on_object_storage_copies_then_deletes(s3):
    from mmap_ray.storage import move_aside

    base, _ = s3
    folder = location(base.format(prefix="ow/g"))
    _write_trial(folder / "results", "abc", 0, 0.5)
    (folder / "study.json").write_text("{}")
    moved = move_aside(folder, "old-1")
    assert not folder.exists() and (moved / "study.json").read_text() == "{}" and len(load(moved / "results")) == 1


def test_lock_on_object_storage(s3):
    base, _ = s3
    folder = location(base.format(prefix="locks/g"))
    held = acquire(folder)
    with pytest.raises(LockHeld, match="in use by another driver"):
        acquire(folder)
    held.release()
    assert not (folder / ".lock").exists()


def test_drivers_racing_for_a_lock_on_s3_get_one_winner(s3):
    """Eight drivers (threads, each with its own client) ask for one study's lock at the same moment on a real
    S3-protocol server: exactly one holds it, the others are refused naming it."""
    import threading

    base, _ = s3
    folder = location(base.format(prefix="locks/race"))
    start, won, refused = threading.Barrier(8), [], []

    def driver() -> None:
        start.wait()
        try:
            won.append(acquire(folder))
        except LockHeld as e:
            refused.append(str(e))

    threads = [threading.Thread(target=driver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == 7 and all("in use by another driver" in e for e in refused)
    assert json.loads((folder / ".lock").read_text())["token"] == won[0].token
    won[0].release()
    assert not (folder / ".lock").exists()


def test_a_lock_written_after_the_existence_check_is_not_overwritten_on_s3(s3, monkeypatch):
    """The gap between looking for a lock and writing one: another driver's lock lands in it. The conditional
    write refuses; a plain write, read back after a wait, overwrote it and both drivers held the study."""
    from mmap_ray.storage import Location

    base, _ = s3
    folder = location(base.format(prefix="locks/gap"))
    other = acquire(folder)
    # the interleaving, made certain: this driver looked before the other one's lock existed
    monkeypatch.setattr(Location, "exists", lambda self: False)
    with pytest.raises(LockHeld, match="in use by another driver"):
        acquire(folder)
    monkeypatch.undo()
    assert json.loads((folder / ".lock").read_text())["token"] == other.token  # the other's lock, intact
    other.release()


def test_a_resumed_search_tells_optuna_the_finished_trials():
    study = StudyConfig(
        mode="search",
        schemes=("single", "gradient"),
        prompt_lengths=(2, 4),
        depths=(1, 2),
        objective="pareto",
        num_samples=5,
    )
    done = pd.DataFrame(
        [
            {
                "scheme": "single",
                "n_tokens": 2,
                "depth": 1,
                "projection": "kron",
                "lr": 1e-3,
                "val_mean_final": 0.6,
                "trainable_params": 100,
            },
            {
                "scheme": "gradient",
                "n_tokens": 4,
                "depth": 2,
                "projection": "kron",
                "lr": 2e-3,
                "val_mean_final": 0.7,
                "trainable_params": 300,
            },
            {
                "scheme": "gradient",
                "n_tokens": 4,
                "depth": 2,
                "projection": "kron",
                "lr": 3e-3,
                "val_mean_final": None,
                "trainable_params": None,
            },  # failed: nothing to tell
        ]
    )
    search = searcher(study, done)
    trials = search._ot_study.get_trials()  # the Optuna study the searcher samples from
    assert [t.values for t in trials] == [[0.6, 100], [0.7, 300]]
    assert trials[1].params == {"scheme": "gradient", "n_tokens": 4, "depth": 2, "projection": "kron", "lr": 2e-3}


def test_local_storage_on_a_multi_node_cluster_is_warned_about(tmp_path):
    """On a 2-node Ray cluster a local storage folder is warned about and an s3:// one is not. In a fresh
    process: a pytest-xdist worker may already hold the session's local Ray, and a process joins one cluster."""
    code = f"""
import ray
from ray.cluster_utils import Cluster
from mmap_ray.distributed import warn_unshared_storage
from mmap_ray.storage import location
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
cluster.add_node(num_cpus=1)
try:
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    said = []
    warn_unshared_storage(location({str(tmp_path)!r}), said.append)
    warn_unshared_storage(location("s3://bucket/studies"), said.append)
    print(repr(said))
finally:
    ray.shutdown()
    cluster.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert len(said) == 1 and "the Ray cluster has 2 nodes" in said[0] and "--storage s3://" in said[0]


def test_variants_are_an_axis_and_designs_without_prompts_are_trained_once(tiny):
    parts = {"single/0": "+".join(TASKS)}
    variants = ("projection=kron; kron_order=AS", "projection=bitfit", "projection=clip-adapter; adapter_reduction=2")
    trials = _trials(tiny, parts, schemes=("single",), seeds=(0,), prompt_lengths=(2, 4), variants=variants)
    by_variant = {}
    for t in trials:
        by_variant.setdefault(t.variant, []).append(t)
    assert {v: len(ts) for v, ts in by_variant.items()} == {variants[0]: 2, variants[1]: 1, variants[2]: 1}
    kron = by_variant[variants[0]][0].run.prompts
    assert kron.kron_order == "AS" and kron.projection == "kron"
    assert by_variant[variants[2]][0].run.prompts.adapter_reduction == 2
    assert by_variant[variants[1]][0].scheme == "single"  # merged across prompt lengths, named once


def test_compare_mode_crosses_every_axis_and_a_trial_crosses_tune_as_plain_data(tiny):
    """Projections and combine modes given to a compare study are axes like prompt lengths (not only the
    first value); a trial survives Tune's boundary (JSON) typed and whole; a search trial made from sampled
    choices is the grid's trial with the same choices."""
    parts = {"single/0": "+".join(TASKS)}
    trials = _trials(
        tiny, parts, schemes=("single",), seeds=(0,), projections=("kron", "coop"), combines=("add", "concat")
    )
    assert sorted((t.run.prompts.projection.value, t.run.prompts.combine.value) for t in trials) == [
        ("coop", "add"),
        ("coop", "concat"),
        ("kron", "add"),
        ("kron", "concat"),
    ]
    assert len({t.config_id for t in trials}) == 4
    for t in trials:
        assert Trial.from_tune(json.loads(json.dumps(t.to_tune()))) == t
    study = StudyConfig(mode="search", schemes=("single",), seeds=(0,), projections=("kron", "coop"))
    plan = Plan(study, parts, tiny.info)
    sampled = trial_of({"scheme": "single", "n_tokens": 4, "projection": "coop", "lr": 2e-3}, plan)
    assert sampled == make_trial(plan, "single", 0, n_tokens=4, projection="coop", lr=2e-3)
    assert (sampled.run.prompts.n_tokens, sampled.run.prompts.projection, sampled.run.train.lr) == (4, "coop", 2e-3)
    assert set(search_space(study)) - {"scheme"} <= set(AXES)  # the search samples the axes by their names
    with pytest.raises(ValueError, match=r"\['n_token'\] are not study axes"):
        make_trial(plan, "single", 0, n_token=4)


@pytest.mark.parametrize(
    "variant, needle",
    [
        ("projection=kronn", "StudyConfig.variants has 'projection=kronn': MmAPConfig.projection='kronn'"),
        ("projection", "'projection' is not name=value"),
        ("prjection=kron", "'prjection=kron' is not a setting name"),
        ("seed=3", "sets seed, which a study sets per trial"),
        ("epochs=ten", "'epochs=ten': epochs='ten' is not valid: it must be an integer"),
    ],
)
def test_bad_variants_are_refused_naming_them(variant, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        StudyConfig(variants=(variant,))


def test_identity_ignores_settings_a_design_does_not_read(tiny):
    parts = {"single/0": "+".join(TASKS)}
    one = _trials(tiny, parts, schemes=("single",), seeds=(0,), variants=("projection=linear; kron_order=AS",))
    two = _trials(tiny, parts, schemes=("single",), seeds=(0,), variants=("projection=linear; phm_rank=2",))
    assert one[0].config_id == two[0].config_id  # linear reads neither
    kron = _trials(tiny, parts, schemes=("single",), seeds=(0,), variants=("projection=kron; kron_order=AS",))
    assert kron[0].config_id != _trials(tiny, parts, schemes=("single",), seeds=(0,))[0].config_id


def test_rows_of_schema_v2_load_with_an_empty_variant(tmp_path):
    row = {
        "study": "t",
        "config_id": "a" * 16,
        "seed": 0,
        "trial_id": "t0",
        "status": "TERMINATED",
        "val_mean_final": 0.5,
        "schema_version": 2,
    }
    schema = trial_schema(["Art"]).remove(trial_schema(["Art"]).get_field_index("variant"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([row], schema=schema).replace_schema_metadata({b"mmap_ray.schema_version": b"2"})
    (tmp_path / TRIALS).mkdir()
    pq.write_table(table, tmp_path / TRIALS / f"{'a' * 16}-s0.parquet")
    df = load(tmp_path, TRIALS)
    assert df["variant"].tolist() == [""] and df["val_mean_final"].tolist() == [50.0]  # v6: percent


def test_rows_of_schema_v4_load_with_an_unknown_package_version(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"study": "t", "config_id": "b" * 16, "seed": 1, "status": "TERMINATED", "git_commit": "x", "test_mean": 0.5}
    table = pa.Table.from_pylist([row]).replace_schema_metadata({b"mmap_ray.schema_version": b"4"})
    (tmp_path / TRIALS).mkdir()
    pq.write_table(table, tmp_path / TRIALS / f"{'b' * 16}-s1.parquet")
    assert load(tmp_path, TRIALS)["mmap_ray"].tolist() == ["unknown"]


def test_code_version_names_the_code_wherever_the_package_is_imported_from(tmp_path):
    """A checkout gives its commit; a copy without .git (a submitted job's working dir) the image's COMMIT file
    if there is one, else a digest of the package's sources, which changes with any source file."""
    import mmap_ray
    from mmap_ray.provenance import code_version, provenance

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert code_version() == head and provenance()["mmap_ray"] == mmap_ray.__version__
    copy = tmp_path / "job" / "mmap_ray"
    shutil.copytree(REPO / "mmap_ray", copy, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    probe = f"import sys; sys.path.insert(0, {str(copy.parent)!r}); from mmap_ray.provenance import code_version; "
    probe += f"import mmap_ray; assert mmap_ray.__file__.startswith({str(copy)!r}); print(code_version())"

    def ask() -> str:
        out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    digest = ask()
    assert re.fullmatch(r"sources-[0-9a-f]{16}", digest)
    (copy / "grouping.py").write_text((copy / "grouping.py").read_text() + "\n# changed\n")
    assert ask() != digest
    (copy.parent / "COMMIT").write_text("1" * 40 + "\n")
    assert ask() == "1" * 40


def test_each_seeds_affinity_is_measured_on_that_seeds_data(tmp_path):
    """plan_partitions holds one seed's data at a time (a study of many seeds once held a copy per seed: 4.3 GB
    at 100 seeds): an affinity scheme still reads each seed's own data, and a fixed scheme its task names."""
    import torch

    from mmap_ray.affinity import task_affinity
    from mmap_ray.build import load_run_backbone, load_run_tasks
    from mmap_ray.config import AffinityConfig
    from mmap_ray.fields import replace
    from mmap_ray.study import program
    from mmap_ray.study.partitions import plan_partitions
    from mmap_ray.study.trials import trial_data_seed

    argv = ["--smoke", "--schemes", "features", "single", "--seeds", "0", "1", "--storage", str(tmp_path)]
    study = program.build_study(program.build_parser().parse_args(argv))
    torch.manual_seed(0)  # the smoke backbone's random weights: the same below
    partitions, _, names = plan_partitions(study, location(tmp_path))
    assert partitions["single/0"] == partitions["single/1"] == "+".join(names)
    saved = json.loads((tmp_path / "partitions.json").read_text())["affinity"]
    torch.manual_seed(0)
    backbone = load_run_backbone(study.run.backbone, study.run.data.dataset)
    for seed in (0, 1):
        tasks = load_run_tasks(replace(study.run.data, data_seed=trial_data_seed(study, seed)), backbone)
        expected = task_affinity(backbone, tasks, AffinityConfig(method="features", seed=seed))
        assert saved[f"features/{seed}"]["matrix"] == expected.tolist()
    assert saved["features/0"]["matrix"] != saved["features/1"]["matrix"]  # the two seeds' data differ
