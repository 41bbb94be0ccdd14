"""Hostile and broken inputs: each is refused with a message that names the value or path at fault and
what would be valid, and the `mmap-ray` command reports it as one line (exit status 2, no traceback).

Covers weights files (not a checkpoint, another architecture, a pickle that would run code), run
checkpoints, image files (truncated, not an image, empty), paths that leave the data root (`..` in split
lists and split files, symlinks), split-list labels, dataset folders, and out-of-range training options.
Everything is tiny: the 4-block toy CLIP with random weights and 8x8 JPEG trees.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import zlib
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from test_data_folders import jpeg, make_domainnet, make_tree

from mmap_ray.backbone import TINY_MODEL, BackboneConfig, load_backbone
from mmap_ray.cli import main
from mmap_ray.data.base import ImageListDataset
from mmap_ray.data.folders import FolderDataConfig, load_folder_tasks
from mmap_ray.engine import load_checkpoint

pytestmark = pytest.mark.faults

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]
FAST = [*TINY, "--n-tokens", "2", "--epochs", "1", "--batch-size", "8", "--no-progress", "--domains", "Art"]


def run_cli(capsys, *argv: str) -> str:
    """Run `mmap-ray ARGV`, expect exit status 2 with one error line and no traceback; return stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"mmap-ray {argv[0]}: error: ") and "Traceback" not in err, err
    return err


class WritesMarker:
    """Unpickling this calls open(marker, "w"): the file appears only if the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder-per-domain dataset: two domains, two classes, six 8x8 JPEGs each (a train, val and test
    image per class)."""
    return make_tree(tmp_path / "data", domains=("Art", "Clip"), classes=("ant", "bee"), n=6)


def folders(root: Path, **kw) -> FolderDataConfig:
    return FolderDataConfig("folders", root, **kw)


# ---- pretrained weights files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, said",
    [
        (random.Random(0).randbytes(4096), "is not a PyTorch checkpoint"),
        (b"model weights: see README\n", "is not a PyTorch checkpoint"),
        (b"", "is an empty file (0 bytes)"),
    ],
    ids=["random-bytes", "text", "empty"],  # the same ids in every pytest-xdist worker
)
def test_weights_file_that_is_not_a_checkpoint(tmp_path, capsys, content, said):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    err = run_cli(capsys, "params", "--tasks", "A,B", "--model", TINY_MODEL, "--pretrained", str(path))
    assert f"pretrained weights file for {TINY_MODEL} {path} {said}" in err
    assert "torch.save(model.state_dict(), path)" in err  # what a valid file is


def test_weights_file_of_another_architecture_names_the_mismatch(tmp_path):
    other = open_clip.create_model(TINY_MODEL).state_dict()
    other["visual.proj"] = torch.zeros(8, 64)  # another vision width
    del other["ln_final.weight"]
    other["head.weight"] = torch.zeros(3)
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError) as e:
        load_backbone(BackboneConfig(TINY_MODEL, str(tmp_path / "other.pt")))
    msg = str(e.value)
    assert f"does not match the architecture {TINY_MODEL!r}" in msg
    assert "1 missing keys: ['ln_final.weight']" in msg and "1 unexpected keys: ['head.weight']" in msg
    assert "1 shape mismatches (file vs model): ['visual.proj (8, 64) vs (96, 64)']" in msg
    assert "the --model these weights were saved from" in msg


def test_weights_file_that_holds_no_state_dict(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt holds a list, not a state dict \(parameter name -> tensor\)"):
        load_backbone(BackboneConfig(TINY_MODEL, str(tmp_path / "list.pt")))


def test_weights_wrapped_in_state_dict_with_ddp_prefix_still_load(tmp_path, tiny):
    torch.manual_seed(5)
    src = open_clip.create_model(TINY_MODEL).state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.items()}}, tmp_path / "ddp.pt")
    loaded = load_backbone(BackboneConfig(TINY_MODEL, str(tmp_path / "ddp.pt")))
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in src.items())


def test_weights_safetensors_load_and_a_bad_one_is_named(tmp_path):
    from safetensors.torch import save_file

    src = open_clip.create_model(TINY_MODEL).state_dict()
    save_file({k: v.contiguous() for k, v in src.items()}, tmp_path / "w.safetensors")
    loaded = load_backbone(BackboneConfig(TINY_MODEL, str(tmp_path / "w.safetensors")))
    assert torch.equal(loaded.model.visual.proj, src["visual.proj"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=r"bad.safetensors is not a valid .safetensors file"):
        load_backbone(BackboneConfig(TINY_MODEL, str(tmp_path / "bad.safetensors")))


@pytest.mark.parametrize(
    "value, said",
    [
        ("/no/such/weights.pt", "pretrained='/no/such/weights.pt': no such file;"),
        ("laion9b", f"pretrained='laion9b': no such file and not a pretrained tag of {TINY_MODEL};"),
    ],
)
def test_weights_path_or_tag_that_does_not_exist(capsys, value, said):
    err = run_cli(capsys, "params", "--tasks", "A", "--model", TINY_MODEL, "--pretrained", value)
    assert said in err and "or None for random weights" in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle
@pytest.mark.parametrize("save", ["torch", "pickle"])
def test_weights_pickle_that_would_run_code_is_refused_unrun(tmp_path, capsys, save):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pt"
    payload = {"visual.proj": torch.zeros(1), "x": WritesMarker(marker)}
    if save == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    err = run_cli(capsys, "params", "--tasks", "A", "--model", TINY_MODEL, "--pretrained", str(path))
    assert not marker.exists()  # the payload never ran
    if save == "torch":
        assert "holds a pickled Python object (io.open)" in err and "refused, since loading it could run code" in err
    else:  # a plain pickle is not torch's format: refused before any object is built
        assert f"{path} is not a PyTorch checkpoint" in err


# ---- run checkpoints ---------------------------------------------------------------------------------


def _run_folder(tmp_path: Path, data: Path, checkpoint: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "run": {
            "data": {"dataset": "folders", "root": str(data)},
            "backbone": {"pretrained": "none"},
            "prompts": {"n_tokens": 2},
        }
    }
    (run / "config.json").write_text(json.dumps(config))
    torch.save(checkpoint, run / "checkpoint.pt")
    return run


def test_run_checkpoint_that_would_run_code_is_refused_unrun(tree, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = _run_folder(tmp_path, tree, {"trainable": {}, "history": [WritesMarker(marker)]})
    err = run_cli(capsys, "eval", "--run", str(run))
    assert not marker.exists()
    assert f"checkpoint {run / 'checkpoint.pt'} holds a pickled Python object (io.open)" in err


def test_run_checkpoint_of_another_kind_is_named(tree, tmp_path, capsys):
    run = _run_folder(tmp_path, tree, {"visual.proj": torch.zeros(2)})  # a weights file, not a run checkpoint
    err = run_cli(capsys, "eval", "--run", str(run))
    assert "is not an mmap-ray run checkpoint: it lacks ['trainable', 'optimizer'" in err
    with pytest.raises(ValueError, match="not an mmap-ray run checkpoint"):
        load_checkpoint(run / "checkpoint.pt")


# ---- image files ---------------------------------------------------------------------------------------


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_jpeg_named_at_load_time(tmp_path, capsys):
    root = make_tree(tmp_path / "data", domains=("Art",), classes=("ant", "bee"), n=6)
    Image.effect_noise((64, 64), 60).convert("RGB").save(root / "Art" / "bee" / "cut.jpg", "JPEG")
    cut = _truncate(root / "Art" / "bee" / "cut.jpg")
    with Image.open(cut) as im:
        im.verify()  # the header is intact: only decoding sees the missing half
    err = run_cli(capsys, "train", *FAST, "--dataset", "folders", "--root", str(root), "--out", str(tmp_path / "o"))
    assert "1 of 13 image files" in err and f"{cut}: OSError: image file is truncated" in err
    assert "skip_bad_images=True" in err  # what to do about it


@pytest.mark.parametrize(
    "name, content, said",
    [
        ("notes.jpg", b"these are notes, not pixels\n", "cannot identify image file"),
        ("empty.jpg", b"", "cannot identify image file"),
    ],
)
def test_file_that_is_not_an_image_is_named(tree, name, content, said):
    bad = tree / "Clip" / "ant" / name
    bad.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_folder_tasks(folders(tree))
    assert str(e.value).startswith("1 of 25 image files") and f"{bad}: UnidentifiedImageError: {said}" in str(e.value)


def test_image_broken_after_loading_is_named_at_first_read(tmp_path):
    path = tmp_path / "x.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(path, "JPEG")
    data = ImageListDataset([(path, 0)])
    _truncate(path)  # damaged after the load-time check, or never checked (a hand-built list)
    with pytest.raises(ValueError, match=rf"image {path} cannot be decoded \(OSError: image file is truncated"):
        data[0]


# ---- paths that leave the data root --------------------------------------------------------------------


def test_split_list_line_escaping_root_with_dotdot(tmp_path, capsys):
    root = make_domainnet(tmp_path / "dn", ("real",), ("ant", "bee"), 2, 1, tmp_path / "dn")
    jpeg(tmp_path / "secret" / "key.jpg")  # exists, outside the root
    with (root / "real_train.txt").open("a") as f:
        f.write("real/../../secret/key.jpg 0\n")
    err = run_cli(
        capsys,
        "train",
        *TINY,
        "--dataset",
        "domainnet",
        "--root",
        str(root),
        "--domains",
        "real",
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        f"real_train.txt, line 5: 'real/../../secret/key.jpg' resolves to "
        f"{(tmp_path / 'secret' / 'key.jpg').resolve()}, outside the data root {root.resolve()}"
    ) in err


def test_symlinked_image_pointing_outside_root(tree, tmp_path):
    outside = jpeg(tmp_path / "elsewhere" / "x.jpg")
    (tree / "Art" / "ant" / "link.jpg").symlink_to(outside)
    with pytest.raises(
        ValueError, match=r"image 'Art/ant/link.jpg' resolves to .*elsewhere/x.jpg, outside the data root"
    ):
        load_folder_tasks(folders(tree))


def test_symlinked_class_folder_pointing_outside_root(tree, tmp_path):
    make_tree(tmp_path / "other", domains=("X",), classes=("cow",), n=2)
    (tree / "Art" / "cow").symlink_to(tmp_path / "other" / "X" / "cow", target_is_directory=True)
    (tree / "Clip" / "cow").mkdir()
    jpeg(tree / "Clip" / "cow" / "c.jpg")
    with pytest.raises(ValueError, match=r"image 'Art/cow/cow_000.jpg' resolves to .*other/X/cow/cow_000.jpg, outside"):
        load_folder_tasks(folders(tree))


def test_symlink_inside_root_is_fine(tree):
    (tree / "Art" / "ant" / "again.jpg").symlink_to(tree / "Clip" / "ant" / "ant_000.jpg")
    tasks = load_folder_tasks(folders(tree))
    assert sum(len(getattr(tasks[0], s)) for s in ("train", "val", "test")) == 13


def test_split_file_entry_escaping_root(tree, tmp_path):
    splits = tmp_path / "splits"
    load_folder_tasks(folders(tree, splits_dir=str(splits)))
    saved = json.loads((splits / "Art.json").read_text())
    saved["train"][0][0] = "/etc/passwd"  # absolute: root / "/etc/passwd" is /etc/passwd
    (splits / "Art.json").write_text(json.dumps(saved))
    with pytest.raises(
        ValueError, match=r"Art.json: train entry '/etc/passwd' resolves to /etc/passwd, outside the data root"
    ):
        load_folder_tasks(folders(tree, splits_dir=str(splits)))


# ---- split-list labels and dataset folders ---------------------------------------------------------


def test_split_list_label_not_an_integer(tmp_path):
    root = make_domainnet(tmp_path, ("real",), ("ant", "bee"), 2, 1, tmp_path)
    (root / "real_test.txt").write_text("real/ant/real_000_000002.jpg zero\n")
    with pytest.raises(
        ValueError,
        match=r"real_test.txt, line 1: 'real/ant/real_000_000002.jpg zero' is not "
        r"'real/<class>/<file> <label>'",
    ):
        load_folder_tasks(FolderDataConfig("domainnet", root))


def test_split_list_label_out_of_range(tmp_path):
    root = make_domainnet(tmp_path, ("real",), ("ant", "bee"), 2, 1, tmp_path)
    text = (root / "real_train.txt").read_text().replace("jpg 1\n", "jpg 7\n")
    (root / "real_train.txt").write_text(text)
    (root / "real_test.txt").write_text((root / "real_test.txt").read_text().replace("jpg 1\n", "jpg 7\n"))
    with pytest.raises(ValueError, match=r"the domainnet split lists use labels \[0, 7\]\.\.\., not 0\.\.1"):
        load_folder_tasks(FolderDataConfig("domainnet", root))


def test_missing_domain_folder_through_cli(tree, tmp_path, capsys):
    err = run_cli(
        capsys,
        "train",
        *TINY,
        "--dataset",
        "folders",
        "--root",
        str(tree),
        "--domains",
        "Art,Sketch",
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        f"domain 'Sketch' has no folder: expected {tree / 'Sketch'}; domains found under {tree}: ['Art', 'Clip']" in err
    )


def test_missing_root_through_cli(tmp_path, capsys):
    err = run_cli(
        capsys,
        "train",
        *TINY,
        "--dataset",
        "folders",
        "--root",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "o"),
    )
    assert f"root={str(tmp_path / 'nowhere')!r} is not an existing directory" in err


def test_empty_class_folder_is_named(tree):
    (tree / "Clip" / "cow").mkdir()
    jpeg(tree / "Art" / "cow" / "c.jpg")
    with pytest.raises(ValueError) as e:
        load_folder_tasks(folders(tree))
    msg = str(e.value)
    assert "'Clip' lacks 1: ['cow']" in msg and "These class folders hold no images" in msg
    assert str(tree / "Clip" / "cow") in msg


@pytest.mark.parametrize("content", ["{not json", '{"scheme": "gradient"}', '{"partition": [["Art"]]}'])
def test_partition_file_that_group_did_not_write(tree, tmp_path, capsys, content):
    bad = tmp_path / "groups.json"
    bad.write_text(content)
    err = run_cli(
        capsys,
        "train",
        *FAST,
        "--dataset",
        "folders",
        "--root",
        str(tree),
        "--partition",
        str(bad),
        "--out",
        str(tmp_path / "run"),
    )
    assert f"partition file {bad} is not what `mmap-ray group` writes: JSON with a 'partition' string" in err


# ---- out-of-range training options -------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, said",
    [
        ("--epochs", "-1", "TrainConfig.epochs=-1 must be >= 0"),
        ("--batch-size", "0", "TrainConfig.batch_size=0 must be >= 1"),
        ("--lr", "0", "TrainConfig.lr=0.0 must be > 0 and finite"),
        ("--lr", "inf", "TrainConfig.lr=inf must be > 0 and finite"),
        ("--lr", "nan", "TrainConfig.lr=nan must be > 0 and finite"),
        ("--weight-decay", "-0.1", "TrainConfig.weight_decay=-0.1 must be >= 0 and finite"),
        ("--loader-workers", "-2", "TrainConfig.loader_workers=-2 must be >= 0"),
        ("--workers", "-1", "--workers -1 is not valid; give 1 (train in this process, the default) or more"),
        ("--workers", "0", "--workers 0 is not valid; give 1 (train in this process, the default) or more"),
        ("--n-tokens", "0", "MmAPConfig.n_tokens=0 must be an integer >= 1"),
        (
            "--n-tokens",
            str(2**63),
            f"MmAPConfig.n_tokens={2**63} is out of range: integers must lie in [-2**31, 2**31)",
        ),
        ("--seed", str(2**40), f"TrainConfig.seed={2**40} is out of range"),  # found by test_properties.py
        ("--source-dim", "0", "MmAPConfig.source_dim=0 must be a positive integer or None"),
        (
            "--layers",
            "2-1,x",
            "MmAPConfig.layers='2-1,x' is not valid: layer spec '2-1,x' is not valid; use e.g. '0-10', '0,2,4'",
        ),
        ("--layers", "0,0", "MmAPConfig.layers=(0, 0) repeats a layer"),
    ],
)
def test_train_option_out_of_range_refused_before_any_work(tmp_path, capsys, option, value, said):
    out = tmp_path / "run"
    err = run_cli(capsys, "train", *FAST, f"{option}={value}", "--out", str(out))
    assert said in err
    assert not out.exists()  # refused before the run folder, the backbone or the data


@pytest.mark.parametrize(
    "option, value, said",
    [
        (
            "--layers",
            "0-5",
            (
                f"MmAPConfig.layers=[0, 1, 2, 3, 4, 5] has [4, 5] beyond {TINY_MODEL}'s text tower, "
                f"which has 4 blocks; valid block indices are 0..3"
            ),
        ),
        ("--shots", "0", "shots=0 must be None (all images) or an integer >= 1"),
    ],
)
def test_train_option_out_of_range_for_the_loaded_model_or_data(tree, tmp_path, capsys, option, value, said):
    data = ["--dataset", "folders", "--root", str(tree)]
    err = run_cli(capsys, "train", *FAST, *data, f"{option}={value}", "--out", str(tmp_path / "run"))
    assert said in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "option, value",
    [("--projection", "kronecker"), ("--optimizer", "adam"), ("--dataset", "imagenet"), ("--epochs", "ten")],
)
def test_train_option_outside_its_choices_is_an_argparse_error(capsys, option, value):
    with pytest.raises(SystemExit) as e:
        main(["train", option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}: invalid" in err and repr(value) in err
    assert "Traceback" not in err


# ---- round two (issue 18): run folders that are not ours ------------------------------------------------


def test_train_out_that_is_a_file_is_refused(tmp_path, capsys):
    """Case 2: `--out FILE` where FILE exists: one line, and the file is left as it was."""
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    err = run_cli(capsys, "train", *FAST, "--out", str(out))
    assert f"--out {out} is a file; give a run folder" in err
    assert out.read_text() == "mine"


@pytest.mark.parametrize(
    "text, said",
    [
        ('{"other_tool": 1}', "has no 'run' table: it is not the config.json `mmap-ray train` writes"),
        ("{not json", "is not valid JSON"),
        ('{"run": {"dataset": "toy"}}', "run has unknown settings ['dataset'] ('dataset' belongs in [run.data])"),
    ],
)
def test_eval_of_a_folder_that_is_not_a_run_names_its_config(tmp_path, capsys, text, said):
    """Case 3: `eval --run DIR` where DIR/config.json is another tool's, not JSON, or from an earlier layout."""
    run = tmp_path / "other"
    run.mkdir()
    (run / "config.json").write_text(text)
    torch.save({"trainable": {}}, run / "checkpoint.pt")
    err = run_cli(capsys, "eval", "--run", str(run))
    assert str(run / "config.json") in err and said in err


def test_prompts_too_large_for_this_machine_are_refused_before_allocating(capsys):
    """Case 1: `params --n-tokens 100000000` names the memory it would need instead of failing to allocate."""
    err = run_cli(capsys, "params", "--tasks", "A,B", *TINY, "--n-tokens", "100000000")
    assert "MmAPConfig.n_tokens=100000000: the prompts of 3 groups and tasks" in err
    assert "GiB, more than half of this machine's" in err and "use fewer tokens or layers" in err


# ---- round two (issue 18): datasets too small to split ----------------------------------------------------


@pytest.mark.parametrize(
    "n, sizes, empty", [(3, "train=4, val=0, test=2", "val empty"), (1, "train=2, val=0, test=0", "val and test empty")]
)
def test_domain_too_small_for_every_split_is_refused_before_training(tmp_path, capsys, n, sizes, empty):
    """Case 4: a domain whose classes hold too few images for a val (or test) image is refused at load time,
    naming the domain, the split sizes and the class size that would do (before: ZeroDivisionError after
    the first epoch)."""
    root = make_tree(tmp_path / "data", domains=("Art",), classes=("ant", "bee"), n=n)
    out = tmp_path / "run"
    err = run_cli(capsys, "train", *FAST, "--dataset", "folders", "--root", str(root), "--out", str(out))
    assert f"domain 'Art' under {root} splits into {sizes} images: {empty}" in err
    assert "a class needs at least 6 images" in err
    assert not (out / "checkpoint.pt").exists()  # nothing was trained


def test_split_file_with_an_empty_split_is_named(tmp_path):
    root = make_tree(tmp_path / "data", domains=("Art",), classes=("ant", "bee"), n=6)
    cfg = FolderDataConfig("folders", root, splits_dir=str(tmp_path / "splits"))
    load_folder_tasks(cfg)  # writes the split file
    saved = tmp_path / "splits" / "Art.json"
    data = json.loads(saved.read_text())
    data["train"] += data.pop("test")
    data["test"] = []
    saved.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"test empty; the split file {saved}, written by an earlier run"):
        load_folder_tasks(cfg)


def test_a_refused_split_is_not_saved_so_adding_images_fixes_it(tmp_path):
    """The refusal comes before the split file is written: after adding images, the same command works."""
    root = make_tree(tmp_path / "data", domains=("Art",), classes=("ant", "bee"), n=3)
    cfg = FolderDataConfig("folders", root, splits_dir=str(tmp_path / "splits"))
    with pytest.raises(ValueError, match="val empty"):
        load_folder_tasks(cfg)
    assert not (tmp_path / "splits" / "Art.json").exists()
    make_tree(root, domains=("Art",), classes=("ant", "bee"), n=6)
    (task,) = load_folder_tasks(cfg)
    assert len(task.val) > 0 and (tmp_path / "splits" / "Art.json").is_file()


def test_a_split_emptied_by_skipped_images_names_them(tmp_path):
    root = make_tree(tmp_path / "data", domains=("Art",), classes=("ant", "bee"), n=6)
    cfg = FolderDataConfig("folders", root, splits_dir=str(tmp_path / "splits"), skip_bad_images=True)
    saved = load_folder_tasks(cfg)[0]
    for path, _ in saved.val.items:
        path.write_bytes(b"")  # every val image broken after the split was saved
    with pytest.warns(UserWarning, match="dropping 2 undecodable"):
        with pytest.raises(ValueError, match=r"val empty; 2 of its images were dropped as undecodable"):
            load_folder_tasks(cfg)


def test_tiny_fractions_still_name_a_class_size():
    from mmap_ray.data.folders import _min_class_size

    assert _min_class_size(FolderDataConfig("folders", Path("."), val_fraction=0.0004)) == 1251


# ---- round two (issue 18): images that only fail when decoded --------------------------------------------


def png_with_short_idat(path: Path) -> Path:
    """A PNG whose compressed pixel data (IDAT) is cut in half, with every chunk checksum recomputed:
    PIL's verify() passes it, only decoding fails."""
    Image.effect_noise((32, 32), 60).convert("RGB").save(path, "PNG")
    data, out, pos = path.read_bytes(), bytearray(path.read_bytes()[:8]), 8
    while pos < len(data):
        n, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        body = body[: len(body) // 2] if kind == b"IDAT" else body
        out += len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        pos += 12 + n
    path.write_bytes(bytes(out))
    return path


def test_png_with_truncated_pixel_data_is_named_at_load_time_and_skippable(tree, tmp_path, monkeypatch, capsys):
    """Case 7: such a PNG passed the load-time check and failed at its first read, after training had
    started, and --skip-bad-images could not drop it. Every image is now decoded at load time."""
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cache"))
    bad = png_with_short_idat(tree / "Art" / "bee" / "short.png")
    with Image.open(bad) as im:
        im.verify()  # the premise: checksums are valid
    err = run_cli(capsys, "train", *FAST, "--dataset", "folders", "--root", str(tree), "--out", str(tmp_path / "o"))
    assert "1 of 13 image files" in err and f"{bad}: OSError: " in err and "--skip-bad-images" in err
    with pytest.warns(UserWarning, match=r"dropping 1 undecodable image files .*'Art/bee/short.png'"):
        (task,) = load_folder_tasks(folders(tree, domains=("Art",), skip_bad_images=True))
    assert sum(len(getattr(task, s)) for s in ("train", "val", "test")) == 12


def test_decoded_images_are_remembered_by_path_size_and_mtime(tree, tmp_path, monkeypatch):
    """A second load does not decode again: what decoded is kept per machine under the path, size,
    modification and change time, so a file changed since (even with its size and mtime put back, as
    tar and rsync do) is decoded, and named, again."""
    monkeypatch.setenv("MMAP_RAY_CACHE", str(tmp_path / "cache"))
    load_folder_tasks(folders(tree))
    (kept,) = (tmp_path / "cache" / "image-checks").glob("*.json")
    assert len(json.loads(kept.read_text())["decoded"]) == 24
    image = tree / "Art" / "ant" / "ant_000.jpg"
    st = image.stat()
    kept_text = kept.read_text()
    load_folder_tasks(folders(tree))  # everything from the cache: nothing decoded, nothing rewritten
    assert kept.read_text() == kept_text
    image.write_bytes(b"\0" * st.st_size)  # broken, with the size and mtime it was checked with put back
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match=rf"1 of 24 image files .*\n  {image}: UnidentifiedImageError"):
        load_folder_tasks(folders(tree))  # its ctime changed: checked again


# ---- round two (issue 18): messages and help (case 11), and a warning nobody asked for (case 12) ---------


def test_params_with_no_tasks_names_the_flag(capsys):
    err = run_cli(capsys, "params", "--tasks", "", *TINY)
    assert "--tasks '' must name distinct tasks" in err and "partition" not in err
    err = run_cli(capsys, "params", "--tasks", "A,B,A", *TINY)
    assert "--tasks 'A,B,A' must name distinct tasks" in err


def test_random_weights_are_spelt_alike_in_the_api_and_every_command(capsys):
    """`--pretrained none` and BackboneConfig(pretrained="none") both mean random weights; `params` takes
    the same --pretrained values as `train` and refuses 'toy' for another model with the same line."""
    assert BackboneConfig(TINY_MODEL, "none").pretrained is None and BackboneConfig(TINY_MODEL, "").pretrained is None
    assert main(["params", "--tasks", "A,B", *TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == TINY_MODEL
    err = run_cli(capsys, "params", "--tasks", "A,B", "--pretrained", "toy")
    assert "ModelConfig.pretrained='toy' is only for model 'mmap-ViT-Tiny-8', not 'ViT-B-16'" in err


def test_eval_of_a_run_refuses_run_flags_it_would_ignore(tmp_path, capsys):
    err = run_cli(capsys, "eval", "--run", str(tmp_path), "--root", "elsewhere", "--n-tokens", "16")
    assert f"--run {tmp_path} is evaluated as it was trained (its config.json), so --root, --n-tokens" in err


def test_group_refuses_k_for_a_scheme_that_does_not_use_it(tmp_path, capsys):
    out = tmp_path / "g.json"
    err = run_cli(capsys, "group", "--scheme", "single", "--k", "3", *TINY, "--out", str(out))
    assert "--k 3 has no effect with --scheme single" in err and not out.exists()


def test_random_weights_asked_for_bring_no_open_clip_warning(capsys, caplog):
    """Case 12: open_clip's 'No pretrained weights loaded ... initialized randomly' on every smoke run."""
    with caplog.at_level(logging.WARNING):
        assert main(["params", "--tasks", "A,B", *TINY]) == 0
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


@pytest.mark.parametrize("script", ["designs_table", "halves_table", "paired_table"])
def test_analysis_scripts_name_a_missing_or_foreign_results_folder_in_one_line(script, tmp_path):
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[2] / "analysis" / f"{script}.py"
    base = ["--base", "single"] if script == "paired_table" else []
    (tmp_path / "notes.txt").write_text("not a study")
    for folder, says in [(tmp_path / "missing", "does not exist"), (tmp_path, "")]:
        out = subprocess.run([sys.executable, str(path), str(folder), *base], capture_output=True, text=True)
        assert out.returncode == 2 and out.stdout == "", out.stderr
        assert out.stderr.startswith(f"{script}.py: error: ") and len(out.stderr.splitlines()) == 1, out.stderr
        assert str(folder) in out.stderr and says in out.stderr
