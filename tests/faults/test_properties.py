"""Property: any command line or study file either gets to work or ends in exactly one error line.

Argument vectors are generated from the real flag definitions of every `mmap-ray` subcommand and of
`studies/grouping.py` (argparse's own actions), and study files from StudyConfig's real fields, with
valid, boundary and invalid values: choices, integers from -1 to 2**70, nan and inf, empty strings,
unicode, paths that do not exist. For each, the outcome must be one of

  - the command reached its work: the first expensive step, which these tests replace by raising
    `Reached` (`build.load_run_backbone`, every command's first step that loads weights, and
    `distributed.ensure_ray`, the study's first step that claims resources), so that hundreds of
    examples run in seconds; the property is about parsing and checking, which all run for real;
  - exit status 2, stderr holding exactly one `PROG: error:` line and no traceback;

and nothing may be written outside the output folder the test gives (`--out`, `--storage`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmap_ray.build
import mmap_ray.distributed
from mmap_ray.cli import build_parser, main
from mmap_ray.fields import leaf_paths
from mmap_ray.study import StudyConfig

pytestmark = pytest.mark.faults

_spec = importlib.util.spec_from_file_location("grouping_study", REPO / "studies" / "grouping.py")
grouping = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grouping)

EXAMPLES = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
OWN_FLAGS = {"--out", "--storage", "--help", "-h", "--run", "--study", "--resume", "--overwrite", "--break-lock"}


class Reached(Exception):
    """The command got past parsing and checking to its first real work."""


def _reach(*args, **kwargs):
    raise Reached


# ---- values ------------------------------------------------------------------------------------------

texts = st.one_of(
    st.just(""),
    st.text(max_size=12),  # any unicode, control characters included
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
    values = numbers.map(str) | texts
    if action.choices:
        values = st.sampled_from([str(c) for c in action.choices]) | values
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
    """A working directory of its own; weights loading and Ray start replaced by `Reached`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mmap_ray.build, "load_run_backbone", _reach)
    monkeypatch.setattr(mmap_ray.distributed, "ensure_ray", _reach)
    monkeypatch.setenv("MMAP_RAY_STORAGE", str(tmp_path / "default-storage"))
    return tmp_path


@pytest.mark.parametrize("command", ["train", "eval", "group", "params"])
def test_any_command_line_reaches_its_work_or_is_one_error_line(command, sandbox, capsys):
    actions = command_flags(command)
    outcomes: list[str] = []

    @EXAMPLES
    @given(argv=argv_for(actions), tasks=texts)
    def prop(argv, tasks):
        out = sandbox / "out"
        own = {"train": ["--out", str(out)], "eval": [], "group": ["--out", str(out / "g.json")]}.get(command)
        own = ["--tasks", tasks or "A,B"] if command == "params" else own
        before = files_under(sandbox)
        outcomes.append(check_outcome(lambda: main([command, *argv, *own]), f"mmap-ray {command}", capsys))
        written = files_under(sandbox) - before
        assert all(p == out or out in p.parents for p in written), sorted(written)

    prop()
    assert "refused" in outcomes  # the generator reaches the checks ...
    assert {"reached", "done"} & set(outcomes)  # ... and gets past them


def study_flags() -> list[argparse.Action]:
    return [a for a in grouping.build_parser()._actions if a.option_strings and not OWN_FLAGS & set(a.option_strings)]


def test_any_study_command_line_reaches_ray_or_is_one_error_line(sandbox, capsys):
    outcomes: list[str] = []

    @EXAMPLES
    @given(argv=argv_for(study_flags()))
    def prop(argv):
        storage = sandbox / "studies"
        before = files_under(sandbox)
        outcomes.append(check_outcome(lambda: grouping.main([*argv, "--storage", str(storage)]), "grouping.py", capsys))
        written = files_under(sandbox) - before
        assert all(storage in p.parents or p == storage for p in written), sorted(written)
        assert not list(storage.rglob("study.json"))  # a study that did not start leaves no study behind

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


@st.composite
def study_files(draw) -> str:
    """TOML over StudyConfig's real leaf fields (in their tables), a misspelt key now and then."""
    paths = [p for p in leaf_paths(StudyConfig).values() if p != "storage"]
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
        outcomes.append(check_outcome(run, "grouping.py", capsys))
        written = files_under(sandbox) - before
        assert all(storage in p.parents or p == storage for p in written), sorted(written)

    prop()
    assert "refused" in outcomes and "reached" in outcomes


def test_the_generators_cover_every_field():
    """Every StudyConfig leaf is a key the study-file generator can write, and every run field a flag."""
    study_keys = {p.rpartition(".")[2] for p in leaf_paths(StudyConfig).values()}
    assert {"epochs", "n_tokens", "k", "workers", "affinity_lr"} <= study_keys
    train_flags = {s for a in command_flags("train") for s in a.option_strings}
    assert {"--epochs", "--n-tokens", "--root", "--partition", "--workers"} <= train_flags
