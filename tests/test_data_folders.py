"""Folder dataset loaders on small fabricated trees of real JPEG files (8x8 solid colours)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmap_ray.data.base import SPLITS, ImageListDataset
from mmap_ray.data.folders import FolderDataConfig, load_folder_tasks, natural_class_name

OFFICE_DOMAINS = ("Art", "Clipart", "Product", "Real World")
OFFICE_CLASSES = ("Alarm_Clock", "Desk_Lamp", "t-shirt")  # already in sorted order


def jpeg(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, "JPEG")
    return path


def make_tree(root: Path, domains=OFFICE_DOMAINS, classes=OFFICE_CLASSES, n: int = 10) -> Path:
    for d in domains:
        for c, cls in enumerate(classes):
            for i in range(n):
                jpeg(root / d / cls / f"{cls}_{i:03d}.jpg", (20 * i, 80 * c, 100))
    return root


@pytest.fixture
def office(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "office_home")


def office_cfg(root: Path, **kw) -> FolderDataConfig:
    return FolderDataConfig(layout="office-home", root=root, **kw)


def rels(dataset: ImageListDataset, root: Path) -> list[tuple[str, int]]:
    return [(Path(p).relative_to(root).as_posix(), label) for p, label in dataset.items]


def split_of(task, root: Path) -> dict[str, list[tuple[str, int]]]:
    return {s: rels(task.split(s), root) for s in SPLITS}


@pytest.mark.parametrize(
    "raw, text",
    [
        ("Alarm_Clock", "alarm clock"),
        ("The_Eiffel_Tower", "the eiffel tower"),
        ("desk_lamp", "desk lamp"),
        ("t-shirt", "t-shirt"),
        ("  Big__Cat ", "big cat"),
    ],
)
def test_natural_class_name(raw, text):
    assert natural_class_name(raw) == text


def test_office_home_tasks_classes_and_split_sizes(office):
    tasks = load_folder_tasks(office_cfg(office))
    assert [t.name for t in tasks] == ["Art", "Clipart", "Product", "RealWorld"]
    for task, folder in zip(tasks, OFFICE_DOMAINS):
        assert task.class_names == ["alarm clock", "desk lamp", "t-shirt"]
        # 10 images per class: 2 test, 1 val, 7 train.
        assert (len(task.train), len(task.val), len(task.test)) == (21, 3, 6)
        for s in SPLITS:
            assert sorted(task.split(s).labels) == sorted([0, 1, 2] * {"train": 7, "val": 1, "test": 2}[s])
        split = split_of(task, office)
        every = [it for s in SPLITS for it in split[s]]
        assert len(set(every)) == len(every) == 30  # disjoint, and nothing lost
        for rel, label in every:  # label = index of the class folder in the sorted raw class list
            parts = rel.split("/")
            assert parts[0] == folder and parts[1] == OFFICE_CLASSES[label]


def test_tiny_class_keeps_a_train_image(tmp_path):
    root = make_tree(tmp_path, domains=("A",), classes=("one", "two"), n=1)
    for i in range(3):
        jpeg(root / "A" / "two" / f"more_{i}.jpg")
    (task,) = load_folder_tasks(FolderDataConfig("folders", root, val_fraction=0.3, test_fraction=0.6))
    assert sorted(task.train.labels) == [0, 1] and task.test.labels == [1, 1] and task.val.labels == [1]


def test_domain_named_without_its_space(office):
    tasks = load_folder_tasks(office_cfg(office, domains=("RealWorld", "Art")))
    assert [t.name for t in tasks] == ["RealWorld", "Art"]
    assert tasks[0].train.items[0][0].parent.parent.name == "Real World"


def test_split_is_seeded(office):
    first = [split_of(t, office) for t in load_folder_tasks(office_cfg(office, seed=3))]
    again = [split_of(t, office) for t in load_folder_tasks(office_cfg(office, seed=3))]
    other = [split_of(t, office) for t in load_folder_tasks(office_cfg(office, seed=4))]
    assert first == again
    assert first != other
    # domains get their own shuffles: the same file names would otherwise land in the same splits
    names = [[rel.split("/", 1)[1] for rel, _ in split["test"]] for split in first]
    assert names[0] != names[1]


def test_k_shot_subsamples_train_only(office):
    full = load_folder_tasks(office_cfg(office))
    shot = load_folder_tasks(office_cfg(office, shots=3))
    for f, s in zip(full, shot):
        assert sorted(s.train.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert set(rels(s.train, office)) < set(rels(f.train, office))
        assert rels(s.val, office) == rels(f.val, office) and rels(s.test, office) == rels(f.test, office)
    again = load_folder_tasks(office_cfg(office, shots=3))
    assert [rels(t.train, office) for t in shot] == [rels(t.train, office) for t in again]
    many = load_folder_tasks(office_cfg(office, shots=50))
    assert len(many[0].train) == 21  # fewer images than shots: keep them all


def test_split_files_written_and_reused(office, tmp_path):
    splits = tmp_path / "results" / "splits"
    cfg = office_cfg(office, splits_dir=str(splits), shots=5)
    first = [split_of(t, office) for t in load_folder_tasks(cfg)]
    assert sorted(p.name for p in splits.iterdir()) == ["Art.json", "Clipart.json", "Product.json", "RealWorld.json"]
    saved = json.loads((splits / "Art.json").read_text())
    assert {s: [tuple(it) for it in saved[s]] for s in SPLITS} == first[0]
    assert saved["meta"]["seed"] == 0 and saved["meta"]["shots"] == 5

    make_tree(office, n=14)  # the tree grows: 4 more images per class
    reused = [split_of(t, office) for t in load_folder_tasks(cfg)]
    assert reused == first
    fresh = load_folder_tasks(office_cfg(office, shots=5))
    assert len(fresh[0].test) == 9  # without the split files the new images would be re-split


def test_reused_split_must_match_settings_and_files(office, tmp_path):
    splits = tmp_path / "splits"
    load_folder_tasks(office_cfg(office, splits_dir=str(splits)))
    with pytest.raises(ValueError, match=r"Art.json was made with seed=0 but this run has seed=1"):
        load_folder_tasks(office_cfg(office, splits_dir=str(splits), seed=1))
    gone = json.loads((splits / "Clipart.json").read_text())["val"][0][0]
    (office / gone).unlink()
    with pytest.raises(FileNotFoundError, match=rf"Clipart.json lists '{gone}' in val"):
        load_folder_tasks(office_cfg(office, splits_dir=str(splits)))


def test_folders_layout_any_domain_names(tmp_path):
    root = make_tree(tmp_path / "data", domains=("zeta", "alpha beta"), classes=("cat", "dog"), n=5)
    (root / "zeta" / "dog" / "notes.txt").write_text("not an image")
    jpeg(root / "zeta" / "dog" / "UPPER.JPEG")
    tasks = load_folder_tasks(FolderDataConfig("folders", root, val_fraction=0.2, test_fraction=0.2))
    assert [t.name for t in tasks] == ["alphabeta", "zeta"]
    assert [len(t.train) + len(t.val) + len(t.test) for t in tasks] == [10, 11]
    (only,) = load_folder_tasks(FolderDataConfig("folders", root, domains=("zeta",)))
    assert only.name == "zeta" and only.class_names == ["cat", "dog"]


def make_domainnet(root: Path, domains, classes, n_train: int, n_test: int, lists: Path) -> Path:
    lists.mkdir(parents=True, exist_ok=True)
    for d in domains:
        lines = {"train": [], "test": []}
        for label, cls in enumerate(classes):
            for i in range(n_train + n_test):
                rel = f"{d}/{cls}/{d}_{label:03d}_{i:06d}.jpg"
                jpeg(root / rel, (10 * i, 60 * label, 0))
                lines["train" if i < n_train else "test"].append(f"{rel} {label}")
        for s, ls in lines.items():
            (lists / f"{d}_{s}.txt").write_text("\n".join(ls) + "\n")
    return root


def test_domainnet_official_lists(tmp_path):
    root = tmp_path / "domainnet"
    classes = ("The_Eiffel_Tower", "aircraft_carrier", "zebra")  # sorted raw names: uppercase first
    make_domainnet(root, ("clipart", "real"), classes, 10, 4, root)
    jpeg(root / "sketch" / "zebra" / "x.jpg")  # images without lists: not a default domain
    tasks = load_folder_tasks(FolderDataConfig("domainnet", root))
    assert [t.name for t in tasks] == ["clipart", "real"]
    assert tasks[0].class_names == ["the eiffel tower", "aircraft carrier", "zebra"]
    for task in tasks:
        official = {
            s: [
                (line.split()[0], int(line.split()[1]))
                for line in (root / f"{task.name}_{s}.txt").read_text().splitlines()
            ]
            for s in ("train", "test")
        }
        split = split_of(task, root)
        assert sorted(split["test"]) == sorted(official["test"])
        assert sorted(split["train"] + split["val"]) == sorted(official["train"])
        assert sorted(task.val.labels) == [0, 1, 2] and len(task.train) == 27


def test_domainnet_class_order_comes_from_list_labels(tmp_path):
    root = make_domainnet(tmp_path, ("real",), ("bee", "ant"), 6, 1, tmp_path)  # labels 0=bee, 1=ant: unsorted
    (task,) = load_folder_tasks(FolderDataConfig("domainnet", root))
    assert task.class_names == ["bee", "ant"]
    assert {label for _, label in task.train.items if "/ant/" in str(_)} == {1}
    lines = (root / "real_test.txt").read_text().replace(" 1\n", " 0\n")  # ant now also labelled 0
    (root / "real_test.txt").write_text(lines)
    with pytest.raises(ValueError, match=r"real_test.txt, line 2: label 0 for class 'ant'"):
        load_folder_tasks(FolderDataConfig("domainnet", root))


def test_minidomainnet_uses_splits_mini(tmp_path):
    root = tmp_path / "dn"
    domains = ("clipart", "painting", "real", "sketch")
    make_domainnet(root, domains, ("ant", "bee"), 6, 2, root / "splits_mini")
    for d in domains:  # a class with images but absent from the mini lists
        jpeg(root / d / "zebra" / f"{d}_z.jpg")
    tasks = load_folder_tasks(FolderDataConfig("minidomainnet", root, val_fraction=0.5))
    assert [t.name for t in tasks] == list(domains)
    assert all(t.class_names == ["ant", "bee"] for t in tasks)
    assert [(len(t.train), len(t.val), len(t.test)) for t in tasks] == [(6, 6, 4)] * 4


def test_getitem_returns_transformed_tensor(office):
    from torchvision.transforms import ToTensor  # imported here: torchvision is slow to import

    tasks = load_folder_tasks(office_cfg(office), transform_train=ToTensor(), transform_eval=ToTensor())
    image, label = tasks[0].train[0]
    path, expected = tasks[0].train.items[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 8, 8)
    assert label == expected and Path(path).parent.name == OFFICE_CLASSES[label]
    assert abs(image[1].mean().item() - 80 * label / 255) < 0.05  # the green channel encodes the class


# ---- bad configs and bad data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"layout": "imagenet"}, r"layout='imagenet' is not valid; choose one of .*office-home"),
        ({"val_fraction": 1.0}, r"val_fraction=1.0 must be in \(0, 1\)"),
        ({"val_fraction": 0.0}, r"val_fraction=0.0 must be in \(0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"must be < 1"),
        ({"shots": 0}, r"shots=0 must be None"),
        ({"domains": ("Art", "Art")}, r"domains=.*unique"),
    ],
)
def test_config_rejects_bad_values(office, kw, match):
    with pytest.raises(ValueError, match=match):
        FolderDataConfig(**{"layout": "office-home", "root": office, **kw})


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        office_cfg(tmp_path / "nowhere")


def test_missing_domain_names_expected_path_and_found(office):
    with pytest.raises(FileNotFoundError) as e:
        load_folder_tasks(office_cfg(office, domains=("Art", "Sketch")))
    assert "'Sketch'" in str(e.value) and str(office / "Sketch") in str(e.value) and "'Real World'" in str(e.value)


def test_domain_without_images(office):
    (office / "Empty" / "Alarm_Clock").mkdir(parents=True)
    (office / "Empty" / "Alarm_Clock" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"domain 'Empty' has no images"):
        load_folder_tasks(FolderDataConfig("folders", office))


def test_class_sets_must_match(office):
    for f in (office / "Clipart" / "Desk_Lamp").iterdir():
        f.unlink()
    jpeg(office / "Product" / "Zebra" / "z.jpg")
    with pytest.raises(ValueError) as e:
        load_folder_tasks(office_cfg(office))
    msg = str(e.value)
    assert "'Clipart' lacks 2: ['Desk_Lamp', 'Zebra']" in msg and "'Art' lacks 1: ['Zebra']" in msg
    assert "'Product' lacks" not in msg


def test_corrupt_images_fail_or_are_skipped(office):
    bad = [
        office / "Art" / "Alarm_Clock" / "broken.jpg",
        office / "Product" / "t-shirt" / "empty.png",
        office / "Real World" / "Desk_Lamp" / "bad_crc.png",
    ]
    bad[0].write_bytes(b"this is not a jpeg")
    bad[1].write_bytes(b"")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(bad[2], "PNG")
    data = bytearray(bad[2].read_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF  # opens fine; only a full verify sees the bad checksum
    bad[2].write_bytes(bytes(data))
    with Image.open(bad[2]):
        pass
    with pytest.raises(ValueError) as e:
        load_folder_tasks(office_cfg(office))
    msg = str(e.value)
    assert msg.startswith("3 of 123 image files") and all(str(p) in msg for p in bad) and "skip_bad_images" in msg
    with pytest.warns(UserWarning, match="dropping 3 undecodable"):
        tasks = load_folder_tasks(office_cfg(office, skip_bad_images=True))
    kept = {rel for t in tasks for s in SPLITS for rel, _ in rels(t.split(s), office)}
    assert len(kept) == 120 and not any(p.relative_to(office).as_posix() in kept for p in bad)


def test_list_line_naming_missing_file(tmp_path):
    make_domainnet(tmp_path, ("real",), ("ant", "bee"), 3, 1, tmp_path)
    lines = (tmp_path / "real_train.txt").read_text().splitlines()
    lines.insert(2, "real/bee/gone.jpg 1")
    (tmp_path / "real_train.txt").write_text("\n".join(lines))
    with pytest.raises(FileNotFoundError, match=r"real_train.txt, line 3: lists 'real/bee/gone.jpg'"):
        load_folder_tasks(FolderDataConfig("domainnet", tmp_path))


def test_list_line_malformed(tmp_path):
    make_domainnet(tmp_path, ("real",), ("ant",), 2, 1, tmp_path)
    (tmp_path / "real_test.txt").write_text("real/ant/real_000_000002.jpg\n")
    with pytest.raises(ValueError, match=r"real_test.txt, line 1: .* is not 'real/<class>/<file> <label>'"):
        load_folder_tasks(FolderDataConfig("domainnet", tmp_path))


def test_missing_split_lists(tmp_path):
    jpeg(tmp_path / "real" / "ant" / "a.jpg")
    with pytest.raises(FileNotFoundError, match=r"no split lists .*splits_mini/clipart_train.txt"):
        load_folder_tasks(FolderDataConfig("minidomainnet", tmp_path))
    with pytest.raises(FileNotFoundError, match=r"split list .*real_train.txt is missing for domain 'real'"):
        load_folder_tasks(FolderDataConfig("domainnet", tmp_path, domains=("real",)))


def test_domainnet_lists_under_splits_folder(tmp_path):
    make_domainnet(tmp_path, ("sketch",), ("ant", "bee"), 6, 2, tmp_path / "splits")  # Dassl's layout
    (task,) = load_folder_tasks(FolderDataConfig("domainnet", tmp_path))
    assert task.name == "sketch" and len(task.test) == 4 and len(task.train) + len(task.val) == 12


@pytest.mark.parametrize(
    "domain, needle",
    [("mean", "the task name 'mean' is reserved"), ("A+B", "contains ['+']"), ("D|E", "contains ['|']")],
)
def test_domain_names_that_would_clash_are_refused_at_load_time(tmp_path, domain, needle):
    root = make_tree(tmp_path / "data", domains=("Art", domain))
    with pytest.raises(ValueError, match=rf"domain folder {tmp_path}/data/.*: .*" + re.escape(needle)):
        load_folder_tasks(FolderDataConfig(layout="folders", root=root))
