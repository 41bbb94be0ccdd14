"""Hostile and broken study files and flags: each fails before Ray starts, with a message naming the setting."""

import pytest

from mmap_ray.study import program as grouping

pytestmark = pytest.mark.faults


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
    # issue 18 case 10: found from the task names, before the lock, Ray or study.json
    "k beyond the tasks": (
        "k = 7\n",
        "StudyConfig.schemes has 'gradient' (tasks ['Art', 'Clipart', 'Product', 'RealWorld'], k=7): k=7 groups "
        "is not valid for 4 tasks; choose 1 <= k <= 4",
    ),
    "one domain, two groups": ('[run.data]\ndomains = "Art"\n', "k=2 groups is not valid for 1 tasks"),
    "domain the toy lacks": (
        '[run.data]\ndomains = "Art,Photo"\n',
        "StudyConfig.run.data.domains=['Art', 'Photo'] has ['Photo'], which the toy benchmark does not have",
    ),
    "unknown dataset": (
        '[run.data]\ndataset = "imagenet"\n',
        "StudyConfig.run.data.dataset='imagenet' is not valid; choose one of ('toy', ",
    ),
    "partition of other tasks": ('schemes = ["A+B|C+D"]\n', "it names unknown tasks ['A', 'B', 'C', 'D']"),
    "no far-fetched suggestion": (  # 'num_workers' is not 'n_tokens' (issue 18 case 11)
        "[run.prompts]\nnum_workers = 2\n",
        "StudyConfig.run.prompts has unknown settings ['num_workers']; valid: [",
    ),
    "close spelling of a setting elsewhere": ('model_name = "ViT-B-16"\n', "(did you mean 'model' in [run.backbone]?)"),
    "variant that changes the tasks": (
        'variants = ["domains=Art,Clipart"]\n',
        "which sets ['domains']: every trial of a study shares its tasks and backbone",
    ),
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
        (["--max-concurrent-trials", "0"], "StudyConfig.max_concurrent_trials=0 must be >= 1, or unset for"),
        (["--max-concurrent-trials", "-2"], "StudyConfig.max_concurrent_trials=-2 must be >= 1, or unset for"),
        (["--mode", "search", "--epochs", "1"], "grace_period=2 exceeds run.train.epochs=1; ASHA needs grace_period"),
    ],
)
def test_bad_flags(argv, needle, tmp_path, capsys):
    code, err = _run([*argv, "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and needle in err, err


def test_storage_that_is_a_file_is_named_and_left_alone(tmp_path, capsys):
    """Issue 18 case 10: storage (or a folder above it) is a file: one line naming it, before anything."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for storage in (notes, notes / "studies"):
        code, err = _run(["--smoke", "--storage", str(storage)], capsys)
        assert code == 2 and f"StudyConfig.storage='{storage}': {notes} is a file, not a folder" in err, err
        assert "--resume" not in err
    assert notes.read_text() == "mine" and sorted(tmp_path.iterdir()) == [notes]


def test_missing_domain_folder_is_named_before_anything_is_written(tmp_path, capsys):
    """A dataset folder without one of the preset's domains: named from the folder names alone."""
    root = tmp_path / "office"
    (root / "Art" / "ant").mkdir(parents=True)
    code, err = _run(["--preset", "office-home", "--root", str(root), "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"StudyConfig.run.data: domain 'Clipart' has no folder: expected {root / 'Clipart'}" in err
    assert not (tmp_path / "s").exists()


def test_storage_and_root_the_filesystem_refuses_are_one_line(tmp_path, capsys):
    """Names longer than the filesystem allows, as storage and as the dataset root."""
    long = str(tmp_path / ("x" * 300))
    code, err = _run(["--smoke", "--storage", long], capsys)
    assert code == 2 and "File name too long" in err, err
    code, err = _run(["--preset", "office-home", "--root", long, "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and "run.data.root (--root)" in err and "File name too long" in err, err
    assert not list(tmp_path.iterdir())  # nothing written
