"""The entry points a Python user expects, as a user meets them: the installed `mmap-ray` script, `python -m
mmap_ray`, `mmap-ray study` (the program `studies/grouping.py` launches), and a plain `pip install .`."""

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN

import mmap_ray
from mmap_ray.study import program


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, cwd=cwd)


def test_version_from_the_script_and_from_python_m(tmp_path):
    for argv in ([str(VENV_BIN / "mmap-ray"), "--version"], [sys.executable, "-m", "mmap_ray", "--version"]):
        out = _run(*argv, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == f"mmap-ray {mmap_ray.__version__}", out
    assert "study" in _run(sys.executable, "-m", "mmap_ray", "--help").stdout


def test_a_preset_printed_as_a_study_file_round_trips(tmp_path, monkeypatch, capsys):
    """`mmap-ray study --preset oracle-k2 --print` is a study file: run back through --study, it prints the
    same settings, and it holds the preset's own (k=2 partitions, toy3, group prompts only)."""
    script = str(VENV_BIN / "mmap-ray")
    printed = _run(script, "study", "--preset", "oracle-k2", "--print", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    settings = tomllib.loads(printed.stdout)
    assert settings["name"] == "oracle-k2" and settings["run"]["data"]["dataset"] == "toy3"
    assert settings["run"]["prompts"]["task_prompts"] is False and "storage" not in settings  # the default
    assert sum("|" in s for s in settings["schemes"]) == 7
    (tmp_path / "k2.toml").write_text(printed.stdout)
    monkeypatch.chdir(tmp_path)  # the file read back, in this process (the command's seam is crossed above)
    assert program.main(["--study", "k2.toml", "--print"]) == 0
    assert capsys.readouterr().out == printed.stdout
    # the job launcher is the same program, with its own name in errors
    bad = _run(sys.executable, str(REPO / "studies" / "grouping.py"), "--preset", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("grouping.py: error: --preset 'nope' is not valid")


# Each command line is checked and refused (or printed) by the installed script; the probe then reports which of
# the heavy stacks it loaded. A settings check that imports torch or Ray makes every typo cost seconds.
LIGHT = [
    (["study", "--preset", "oracle-k2", "--print"], 0, ""),
    (["study", "--n-tokens", "0"], 2, "n_tokens=0 must be an integer >= 1"),
    (["study", "--preset", "nope"], 2, "--preset 'nope' is not valid"),
    (["train", "--lr", "-1"], 2, "TrainConfig.lr=-1.0 must be > 0"),
    (["train", "--workers", "0"], 2, "--workers 0 is not valid"),
    (["group", "--k", "2", "--scheme", "single"], 2, "--k 2 has no effect with --scheme single"),
    (["eval", "--run", "no-such-run"], 2, "--run no-such-run is not a finished run folder"),
    (["params", "--tasks", "Art,Art"], 2, "must name distinct tasks"),
]
PROBE = """
import runpy, sys
sys.argv = ["mmap-ray", *sys.argv[1:]]
try:
    runpy.run_module("mmap_ray", run_name="__main__")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "open_clip", "ray", "pandas", "matplotlib") if m in sys.modules)
print(f"exit {code}; loaded:", ",".join(heavy) or "none", file=sys.stderr)
"""


def test_a_refused_setting_and_a_printed_study_load_no_torch_open_clip_or_ray(tmp_path):
    for argv, code, said in LIGHT:
        out = _run(sys.executable, "-c", PROBE, *argv, cwd=tmp_path)
        assert said in (out.stdout + out.stderr), (argv, out.stderr)
        assert out.stderr.rstrip().endswith(f"exit {code}; loaded: none"), (argv, out.stderr)
        assert list(tmp_path.iterdir()) == [], argv  # nothing written
    assert _run(str(VENV_BIN / "mmap-ray"), *LIGHT[1][0], cwd=tmp_path).returncode == 2  # the script says so too


@pytest.mark.slow
def test_pip_install_of_the_project_gives_the_commands_and_their_data(tmp_path):
    """A non-editable install (the wheel pip builds) into a fresh venv, its dependencies seen from this one:
    the commands exist and the package data (presets, smoke layer, the tiny CLIP's weights) came along."""
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv)).returncode == 0
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (purelib / "deps-of-the-dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    source = tmp_path / "src"  # a copy: building a wheel writes build/ and egg-info into the source folder
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs")
    shutil.copytree(REPO, source, ignore=skip)
    install = _run(*pip, str(source), cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    script = str(venv / "bin" / "mmap-ray")
    assert _run(script, "--version", cwd=tmp_path).stdout.strip() == f"mmap-ray {mmap_ray.__version__}"
    helped = _run(script, "study", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--preset" in helped.stdout and "oracle-k2" in helped.stdout
    probe = (
        "import mmap_ray, os; from mmap_ray.toyclip import TOY2_RECIPE, pretrained_toy_clip; "
        "from mmap_ray.study.program import SMOKE, preset_settings; preset_settings('toy'); SMOKE.read_text(); "
        "print(os.path.dirname(mmap_ray.__file__), pretrained_toy_clip(TOY2_RECIPE))"
    )
    out = _run(str(venv / "bin" / "python"), "-c", probe, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    package, weights = out.stdout.split()
    assert package.startswith(str(purelib)) and weights.startswith(package)  # the installed copy, not this checkout
