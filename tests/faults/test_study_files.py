"""Hostile and broken study files and flags: each fails before Ray starts, with a message naming the setting."""

import importlib.util

import pytest
from conftest import REPO

pytestmark = pytest.mark.faults

_spec = importlib.util.spec_from_file_location("grouping_study", REPO / "studies" / "grouping.py")
grouping = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grouping)

CASES = {  # study file text -> the message it must give
    "malformed": ("seeds = [0, 1\n", "is not valid TOML: "),
    "unknown key": ("epocs = 8\n", "unknown settings ['epocs'] (did you mean 'epochs' in [run.train]?)"),
    "unknown run key": (
        "[run.prompts]\nn_token = 4\n",
        "StudyConfig.run.prompts has unknown settings ['n_token'] (did you mean 'n_token' -> 'n_tokens'?)",
    ),
    "key in the wrong table": ("epochs = 8\n", "unknown settings ['epochs'] ('epochs' belongs in [run.train])"),
    "wrong type": (
        '[run.train]\nepochs = "8"\n',
        "StudyConfig.run.train.epochs='8' is not valid: it must be an integer",
    ),
    "empty axis": ("seeds = []\n", "fields ['seeds'] are empty"),
    "zero tokens": (
        "prompt_lengths = [0, 4]\n",
        "StudyConfig.prompt_lengths has [0]: every value must be an integer >= 1",
    ),
    "lr range": ("lr_range = [0.01, 0.001]\n", "lr_range=[0.01, 0.001] must be 0 < low <= high"),
    "bad mode": ('mode = "grid"\n', "StudyConfig.mode='grid' is not valid; choose one of ('compare', 'search')"),
    "bad scheme": ('schemes = ["gradient", "bogus"]\n', "StudyConfig.schemes has 'bogus'; valid: ("),
    "bad projection": (
        '[run.prompts]\nprojection = "kronn"\n',
        "StudyConfig.run.prompts.projection='kronn' is not valid; choose one of 'kron', ",
    ),
    "bad layers": ('[run.prompts]\nlayers = "0-x"\n', "StudyConfig.run.prompts.layers='0-x' is not valid: layer spec"),
    "negative gpus": ("[resources]\ngpus_per_worker = -1\n", "StudyConfig.resources.gpus_per_worker=-1 must be >= 0"),
    "bad storage scheme": ('storage = "ftp://host/studies"\n', "unsupported scheme 'ftp'"),
    "credentials in uri": ('storage = "s3://b/x?secret_key=abc"\n', "carries credentials (['secret_key'])"),
    "escaping name": ('name = "../../etc"\n', "StudyConfig.name='../../etc': use letters, digits"),
}


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = grouping.main(argv)
    except SystemExit as e:  # argparse: a value its type cannot parse (one line after the usage)
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("case", CASES)
def test_bad_study_file(case, tmp_path, capsys):
    text, needle = CASES[case]
    path = tmp_path / "study.toml"
    path.write_text(text)
    storage = [] if "storage =" in text else ["--storage", str(tmp_path / "s")]  # the flag would win over the file
    code, err = _run(["--study", str(path), *storage], capsys)
    assert code == 2 and needle in err, err
    assert str(path) in err or "StudyConfig" in err  # the file or the setting is named
    assert not (tmp_path / "s").exists()  # nothing was started or written


def test_missing_and_binary_study_files(tmp_path, capsys):
    code, err = _run(["--study", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and f"study file {tmp_path / 'nope.toml'} does not exist" in err
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00binary")
    code, err = _run(["--study", str(tmp_path / "bin.toml")], capsys)
    assert code == 2 and "is not a UTF-8 text file" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--worker-resources", "{A100: 1}"], "worker_resources='{A100: 1}' is not valid: '{A100: 1}' is not JSON"),
        (
            ["--worker-resources", '{"A100": "one"}'],
            "worker_resources={'A100': 'one'} is not valid: it must be a table",
        ),
        (["--epochs", "0"], "StudyConfig.run.train.epochs=0 must be >= 1"),
        (["--mode", "search", "--epochs", "1"], "grace_period=2 exceeds run.train.epochs=1; ASHA needs grace_period"),
    ],
)
def test_bad_flags(argv, needle, tmp_path, capsys):
    code, err = _run([*argv, "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and needle in err, err
