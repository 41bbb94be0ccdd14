"""Real image datasets on disk as `TaskData`: Office-Home, DomainNet, miniDomainNet and plain folders.

Each domain becomes one task. All domains of a dataset share one class index space: the sorted raw class
folder names ("Alarm_Clock", ...), shown to CLIP as natural text ("alarm clock"). Layouts without an
official split get a seeded split, stratified per class; DomainNet keeps its official test list and carves
val out of its train list. Splits are written to `splits_dir` (one JSON per task, paths relative to
`root`) and reused when present, so a resumed or repeated run trains and evaluates on the same images.

Bad data fails at load time, not hours into training: every image is opened and verified with PIL (a JPEG
cut short is caught too), every listed or found path must stay inside `root` (no `..` or symlink that
leaves it), and every error names the path or value at fault and what would be valid.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..parse import parse_json
from ..storage import Location, is_uri, location
from .base import SPLITS, ImageListDataset, TaskData
from .images import MAX_IMAGE_PIXELS, SHOW, check_inside, drop_unreadable
from .lists import list_rel, read_official_lists, same_classes

LAYOUTS = ("office-home", "minidomainnet", "domainnet", "folders")
DEFAULT_DOMAINS = {
    "office-home": ("Art", "Clipart", "Product", "Real World"),
    "domainnet": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
    "minidomainnet": ("clipart", "painting", "real", "sketch"),
}
OFFICIAL_SPLITS = ("domainnet", "minidomainnet")  # layouts that ship train/test lists
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Item = tuple[str, int]  # (image path relative to root, label)


def natural_class_name(raw: str) -> str:
    """A class folder name as CLIP should read it: "Alarm_Clock" -> "alarm clock"."""
    return " ".join(raw.replace("_", " ").lower().split())


@dataclass
class FolderDataConfig:
    """Where a dataset lives on disk and how to split it into tasks."""

    layout: str  # one of LAYOUTS
    root: str | Path  # the dataset folder (holds the domain folders), or its s3:// / gs:// URI (data/remote.py)
    domains: tuple[str, ...] | None = None  # None: the layout's defaults, or every subfolder for "folders"
    val_fraction: float = 0.1  # per class; for DomainNet carved out of the official train list
    test_fraction: float = 0.2  # per class; only for layouts without an official test list
    shots: int | None = None  # keep at most this many train images per class (val/test untouched)
    seed: int = 0  # drives the split and the k-shot subsample
    skip_bad_images: bool = False  # drop unreadable images with a warning instead of failing
    max_image_pixels: int = MAX_IMAGE_PIXELS  # refuse a larger image (width x height) before decoding it
    splits_dir: str | None = None  # write/reuse {splits_dir}/{task}.json here

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} is not valid; choose one of {LAYOUTS}")
        if is_uri(self.root):  # staged to local disk when loaded; its manifest is checked when read
            self.root = location(self.root, "root").uri
        elif not (root := Path(self.root).expanduser()).is_dir():
            raise FileNotFoundError(
                f"root={str(root)!r} is not an existing directory; point it at the {self.layout} dataset folder"
            )
        else:
            self.root = root
        if self.domains is not None:
            domains = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains)
            if not domains or not all(isinstance(d, str) and d for d in domains) or len(set(domains)) < len(domains):
                raise ValueError(f"domains={self.domains!r} must be None or unique non-empty folder names")
            self.domains = domains
        for name in ("val_fraction", "test_fraction"):  # > 0: model selection and the reported accuracy need images
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name}={value!r} must be in (0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction} + {self.test_fraction} "
                f"must be < 1 to leave images for training"
            )
        if self.shots is not None and (
            isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1
        ):
            raise ValueError(f"shots={self.shots!r} must be None (all images) or an integer >= 1")


def load_folder_tasks(
    cfg: FolderDataConfig, transform_train: Callable | None = None, transform_eval: Callable | None = None
) -> list[TaskData]:
    """One `TaskData` per domain, in domain order; train uses `transform_train`, val/test `transform_eval`.
    A URI root is staged to this node's local disk first (`remote.stage`), then read from there."""
    if is_uri(cfg.root):
        from .remote import stage

        cfg = replace(cfg, root=stage(cfg.root).root)
    root = Path(cfg.root)
    tasks = _resolve_domains(cfg)
    if cfg.layout in OFFICIAL_SPLITS:
        classes, pools, tests = read_official_lists(cfg, tasks)
    else:
        classes, pools = _scan_folders(root, tasks)
        tests = {task: None for task, _ in tasks}

    meta = {
        "layout": cfg.layout,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "test_fraction": None if cfg.layout in OFFICIAL_SPLITS else cfg.test_fraction,
        "shots": cfg.shots,
        "classes": classes,
    }
    split_file = {task: Path(cfg.splits_dir) / f"{task}.json" if cfg.splits_dir else None for task, _ in tasks}
    reused = {task: _read_split_file(f, root, meta) if f and f.is_file() else None for task, f in split_file.items()}

    candidates = set()
    for task, _ in tasks:
        listed = [it for s in SPLITS for it in reused[task][s]] if reused[task] else pools[task] + (tests[task] or [])
        candidates.update(rel for rel, _ in listed)
    bad = drop_unreadable(root, sorted(candidates), cfg.skip_bad_images, cfg.max_image_pixels)

    out = []
    for task, _ in tasks:
        listed = [it for s in SPLITS for it in reused[task][s]] if reused[task] else pools[task] + (tests[task] or [])
        dropped = sum(rel in bad for rel, _ in listed)
        if reused[task] is not None:
            split = {s: [it for it in reused[task][s] if it[0] not in bad] for s in SPLITS}
            _check_split_sizes(task, root, split, cfg, dropped, split_file[task])
        else:
            pool = [it for it in pools[task] if it[0] not in bad]
            test_fraction = 0.0 if tests[task] is not None else cfg.test_fraction
            split = _stratified_split(pool, cfg.val_fraction, test_fraction, random.Random(f"split:{cfg.seed}:{task}"))
            if tests[task] is not None:
                split["test"] = [it for it in tests[task] if it[0] not in bad]
            if cfg.shots is not None:
                split["train"] = _take_shots(split["train"], cfg.shots, random.Random(f"shots:{cfg.seed}:{task}"))
            _check_split_sizes(task, root, split, cfg, dropped)  # before a split that cannot serve is saved
            if split_file[task] is not None:
                _write_split_file(split_file[task], meta, split)
        datasets = {
            s: ImageListDataset(
                [(root / rel, label) for rel, label in split[s]], transform_train if s == "train" else transform_eval
            )
            for s in SPLITS
        }
        out.append(TaskData(task, [natural_class_name(c) for c in classes], **datasets))
    return out


def task_names(cfg: FolderDataConfig) -> list[str]:
    """The task names of the dataset's domains, from its folders and split lists (no image is read); for
    a URI root, from its manifest (nothing is downloaded): what a driver checks before it starts anything."""
    return [task for task, _ in _resolve_domains(cfg)]


@dataclass(frozen=True)
class Listing:
    """What choosing the domains reads from a dataset root: its folders and which files exist, from the
    disk, or from the manifest of a pushed dataset (so a URI root is checked without downloading it)."""

    root: Path | Location  # `root / rel` names a file in messages
    folders: list[str]  # top-level folder names, sorted, hidden ones left out
    has_file: Callable[[str], bool]  # whether a POSIX path relative to root is a file


def _listing(root: str | Path) -> Listing:
    if is_uri(root):
        from .remote import read_manifest

        manifest = read_manifest(root)
        return Listing(location(root, "root"), list(manifest.folders()), manifest.files.__contains__)
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return Listing(root, folders, lambda rel: (root / rel).is_file())


def _resolve_domains(cfg: FolderDataConfig) -> list[tuple[str, str]]:
    """(task name, folder name) per domain; task names drop spaces ("Real World" -> "RealWorld")."""
    listing = _listing(cfg.root)
    root, found = listing.root, listing.folders
    if cfg.domains is not None:
        wanted = list(cfg.domains)
    elif cfg.layout in OFFICIAL_SPLITS:
        defaults = DEFAULT_DOMAINS[cfg.layout]
        wanted = [d for d in defaults if listing.has_file(list_rel(cfg.layout, d, "train", listing.has_file))]
        if not wanted:
            raise FileNotFoundError(
                f"no split lists for layout={cfg.layout!r}: expected e.g. "
                f"{root / list_rel(cfg.layout, defaults[0], 'train', listing.has_file)} for one of the domains "
                f"{defaults}"
            )
    else:
        wanted = list(DEFAULT_DOMAINS.get(cfg.layout, found))
        if not wanted:
            raise ValueError(f"no domain folders under {root}; expected {root}/<domain>/<class>/<image>")
    tasks = []
    for d in wanted:
        folder = d if d in found else next((f for f in found if f.replace(" ", "") == d), None)
        if folder is None:
            raise FileNotFoundError(
                f"domain {d!r} has no folder: expected {root / d}; domains found under {root}: {found}"
            )
        tasks.append((folder.replace(" ", ""), folder))
    names = [t for t, _ in tasks]
    if len(set(names)) < len(names):
        raise ValueError(f"domains={wanted} name the same folder twice (task names {names})")
    for name, folder in tasks:
        _check_task_name(name, root / folder)
    return tasks


RESERVED_TASK_NAMES = ("mean",)  # the per-task accuracy table's own column
PARTITION_CHARS = "+|,"  # partitions are written "A+B|C", domain lists "A,B"


def _check_task_name(name: str, folder: Path | Location) -> None:
    """A task name must not clash with the accuracy table's `mean` or the partition and domain-list syntax."""
    if name in RESERVED_TASK_NAMES:
        raise ValueError(
            f"domain folder {folder}: the task name {name!r} is reserved (it names the mean over "
            f"tasks); rename the folder"
        )
    bad = sorted({c for c in name if c in PARTITION_CHARS})
    if bad:
        raise ValueError(
            f"domain folder {folder}: the task name {name!r} contains {bad}, which partitions "
            f"('A+B|C') and domain lists ('A,B') use; rename the folder"
        )
    if not name.isprintable():  # a newline or control character would break every table and log line
        raise ValueError(f"domain folder {folder}: the task name {name!r} has control characters; rename the folder")


def _scan_folders(root: Path, tasks: list[tuple[str, str]]) -> tuple[list[str], dict[str, list[Item]]]:
    """Sorted shared class list and every image per task, from root/<domain>/<class>/<image>."""
    found: dict[str, dict[str, list[str]]] = {}
    empty: list[str] = []  # class folders without images: named if the class sets then differ
    for task, folder in tasks:
        by_class = {}
        for cdir in sorted(p for p in (root / folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(
                f.relative_to(root).as_posix()
                for f in cdir.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            for rel in files:
                check_inside(root, rel, f"image {rel!r}")
            if files:
                by_class[cdir.name] = files
            else:
                empty.append(str(cdir))
        if not by_class:
            raise ValueError(
                f"domain {folder!r} has no images: expected {root / folder}/<class>/<image> "
                f"with an extension in {IMAGE_EXTENSIONS}"
            )
        found[task] = by_class
    try:
        classes = same_classes({task: set(by_class) for task, by_class in found.items()}, f"class folders under {root}")
    except ValueError as e:
        if not empty:
            raise
        raise ValueError(
            f"{e}. These class folders hold no images (extensions {IMAGE_EXTENSIONS}): "
            f"{empty[:SHOW]}{' ...' if len(empty) > SHOW else ''}"
        ) from None
    index = {c: i for i, c in enumerate(classes)}
    pools = {
        task: [(rel, index[c]) for c, files in by_class.items() for rel in files] for task, by_class in found.items()
    }
    return classes, pools


def _check_split_sizes(
    task: str, root: Path, split: dict[str, list[Item]], cfg: FolderDataConfig, dropped: int, reused: Path | None = None
) -> None:
    """Every split must hold an image: training, model selection (val) and the reported accuracy (test)
    all need one. Refused at load time, naming the domain, the sizes and the cause, not after an epoch."""
    empty = [s for s in SPLITS if not split[s]]
    if not empty:
        return
    sizes = ", ".join(f"{s}={len(split[s])}" for s in SPLITS)
    if dropped:
        hint = f"{dropped} of its images were dropped as undecodable (skip_bad_images); repair or replace them"
    elif reused is not None:
        hint = f"the split file {reused}, written by an earlier run into this folder, leaves it so"
    elif cfg.layout in OFFICIAL_SPLITS and not split["test"]:
        hint = "its official test list names no usable image"
    else:
        fractions = f"val_fraction={cfg.val_fraction}" + (
            "" if cfg.layout in OFFICIAL_SPLITS else f", test_fraction={cfg.test_fraction}"
        )
        hint = (
            f"with {fractions}, a class needs at least {_min_class_size(cfg)} images to give each split one; add "
            f"images, or leave the domain out with domains=..."
        )
    raise ValueError(f"domain {task!r} under {root} splits into {sizes} images: {' and '.join(empty)} empty; {hint}")


def _min_class_size(cfg: FolderDataConfig) -> int:
    """The fewest images a class needs for `_stratified_split` to give each of its splits one."""
    test_fraction = 0.0 if cfg.layout in OFFICIAL_SPLITS else cfg.test_fraction  # the official list is the test
    n = 1
    while True:  # ends: both fractions are > 0, so round(n * f) >= 1 once n > 1 / f, with n - 1 left over
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * cfg.val_fraction), n - 1 - n_test)
        if n_val >= 1 and (n_test >= 1 or cfg.layout in OFFICIAL_SPLITS):
            return n
        n += 1


def _stratified_split(
    items: list[Item], val_fraction: float, test_fraction: float, rng: random.Random
) -> dict[str, list[Item]]:
    """Shuffle each class's images with `rng` and cut them by the fractions, keeping >= 1 train image."""
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in sorted(items):
        by_class[item[1]].append(item)
    split: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n = len(group)
        n_test = min(round(n * test_fraction), n - 1)  # a tiny class still keeps one train image
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        split["test"] += group[:n_test]
        split["val"] += group[n_test : n_test + n_val]
        split["train"] += group[n_test + n_val :]
    return {s: sorted(v) for s, v in split.items()}


def _take_shots(train: list[Item], shots: int, rng: random.Random) -> list[Item]:
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in sorted(train):
        by_class[item[1]].append(item)
    return sorted(
        it
        for label in sorted(by_class)
        for it in (rng.sample(by_class[label], shots) if len(by_class[label]) > shots else by_class[label])
    )


def _read_split_file(path: Path, root: Path, meta: dict) -> dict[str, list[Item]]:
    """A split written by an earlier run; it must match this run's settings and name existing files."""
    try:
        data = parse_json(path.read_text(), path)
    except json.JSONDecodeError as e:
        raise ValueError(f"split file {path} is not valid JSON ({e}); delete it to re-split") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise ValueError(f"split file {path} must hold a list for each of {SPLITS}; delete it to re-split")
    saved = data.get("meta")
    if saved is not None:
        for key, value in meta.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"split file {path} was made with {key}={_short(saved.get(key))} but this run has "
                    f"{key}={_short(value)}; delete the file or choose another splits_dir"
                )
    split = {}
    for s in SPLITS:
        split[s] = []
        for entry in data[s]:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[1], int)
                and 0 <= entry[1] < len(meta["classes"])
            ):
                raise ValueError(
                    f"split file {path}: {s} entry {entry!r} is not [relpath, label] with label in "
                    f"[0, {len(meta['classes'])})"
                )
            check_inside(root, entry[0], f"split file {path}: {s} entry {entry[0]!r}")
            if not (root / entry[0]).is_file():
                raise FileNotFoundError(
                    f"split file {path} lists {entry[0]!r} in {s} but {root / entry[0]} does "
                    f"not exist; restore it, or delete {path} to re-split"
                )
            split[s].append((entry[0], entry[1]))
    return split


def _write_split_file(path: Path, meta: dict, split: dict[str, list[Item]]) -> None:
    """Write atomically (temp file, then rename), one [relpath, label] per line so files diff well."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(f'"{s}": [' + ",".join(f"\n  {json.dumps(list(it))}" for it in split[s]) + "\n]" for s in SPLITS)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text('{"meta": ' + json.dumps(meta) + ",\n" + body + "\n}\n")
    os.replace(tmp, path)


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."
