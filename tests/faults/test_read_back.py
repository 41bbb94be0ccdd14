"""Hostile and unlucky inputs, round three: what one setting can exhaust, and what the tool reads back from
its own folders (checkpoints, predictions, run configs, result files). Each case failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_bad_inputs import TINY, run_cli

from mmap_ray.cli import main
from mmap_ray.study import program


def test_a_batch_larger_than_the_data_is_refused_before_allocating(capsys):
    """Case 1: `train --shots 2 --batch-size 100000` was killed by the kernel (23 GB resident) while the
    sampler cycled 96 images into one batch; it is now one line naming the batch and the data."""
    err = run_cli(capsys, "train", *TINY, "--shots", "2", "--epochs", "1", "--batch-size", "100000", "--no-progress")
    assert "batch_size=100000 exceeds the 96 training images of the 4 tasks (24, 24, 24, 24)" in err
    assert "use batch_size <= 96" in err


def test_a_study_batch_larger_than_the_data_is_refused_before_ray_or_any_file(tmp_path, capsys):
    code = program.main(["--smoke", "--batch-size", "100000", "--storage", str(tmp_path)], prog="mmap-ray study")
    err = capsys.readouterr().err
    assert code == 2 and "StudyConfig.run.train: batch_size=100000 exceeds the" in err, err
    assert "Traceback" not in err and not list(tmp_path.iterdir())  # no study folder, no lock


# ---- case 3: compare pairs only predictions of the same images ------------------------------------------

EVAL = ["eval", *TINY, "--domains", "Art,Clipart", "--shots", "2"]


def _predictions(tmp_path, name: str, *flags: str) -> str:
    path = str(tmp_path / f"{name}.parquet")
    assert main([*EVAL, *flags, "--predictions", path]) == 0
    return path


def test_compare_refuses_predictions_of_other_images_or_repeated_rows(tmp_path, capsys):
    seed0, seed1 = _predictions(tmp_path, "s0", "--data-seed", "0"), _predictions(tmp_path, "s1", "--data-seed", "1")
    capsys.readouterr()
    err = run_cli(capsys, "compare", seed0, seed1)
    assert "are predictions on different images (test images " in err and "same dataset, split and data seed" in err
    doubled = tmp_path / "doubled.parquet"
    table = pq.read_table(seed0)
    pq.write_table(pa.concat_tables([table, table]).replace_schema_metadata(table.schema.metadata), doubled)
    err = run_cli(capsys, "compare", seed0, str(doubled))
    assert f"predictions file {doubled} holds 768 images twice" in err  # 2 tasks x 12 classes x 32 test images
    assert main(["compare", seed0, _predictions(tmp_path, "again", "--data-seed", "0")]) == 0  # the same images


def test_compare_refuses_two_folder_datasets_of_the_same_layout(tmp_path, capsys):
    from test_data_folders import make_tree

    common = ["--dataset", "office-home", "--domains", "Art", "--shots", "2"]
    a, b = make_tree(tmp_path / "a", domains=["Art"]), tmp_path / "b"
    for i, image in enumerate(sorted(a.rglob("*.jpg"))):  # the same names, other pixels
        target = b / image.relative_to(a)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (255 - 5 * (i % 40), 7 * (i % 30), 11)).save(target, "JPEG")
    pa_, pb = (str(tmp_path / f"{n}.parquet") for n in "ab")
    assert main(["eval", *TINY, *common, "--root", str(a), "--predictions", pa_]) == 0
    assert main(["eval", *TINY, *common, "--root", str(b), "--predictions", pb]) == 0
    capsys.readouterr()
    assert "are predictions on different images" in run_cli(capsys, "compare", pa_, pb)


def test_older_predictions_without_an_identity_pair_by_task_image_and_label(tmp_path, capsys):
    """A file from before identities is still compared where its images pair up, with a note saying so."""
    art = _predictions(tmp_path, "art", "--domains", "Art")
    both = _predictions(tmp_path, "both")
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(both).replace_schema_metadata({b"mmap_ray.schema_version": b"5"}), old)
    capsys.readouterr()
    assert main(["compare", both, str(old)]) == 0
    assert f"note: {old} does not say which images it holds" in capsys.readouterr().out
    assert "are not predictions on the same images" in run_cli(capsys, "compare", art, str(old))


# ---- case 4: a run is evaluated only with the settings it was trained with -------------------------------


@pytest.mark.parametrize(
    "edit, older, said",
    [
        ({"task_prompts": True}, False, "task_prompts: False (checkpoint) != True (model)"),
        ({"combine": "add"}, False, "combine: 'concat' (checkpoint) != 'add' (model)"),
        # a checkpoint from before the settings were saved in it: the tensors themselves must fit
        (
            {"task_prompts": True},
            True,
            "checkpoint lacks 3 of the model's trainable parameters (['bank.task_specific.source'",
        ),
    ],
)
def test_eval_of_a_run_whose_config_was_edited_is_refused(tmp_path, capsys, edit, older, said):
    run = tmp_path / "run"
    flags = ["--domains", "Art,Clipart", "--shots", "2", "--n-tokens", "2", "--no-task-prompts", "--batch-size", "16"]
    assert main(["train", *TINY, *flags, "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    config["run"]["prompts"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    if older:
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        del state["prompts"]
        torch.save(state, run / "checkpoint.pt")
    capsys.readouterr()
    err = run_cli(capsys, "eval", "--run", str(run))
    assert f"--run {run}: {run / 'checkpoint.pt'} does not fit {run / 'config.json'}" in err and said in err, err


# ---- case 5: images of more than 8 bits keep their range ---------------------------------------------------


def test_16_bit_images_are_scaled_not_saturated_and_unscalable_ones_are_named(tmp_path):
    from mmap_ray.data.base import ImageListDataset
    from mmap_ray.data.images import drop_unreadable

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image, _ = ImageListDataset([(tmp_path / "deep.png", 0)])[0]
    got = np.asarray(image)  # (64, 64, 3) uint8
    assert image.mode == "RGB" and np.abs(got[..., 0].astype(float) - ramp / 257).max() <= 0.5
    assert (got == 255).mean() < 0.01  # before: 99.4% of the pixels clipped to white
    Image.fromarray(np.full((8, 8), 70_000, dtype=np.int32), "I").save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide.tif: ValueError: mode I pixels range 70000..70000, outside 0..65535"):
        drop_unreadable(tmp_path, ["deep.png", "wide.tif"], skip=False)


def test_an_image_over_the_pixel_cap_is_refused_by_name_before_it_is_decoded(tmp_path, monkeypatch, capsys):
    """A 90-megapixel image (PIL's own warning starts at 89) is refused in one error that names it and its
    size, even with skip_bad_images (dropping it would change the data without the trial's identity saying
    so); the checked-images cache remembers under which cap an image passed."""
    import re
    import warnings

    from mmap_ray.cli import main
    from mmap_ray.data.images import drop_unreadable

    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cache"))
    Image.new("L", (10_000, 9_000)).save(tmp_path / "huge.png")  # compresses to a few hundred KB
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail the test here
        with pytest.raises(ValueError) as e:
            drop_unreadable(tmp_path, ["huge.png", "small.png"], skip=True)
    said = str(e.value)
    assert re.search(r"1 of 2 image files under \S+ are larger than max_image_pixels=64,000,000", said), said
    assert f"{tmp_path / 'huge.png'}: too large: 10000x9000 = 90,000,000 pixels" in said
    assert "--max-image-pixels" in said
    assert drop_unreadable(tmp_path, ["small.png"], skip=False, max_pixels=1024) == set()  # 32 x 32 = 1024
    with pytest.raises(ValueError, match="small.png: too large: 32x32 = 1,024 pixels"):  # not the cached pass
        drop_unreadable(tmp_path, ["small.png"], skip=False, max_pixels=1000)
    assert main(["train", "--max-image-pixels", "0"]) == 2
    assert "DataConfig.max_image_pixels=0 must be an integer >= 1" in capsys.readouterr().err


# ---- case 6: a results folder counts only the files that are what their names say -----------------------


def test_copies_other_studies_rows_and_a_linked_results_folder_are_skipped_by_name(tmp_path, capsys):
    import shutil

    from test_report import fabricate

    from mmap_ray.results import load

    results = Path(fabricate(tmp_path / "s1").path)
    rows = load(results)
    first = sorted((results / "trials").glob("*.parquet"))[0]
    shutil.copy(first, first.with_name(first.stem + " (copy).parquet"))
    other = pq.read_table(first)  # another study's row (seed 9), under the name its identity gives
    other = other.set_column(other.schema.get_field_index("study"), "study", pa.array(["other"]))
    other = other.set_column(other.schema.get_field_index("seed"), "seed", pa.array([9]))
    pq.write_table(other, results / "trials" / (first.stem[:-2] + "s9.parquet"))
    with pytest.warns(UserWarning) as seen:
        again = load(results)
    said = "\n".join(str(w.message) for w in seen)
    assert f"skipping {first.with_name(first.stem + ' (copy).parquet')}: its rows are of" in said
    assert "its rows belong to study ['other'], not to 'fab'" in said
    assert len(again) == len(rows) and not again.duplicated(["config_id", "seed"]).any()
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0  # before: a pandas error

    linked = tmp_path / "s3"
    linked.mkdir()
    (linked / "study.json").write_text(json.dumps({"name": "s3"}))
    (linked / "results").symlink_to(results)  # another study's results, linked in
    capsys.readouterr()
    assert main(["report", str(linked / "results")]) == 2
    err = capsys.readouterr().err
    assert "no trials results of study 's3' in" in err and ": 17 files, e.g. skipping" in err, err


def test_a_results_folder_read_at_once_equals_each_file_read_on_its_own(tmp_path):
    """`load` converts a folder of current-schema files in one go: the same frame as each file checked,
    converted and joined on its own; files whose column types differ fall back to one at a time."""
    from test_report import fabricate

    from mmap_ray.results import CATEGORIES, _concat_arrow, _frame, _read, load
    from mmap_ray.storage import location

    results = Path(fabricate(tmp_path / "s1").path)
    for table in ("trials", "epochs"):
        keys = ["config_id", "seed"] + (["epoch"] if table == "epochs" else [])
        once = load(results, table).sort_values(keys).reset_index(drop=True)
        each = [_frame(*_read(f), f) for f in (location(str(results)) / table).glob("*.parquet")]
        each = pd.concat(each, ignore_index=True).sort_values(keys).reset_index(drop=True)
        each = each.astype({c: "category" for c in CATEGORIES if c in each})
        assert len(once) > 1
        pd.testing.assert_frame_equal(once, each)
    mixed = _concat_arrow([pa.table({"a": [1, 2]}), pa.table({"a": ["x"]})])
    assert [f["a"].tolist() for f in mixed] == [[1, 2], ["x"]]


# ---- case 7: one line where a traceback was ------------------------------------------------------------


def test_deeply_nested_files_and_symlink_loops_are_one_line(tmp_path, capsys):
    deep_json, deep_toml = tmp_path / "deep.json", tmp_path / "deep.toml"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    deep_toml.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    err = run_cli(capsys, "train", *TINY, "--partition", str(deep_json), "--epochs", "0", "--out", str(tmp_path / "r"))
    assert f"{deep_json} nests its JSON too deeply to read" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(deep_json.read_text())
    torch.save({}, run / "checkpoint.pt")
    assert f"{run / 'config.json'} nests its JSON too deeply" in run_cli(capsys, "eval", "--run", str(run))
    assert program.main(["--study", str(deep_toml)]) == 2
    assert f"{deep_toml} nests its TOML too deeply to read" in capsys.readouterr().err
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert program.main(["--smoke", "--storage", str(loop)]) == 2
    assert "a symlink loop?" in capsys.readouterr().err
    assert f"results folder {loop} does not exist" in run_cli(capsys, "report", str(loop))


@pytest.mark.parametrize(
    "flag, said",
    [
        ("--init-std", "before any update: the initial prompts (init_std) or the images give non-finite logits"),
        ("--lr", "the run diverged; lower the learning rate or set grad_clip"),
    ],
)
def test_a_diverging_train_run_is_one_line_with_the_right_hint(tmp_path, capsys, flag, said):
    argv = ["train", *TINY, "--domains", "Art", "--shots", "4", "--batch-size", "8", "--epochs", "2", "--no-progress"]
    assert main([*argv, flag, "1e30", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmap-ray train: error: training loss is nan") and said in err and "Traceback" not in err


# ---- case 2: a study trial's checkpoint that does not load -------------------------------------------------


def test_an_unreadable_trial_checkpoint_is_never_loaded_and_is_set_aside(tmp_path):
    """The results callback read the failed trial's newest checkpoint again and raised (no row, a TuneError);
    now it reads no history from it (the trial's row has status ERROR and the trial's error names the file),
    and a resume moves it aside, so the trial continues from the checkpoint before it."""
    import pickle

    from mmap_ray import checkpoint
    from mmap_ray.distributed import RUN_NAME
    from mmap_ray.study.callback import history

    run = tmp_path / "train" / "c-s0" / RUN_NAME
    good = {"trainable": {}, "optimizer": {}, "scheduler": {}, "history": [{"epoch": 1}], "train_config": {}}
    checkpoint.save(good, run / "checkpoint_2026-01-01_00-00-00.000000" / "state.pt")
    bad = run / "checkpoint_2026-01-01_00-00-01.000000" / "state.pt"
    bad.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    bad.write_bytes(pickle.dumps(Path.touch, protocol=2) + pickle.dumps((marker,)))  # not a run checkpoint
    assert history(str(tmp_path), "c-s0") == []  # before: ValueError out of the Tune callback
    moved = checkpoint.set_aside_unreadable(run)
    assert [m.name for m, _ in moved] == ["unreadable-checkpoint_2026-01-01_00-00-01.000000"]
    assert f"checkpoint {bad} holds a pickled Python object" in moved[0][1] and "refused" in moved[0][1]
    assert history(str(tmp_path), "c-s0") == [{"epoch": 1}] and not marker.exists()
    assert checkpoint.set_aside_unreadable(run) == []  # the good one stays


# ---- weak cases made clear -----------------------------------------------------------------------------------


def _smoke_study_folder(tmp_path, name: str) -> Path:
    """A study folder as a started smoke study leaves it: its study.json, no rows yet."""
    from mmap_ray.fields import to_dict

    study = program.build_study(program.build_parser().parse_args(["--smoke", "--storage", str(tmp_path)]))
    folder = tmp_path / name
    (folder / "results" / "trials").mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(to_dict(study) | {"name": name}))
    return folder


def test_damaged_stored_rows_and_settings_are_named_before_anything_is_claimed(tmp_path, capsys):
    folder = _smoke_study_folder(tmp_path, "z")
    empty = folder / "results" / "trials" / "0123456789abcdef-s0.parquet"
    empty.write_bytes(b"")  # a zero-byte trial file
    resume = ["--smoke", "--storage", str(tmp_path), "--name", "z", "--resume"]
    assert program.main(resume) == 2
    err = capsys.readouterr().err
    assert f"results file {empty} cannot be read" in err and "Traceback" not in err, err
    assert not (folder / ".lock").exists() and not (folder / "tune").exists()  # found before the lock or Ray
    empty.unlink()
    (folder / "study.json").write_text("null")
    assert program.main(resume) == 2
    assert f"--resume: {folder / 'study.json'} holds NoneType, not a study's settings" in capsys.readouterr().err


def test_a_report_on_a_running_study_says_so_and_a_full_disk_leaves_no_part(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    from test_report import fabricate

    results = Path(fabricate(tmp_path / "s").path)
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "started": "now"}
    (results.parent / ".lock").write_text(json.dumps(lock))
    assert main(["report", str(results), "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    assert f"the study is still running (pid {os.getpid()} on host" in out
    assert "The study is still running" in (tmp_path / "r1" / "report.md").read_text()

    full = tmp_path / "r2"  # a disk that fills up: files may not grow past 20 KB (EFBIG, as ENOSPC)
    code = (
        "import resource, signal, sys\n"
        "from mmap_ray.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
        f"sys.exit(main(['report', {str(results)!r}, '--out', {str(full)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"cannot write {full}" in done.stderr  # the file that did not fit, by path
    assert not [p for p in full.rglob("*") if p.name.startswith(".report") or p.name == "report.html"]


def test_a_cache_that_is_a_file_a_one_class_domain_and_a_control_character_are_one_line(tmp_path, capsys, monkeypatch):
    from test_data_folders import make_tree

    flags = ["train", *TINY, "--dataset", "folders", "--epochs", "0", "--out", str(tmp_path / "run")]
    one = make_tree(tmp_path / "one", domains=["A", "B"], classes=["only"], n=12)
    assert "are only ['only']: a task needs at least 2 classes" in run_cli(capsys, *flags, "--root", str(one))
    odd = make_tree(tmp_path / "odd", domains=["A", "B\nC"], classes=["x", "y"], n=12)
    assert "has control characters; rename the folder" in run_cli(capsys, *flags, "--root", str(odd))
    good = make_tree(tmp_path / "good", domains=["A", "B"], classes=["x", "y"], n=12)
    (tmp_path / "cachefile").write_text("")
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cachefile"))  # what a user sets by mistake
    assert "MMAP_RAY_CACHE=" in run_cli(capsys, *flags, "--root", str(good))
