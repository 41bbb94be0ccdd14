"""Property: whatever is found in the tool's own folders, a command reads it back or ends in one error line.

The files mmap-ray writes and reads again, each built valid once per module the way the package writes it
(`results.write_table`, `write_predictions`, a study's study.json and lock, a run's config.json, the cache
of checked images filled by a real run), then, per example, one of them made hostile: random bytes, an empty
or truncated file, valid JSON of another type or shape (a leaf or a whole table swapped for null, NaN,
2**70, a string, a list, nesting 990 or 100,000 deep), Parquet with another schema, a column of another
type, repeated or no rows, or a schema version or data identity in its metadata that is not one; or its
path made hostile: a symlink loop, a folder in place of the file, a file in place of its folder. The
command that reads it back runs in process:

  - `mmap-ray study --resume` on a stopped study: study.json, partitions.json, the lock, a trial's row;
  - `mmap-ray report`: trial and epoch rows, partitions.json, study.json, the lock, the report's manifest;
  - `mmap-ray eval --run`: the run's config.json;  `mmap-ray compare`: a predictions file;
  - `mmap-ray eval` on a dataset folder: the cache of images that decoded (`$MMAP_RAY_CACHE/image-checks`).

The outcome must be one of the endings of `test_properties.py`: the command reached its expensive work
(Ray, rendering the report, building the model, evaluating: replaced here by raising `Reached`); it finished
(exit 0; a warning may name the file); or it exited non-zero with exactly one `PROG: error:` line on stderr
that names the file (or the folder made hostile) and no traceback. No exception may leave `main`, and nothing
may be written outside the example's folders and the cache (HOME is the sandbox's).
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_folders import make_tree

import mmap_ray.build
import mmap_ray.distributed
import mmap_ray.evaluation
import mmap_ray.report.cli
import mmap_ray.study.run
from mmap_ray.backbone import TINY_MODEL, load_backbone
from mmap_ray.cli import main
from mmap_ray.fields import to_dict
from mmap_ray.predictions import write_predictions
from mmap_ray.report.document import claim_folder
from mmap_ray.results import EPOCH_SCHEMA, EPOCHS, TRIALS, trial_schema, write_table
from mmap_ray.study import program

pytestmark = pytest.mark.faults

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
TINY = ["--model", TINY_MODEL, "--pretrained", "none"]
GROUP = ["group", *TINY, "--scheme", "single", "--dataset", "folders", "--out"]
KEY = "0123456789abcdef-s0"  # a trial row's file name: its (config_id, seed)
DEAD_PID = 2**30  # above any pid_max: a lock of this host whose driver is gone


class Reached(Exception):
    """The command got past reading its files to its first real work."""


def _reach(*args, **kwargs):
    raise Reached


# ---- hostile contents ----------------------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 2**31, 2**63, 2**70, -(2**70)]),
    st.sampled_from(["", "x", "1e400", "../../etc", "🦊", [], {}]),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity: what Python's json reads and writes
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def mutated(draw, node):
    """`node` with one subtree (often a leaf) replaced by a hostile value, or one key removed."""
    if isinstance(node, dict) and node and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(node)))
        if not draw(st.integers(0, 5)):
            return {k: v for k, v in node.items() if k != key}
        return {**node, key: draw(mutated(node[key]))}
    if isinstance(node, list) and node and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(node) - 1))
        return [*node[:i], draw(mutated(node[i])), *node[i + 1 :]]
    return draw(values)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth if depth % 2 else b'{"a":' * depth + b"1" + b"}" * depth


def raw(valid: bytes) -> st.SearchStrategy[bytes]:
    """Contents that are not the file's kind at all: empty, random, cut short."""
    return st.one_of(st.just(b""), st.binary(max_size=64), st.integers(0, len(valid) - 1).map(lambda n: valid[:n]))


def json_contents(valid: object) -> st.SearchStrategy[bytes]:
    text = json.dumps(valid).encode()
    shaped = mutated(valid).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        shaped,
        shaped,
        values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([990, 991, 100_001, 100_000]).map(nested),
        raw(text),
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


column_values = st.sampled_from([None, "x", 2**62, -1, float("nan"), True, b"\xff"])


@st.composite
def parquet_contents(draw, valid: pa.Table) -> bytes:
    """The valid table with its schema, rows or metadata changed, or not Parquet at all."""
    meta = dict(valid.schema.metadata or {})
    how = draw(st.sampled_from(["raw", "metadata", "drop", "retype", "rows", "alien"]))
    table = valid
    if how == "raw":
        return draw(raw(parquet_bytes(valid)))
    if how == "metadata":  # a schema version, a data identity that is not one; or none
        key = draw(st.sampled_from(sorted(meta)))
        junk = st.sampled_from([b"", b"-1", b"0", b"1", b"7", b" 6", b"1e400", b"2" * 30, b"\xff", b"null"])
        meta[key] = draw(junk | json_contents(json.loads(meta[key])) if meta[key].startswith(b"{") else junk)
        meta = meta if draw(st.integers(0, 5)) else {}
    elif how == "drop":
        table = table.drop_columns([draw(st.sampled_from(table.column_names))])
    elif how == "retype":
        i = draw(st.integers(0, table.num_columns - 1))
        table = table.set_column(i, table.column_names[i], pa.array([draw(column_values)] * table.num_rows))
    elif how == "rows":
        table = draw(st.sampled_from([table.slice(0, 0), pa.concat_tables([table, table])]))
    else:
        table = pa.table({"x": [1, 2]})
    return parquet_bytes(table.replace_schema_metadata(meta))


# ---- the folders, valid, built once ---------------------------------------------------------------------


def study_folder(storage: Path) -> Path:
    """A stopped smoke study `z`: study.json, partitions.json, a lock its dead driver left, one trial row."""
    study = program.build_study(program.build_parser().parse_args(["--smoke", "--storage", str(storage)]))
    folder = storage / "z"
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(to_dict(study) | {"name": "z"}))
    saved = {"partitions": {"single/0": "A+B"}, "affinity": {"gradient/0": {"tasks": ["A"], "matrix": [[1.0]]}}}
    (folder / "partitions.json").write_text(json.dumps(saved | {"seconds": {"single/0": 0.1}}))
    lock = {"host": socket.gethostname(), "pid": DEAD_PID, "token": "ab", "started": "2026-01-01T00:00:00Z"}
    (folder / ".lock").write_text(json.dumps(lock))
    row = {"study": "z", "config_id": KEY[:16], "seed": 0, "status": "TERMINATED", "schema_version": 6}
    write_table(folder / "results", TRIALS, KEY, [row | {"test_mean": 70.0, "test_A": 70.0}], trial_schema(["A"]))
    epoch = {"study": "z", "config_id": KEY[:16], "seed": 0, "epoch": 1, "task": "A", "val_acc": 60.0}
    write_table(folder / "results", EPOCHS, KEY, [epoch], EPOCH_SCHEMA)
    (folder / "report").mkdir()  # an earlier report's folder, for its manifest
    (folder / "report" / ".mmap-ray-report.json").write_text(json.dumps({"files": ["report.md"]}))
    return folder


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    """Every folder the commands read, valid; each example works on a copy."""
    root = tmp_path_factory.mktemp("valid")
    study_folder(root / "studies")
    run = root / "run"
    run.mkdir()
    config = program.build_study(program.build_parser().parse_args(["--smoke"])).run
    (run / "config.json").write_text(json.dumps({"run": to_dict(config)}))
    torch.save({}, run / "checkpoint.pt")
    cols = {"task": ["A", "A", "B"], "image": [0, 1, 0], "label": [0, 1, 1], "prediction": [0, 0, 1]}
    cols["correct"] = [True, False, True]
    for name in "ab":
        write_predictions(root / "predictions" / f"{name}.parquet", cols, {"split": "test", "images": "d1"})
    make_tree(root / "data", domains=("Art", "Clip"), classes=("ant", "bee"), n=6)
    return root


_TINY = {}


def _tiny(cfg, device="cpu"):
    """The tiny backbone with random weights, built once."""
    if "b" not in _TINY:
        _TINY["b"] = load_backbone(cfg)
    return _TINY["b"]


# ---- the commands, and the property --------------------------------------------------------------------


def study_resume(work: Path):
    return lambda: program.main(["--smoke", "--storage", str(work / "studies"), "--name", "z", "--resume"])


def report(work: Path):
    folder = work / "studies" / "z"
    return lambda: main(["report", str(folder / "results"), "--out", str(folder / "report")])


def predictions(work: Path) -> list[str]:
    return [str(work / "predictions" / f"{name}.parquet") for name in "ab"]


KINDS = {  # name: (the file, relative to an example's folder; its valid contents; the command that reads it)
    "study.json": ("studies/z/study.json", "json", study_resume),
    "partitions.json": ("studies/z/partitions.json", "json", study_resume),
    "lock": ("studies/z/.lock", "json", study_resume),
    "trial row": (f"studies/z/results/trials/{KEY}.parquet", "parquet", study_resume),
    "report: trial row": (f"studies/z/results/trials/{KEY}.parquet", "parquet", report),
    "report: epoch rows": (f"studies/z/results/epochs/{KEY}.parquet", "parquet", report),
    "report: partitions.json": ("studies/z/partitions.json", "json", report),
    "report: study.json": ("studies/z/study.json", "json", report),
    "report: lock": ("studies/z/.lock", "json", report),
    "report: manifest": ("studies/z/report/.mmap-ray-report.json", "json", report),
    "run config.json": ("run/config.json", "json", lambda w: lambda: main(["eval", "--run", str(w / "run")])),
    # which images of a dataset folder decoded: the group command loads the folder (a fixed scheme trains nothing)
    "cache": (
        "../cache/image-checks/*.json",
        "json",
        lambda w: lambda: main([*GROUP, str(w / "g.json"), "--root", str(w / "data")]),
    ),
    "predictions": ("predictions/b.parquet", "parquet", lambda w: lambda: main(["compare", *predictions(w)])),
}


def contents(kind: str, path: Path) -> st.SearchStrategy[bytes]:
    if kind == "json":
        return json_contents(json.loads(path.read_bytes()))
    return parquet_contents(pq.read_table(path))


def make_hostile(target: Path, how: str, data: bytes) -> Path:
    """Apply `how` to `target`; returns the path made hostile (the file, or its folder)."""
    if how in ("contents", "unchanged"):
        target.write_bytes(data) if how == "contents" else None
        return target
    hit = target.parent if how == "file for its folder" else target
    shutil.rmtree(hit) if hit.is_dir() else hit.unlink()
    if how == "symlink loop":
        hit.symlink_to(hit.name)
    elif how == "folder for the file":
        hit.mkdir()
    else:
        hit.write_bytes(b"")
    return hit


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def ending(run, hit: Path, capsys) -> str:
    """Run; Reached, exit 0, or a non-zero exit with one `...: error:` line naming `hit`. Returns which."""
    try:
        code = run()
    except Reached:
        capsys.readouterr()
        return "reached"
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - the property: nothing escapes main
        pytest.fail(f"{type(e).__name__} escaped main for hostile {hit}: {e}")
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code == 0:
        return "done"
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith("mmap-ray "), (code, err)
    assert hit.name in lines[0] or hit.parent.name in lines[0], f"the error names neither {hit} nor its folder"
    return "refused"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """HOME and the cache of its own; Ray, the report's rendering, building and evaluating a model replaced."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mmap_ray.distributed, "ensure_ray", _reach)
    monkeypatch.setattr(mmap_ray.study.run, "keep_secrets_out_of_trials", lambda: None)  # imports Ray Tune
    monkeypatch.setattr(mmap_ray.build, "build_run", _reach)
    monkeypatch.setattr(mmap_ray.build, "load_backbone", _tiny)
    monkeypatch.setattr(mmap_ray.report.cli, "write_report", lambda study, out: (claim_folder(Path(out)), _reach()))
    return tmp_path


PATHS = ["symlink loop", "folder for the file", "file for its folder"]


@pytest.mark.parametrize("name", KINDS)
def test_any_file_read_back_reaches_its_work_or_is_one_error_line(name, templates, sandbox, capsys):
    rel, kind, command = KINDS[name]
    endings: list[str] = []
    work, cache, valid = sandbox / "work", sandbox / "cache", sandbox / "valid-cache"

    def fresh() -> Path:
        """The example's folders, valid: the templates, and the cache a first run filled."""
        for folder, source in ((work, templates), (cache, valid)):
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink(missing_ok=True)
            shutil.copytree(source, folder, symlinks=True)
        return Path(glob.glob(str(work / rel))[0])

    shutil.copytree(templates, work)
    assert ending(command(work), work, capsys) in ("reached", "done")  # valid folders (and the cache filled)
    shutil.copytree(cache, valid) if cache.is_dir() else valid.mkdir()

    @EXAMPLES
    @given(how=st.sampled_from(["unchanged"] + ["contents"] * 4 + PATHS), data=contents(kind, fresh()))
    def prop(how, data):
        hit = make_hostile(fresh(), how, data)
        before = files_under(sandbox)
        endings.append(ending(command(work), hit, capsys))
        written = files_under(sandbox) - before
        assert all(work in p.parents or cache in p.parents for p in written), sorted(written)

    prop()
    if name == "cache":  # it only saves time: whatever it holds, the command does its work
        assert set(endings) == {"done"}, endings
    else:
        assert "refused" in endings  # hostile files are found ...
        assert {"reached", "done"} & set(endings)  # ... and harmless changes get through
