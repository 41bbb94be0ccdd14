"""Property: any command line or study file either gets to work or ends in exactly one error line.

Argument vectors are generated from the real flag definitions of every `mmap-ray` subcommand and of
`studies/grouping.py` (argparse's own actions), and study files from StudyConfig's real fields, with
valid, boundary and invalid values: choices, integers from -1 to 2**70, nan and inf, empty strings,
unicode, paths that do not exist. For each, the outcome must be one of

  - the command reached its work: the first expensive step, which these tests replace by raising
    `Reached` (training, affinity, evaluation, Ray Train and Ray itself, building the toy CLIP, rendering
    the toy benchmark, and loading any backbone but the tiny one with random weights), so that hundreds
    of examples run in seconds. Everything before it runs for real: parsing, the configs' checks, the tiny
    backbone, a small dataset folder (images decoded, split, checked), partitions against the tasks, the
    prompts' size;
  - the command finished (exit 0: `params`, `group` with a fixed scheme);
  - exit status 2, stderr holding exactly one `PROG: error:` line and no traceback;

and nothing may be written outside the output folders the test gives (`--out`, `--storage`, the cache):
HOME is the sandbox's, so a write to `~` would be seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_folders import make_tree

import mmap_ray.affinity
import mmap_ray.build
import mmap_ray.distributed
import mmap_ray.engine
import mmap_ray.evaluation
import mmap_ray.toyclip
from mmap_ray.backbone import TINY_MODEL, BackboneConfig, load_backbone
from mmap_ray.cli import build_parser, main
from mmap_ray.fields import hints
from mmap_ray.study import StudyConfig
from mmap_ray.study import program as grouping

pytestmark = pytest.mark.faults


EXAMPLES = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
OWN_FLAGS = {"--out", "--storage", "--help", "-h", "--study", "--resume", "--overwrite", "--break-lock", "--print"}
TINY = ["--model", TINY_MODEL, "--pretrained", "none"]  # laid first: a generated --model or --pretrained wins


class Reached(Exception):
    """The command got past parsing and checking to its first real work."""


def _reach(*args, **kwargs):
    raise Reached


_TINY = {}


def _tiny_or_reach(cfg: BackboneConfig, device="cpu"):
    """The real tiny backbone with random weights (built once); any other one is work this test skips."""
    if cfg.model != TINY_MODEL or cfg.pretrained is not None:
        raise Reached
    if "b" not in _TINY:
        _TINY["b"] = load_backbone(cfg)
    return _TINY["b"]


# ---- values ------------------------------------------------------------------------------------------

texts = st.one_of(
    st.just(""),
    st.text(max_size=12),  # any unicode, control characters included
    st.text("ab/.", min_size=250, max_size=300),  # longer than a file name may be
    st.sampled_from(["none", "None", "true", "0", "-1", "1e400", "nan", "A+B|C", "Art,Clipart", "../../etc", "🦊"]),
)
numbers = st.one_of(
    st.integers(-2, 3),
    st.sampled_from([2**31, 2**63, 2**70, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def flag_values(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """The argv words for one flag: its choices, numbers and text of every kind."""
    flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
    if action.nargs == 0:  # store_true, or BooleanOptionalAction (--x / --no-x)
        return st.sampled_from([[s] for s in action.option_strings])
    hostile = numbers.map(str) | texts
    plausible = {int: st.integers(0, 6).map(str), float: st.sampled_from(["1e-3", "0.5", "0", "1"])}.get(action.type)
    if action.choices:
        plausible = st.sampled_from([str(c) for c in action.choices])
    values = hostile if plausible is None else st.one_of(plausible, plausible, hostile)  # 2 in 3 plausible
    words = st.lists(values, min_size=1, max_size=3) if action.nargs in ("+", "*") else values.map(lambda v: [v])
    return words.map(lambda w: [flag, *w])


def command_flags(command: str) -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return [a for a in sub._actions if a.option_strings and not OWN_FLAGS & set(a.option_strings)]


def argv_for(actions: list[argparse.Action]) -> st.SearchStrategy[list[str]]:
    chosen = st.lists(st.sampled_from(actions), max_size=6, unique_by=id)
    return chosen.flatmap(lambda acts: st.tuples(*[flag_values(a) for a in acts])).map(
        lambda parts: [w for part in parts for w in part]
    )


# ---- the property ------------------------------------------------------------------------------------


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def check_outcome(run, prog: str, capsys) -> str:
    """Run; the outcome must be Reached, exit 0, or exit 2 with one `prog: error:` line. Returns which."""
    try:
        code = run()
    except Reached:
        return "reached"
    except SystemExit as e:  # argparse: a value its type or choices refuse
        code = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err, err
    if code == 0:
        return "done"
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return "refused"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory and HOME of its own, a small dataset folder, and the expensive steps replaced."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMAP_RAY_STORAGE", str(tmp_path / "default-storage"))
    monkeypatch.setattr(mmap_ray.build, "load_backbone", _tiny_or_reach)
    monkeypatch.setattr(mmap_ray.toyclip, "pretrained_toy_clip", _reach)
    monkeypatch.setattr(mmap_ray.build, "load_run_tasks", _tasks_or_reach(mmap_ray.build.load_run_tasks))
    for module, name in [
        (mmap_ray.engine, "train"),
        (mmap_ray.evaluation, "evaluate"),
        (mmap_ray.evaluation, "predictions"),
        (mmap_ray.affinity, "task_affinity"),
        (mmap_ray.distributed, "fit_distributed"),
        (mmap_ray.distributed, "ensure_ray"),
    ]:
        monkeypatch.setattr(module, name, _reach)
    make_tree(tmp_path / "data", domains=("Art", "Clip"), classes=("ant", "bee"), n=6)
    return tmp_path


def _tasks_or_reach(load):
    """The real task loader for a dataset folder; rendering the toy benchmark (seconds) is skipped."""

    def tasks(cfg, backbone, splits_dir=None):
        if cfg.dataset == "toy":
            raise Reached
        return load(cfg, backbone, splits_dir)

    return tasks


def allowed(sandbox: Path, *outs: Path):
    """Whether every file written lies in one of `outs` or the cache."""
    outs = (*outs, sandbox / "cache")
    return lambda written: all(any(p == o or o in p.parents for o in outs) for p in written)


@pytest.mark.parametrize("command", ["train", "eval", "group", "params"])
def test_any_command_line_reaches_its_work_or_is_one_error_line(command, sandbox, capsys):
    actions = command_flags(command)
    outcomes: list[str] = []

    data = ["--dataset", "folders", "--root", str(sandbox / "data")]

    @EXAMPLES
    @given(argv=argv_for(actions), tasks=texts, on_folder=st.booleans())
    def prop(argv, tasks, on_folder):
        out = sandbox / f"out{len(outcomes)}"  # a new run folder per example
        own = {"train": ["--out", str(out)], "eval": [], "group": ["--out", str(out / "g.json")]}.get(command)
        own = ["--tasks", tasks or "A,B"] if command == "params" else own
        first = [*TINY, *(data if on_folder and command != "params" else [])]
        before = files_under(sandbox)
        outcomes.append(check_outcome(lambda: main([command, *first, *argv, *own]), f"mmap-ray {command}", capsys))
        written = files_under(sandbox) - before
        assert allowed(sandbox, out)(written), sorted(written)

    prop()
    assert "refused" in outcomes  # the generator reaches the checks ...
    assert {"reached", "done"} & set(outcomes)  # ... and gets past them


def study_flags() -> list[argparse.Action]:
    return [a for a in grouping.build_parser()._actions if a.option_strings and not OWN_FLAGS & set(a.option_strings)]


def test_any_study_command_line_reaches_ray_or_is_one_error_line(sandbox, capsys):
    outcomes: list[str] = []

    @EXAMPLES
    @given(argv=argv_for(study_flags()), storage=texts.map(lambda t: t.replace("\0", "")) | st.just("studies"))
    def prop(argv, storage):
        where = sandbox / "studies"
        storage = str(where) if storage == "studies" else storage  # a generated storage: wherever it points
        before = files_under(sandbox)
        outcomes.append(check_outcome(lambda: grouping.main([*argv, "--storage", storage]), "mmap-ray study", capsys))
        written = files_under(sandbox) - before
        if storage == str(where):
            assert allowed(sandbox, where)(written), sorted(written)
            assert not list(where.rglob("study.json"))  # a study that did not start leaves no study behind

    prop()
    assert "refused" in outcomes and "reached" in outcomes


# ---- study files -------------------------------------------------------------------------------------


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), texts)
leaf_values = scalars | st.lists(scalars, max_size=3)


def leaves(cls: type, prefix: str = "") -> list[str]:
    """Every leaf field of `cls` by its dotted path (fields of the same name in two tables both count)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        out += leaves(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


STUDY_LEAVES = [p for p in leaves(StudyConfig) if p != "storage"]


@st.composite
def study_files(draw) -> str:
    """TOML over StudyConfig's real leaf fields (in their tables), a misspelt key now and then."""
    paths = STUDY_LEAVES
    chosen = draw(st.lists(st.sampled_from(paths), max_size=6, unique=True))
    tables: dict[str, list[str]] = {}
    for path in chosen:
        table, _, key = path.rpartition(".")
        if draw(st.integers(0, 9)) == 0:
            key += "s"  # an unknown key
        tables.setdefault(table, []).append(f"{key} = {toml_value(draw(leaf_values))}")
    top = "\n".join(tables.pop("", []))
    return top + "".join(f"\n[{t}]\n" + "\n".join(lines) for t, lines in tables.items()) + "\n"


def test_any_study_file_reaches_ray_or_is_one_error_line(sandbox, capsys):
    outcomes: list[str] = []

    @EXAMPLES
    @given(text=study_files())
    def prop(text):
        path, storage = sandbox / "study.toml", sandbox / "studies"
        path.write_text(text)
        before = files_under(sandbox)
        run = lambda: grouping.main(["--study", str(path), "--storage", str(storage)])  # noqa: E731
        outcomes.append(check_outcome(run, "mmap-ray study", capsys))
        written = files_under(sandbox) - before
        assert allowed(sandbox, storage)(written), sorted(written)

    prop()
    assert "refused" in outcomes and "reached" in outcomes


def test_the_generators_cover_every_field():
    """The study-file generator can write every StudyConfig leaf (run.train.seed and affinity.seed alike),
    and `mmap-ray train` has a flag for every run setting the study script has one for."""
    assert {"run.train.seed", "affinity.seed", "run.train.epochs", "resources.workers"} <= set(STUDY_LEAVES)
    assert len(STUDY_LEAVES) == len(leaves(StudyConfig)) - 1  # all but storage, which the test gives
    train_flags = {s for a in command_flags("train") for s in a.option_strings}
    study = {s for a in study_flags() for s in a.option_strings}
    run_flags = {f"--{p.rpartition('.')[2].replace('_', '-')}" for p in STUDY_LEAVES if p.startswith("run.")}
    assert run_flags & study <= train_flags  # a run setting the study script takes, train takes too
    assert {"--epochs", "--n-tokens", "--root", "--partition", "--workers", "--seed"} <= train_flags
