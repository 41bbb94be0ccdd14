"""Which classes a folder dataset has and, for DomainNet and miniDomainNet, their official split lists.

`same_classes` is the one rule for every layout: every domain holds the same classes. The official lists
(`<domain>/<class>/<file> <label>` per line) also fix the class order by their labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .images import check_inside

if TYPE_CHECKING:
    from .folders import FolderDataConfig


def same_classes(classes_by_task: dict[str, set[str]], what: str) -> list[str]:
    """The sorted class list shared by every task; an error says which classes each task lacks."""
    union = set().union(*classes_by_task.values())
    missing = {task: sorted(union - cs) for task, cs in classes_by_task.items() if union - cs}
    if missing:
        said = "; ".join(
            f"{task!r} lacks {len(m)}: {m[:10]}{' ...' if len(m) > 10 else ''}" for task, m in missing.items()
        )
        raise ValueError(
            f"{what} differ across domains: {said}. Every domain must hold the same classes "
            f"(select matching domains with `domains`)"
        )
    if len(union) < 2:  # every prediction is right: an accuracy of 100% that measures nothing
        raise ValueError(
            f"{what} are only {sorted(union)}: a task needs at least 2 classes for its accuracy to mean anything"
        )
    return sorted(union)


def list_path(cfg: FolderDataConfig, domain: str, split: str) -> Path:
    """Where a domain's official split list lives for this layout."""
    root = Path(cfg.root)
    return root / list_rel(cfg.layout, domain, split, lambda rel: (root / rel).is_file())


def list_rel(layout: str, domain: str, split: str, has_file: Callable[[str], bool]) -> str:
    """A domain's official split list, relative to the root, given which files the root has."""
    if layout == "minidomainnet":
        return f"splits_mini/{domain}_{split}.txt"
    plain, nested = f"{domain}_{split}.txt", f"splits/{domain}_{split}.txt"
    return nested if not has_file(plain) and has_file(nested) else plain  # DomainNet's own layout, or Dassl's


def read_official_lists(cfg: FolderDataConfig, tasks: list[tuple[str, str]]):
    """Classes, train pool and official test items per task, from the `<domain>/<class>/<file> <label>` lists."""
    root = Path(cfg.root)
    rows = {
        (task, s): read_list(list_path(cfg, folder, s), root, folder)
        for task, folder in tasks
        for s in ("train", "test")
    }
    classes = same_classes(
        {task: {r[1] for s in ("train", "test") for r in rows[task, s]} for task, _ in tasks},
        f"classes in the {cfg.layout} split lists",
    )
    # The lists' own labels define the class order (real DomainNet / miniDomainNet lists are not
    # alphabetical); every label must name one class and every class one label, in every list.
    by_label: dict[int, str] = {}
    for (task, s), lines in rows.items():
        for _rel, cls, label, n in lines:
            known = by_label.setdefault(label, cls)
            if known != cls or sum(c == cls for c in by_label.values()) > 1:
                raise ValueError(
                    f"{list_path(cfg, dict(tasks)[task], s)}, line {n}: label {label} for class {cls!r}, "
                    f"but the lists use label {label} for {known!r} or another label for {cls!r}"
                )
    if sorted(by_label) != list(range(len(classes))):
        raise ValueError(
            f"the {cfg.layout} split lists use labels {sorted(by_label)[:10]}..., not 0..{len(classes) - 1}"
        )
    classes = [by_label[i] for i in range(len(classes))]
    items = {key: [(rel, label) for rel, _, label, _ in lines] for key, lines in rows.items()}
    return classes, {t: items[t, "train"] for t, _ in tasks}, {t: items[t, "test"] for t, _ in tasks}


def read_list(path: Path, root: Path, folder: str) -> list[tuple[str, str, int, int]]:
    """(relpath, class, label, line number) per line of one split list; every listed file must exist."""
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} is missing for domain {folder!r}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        parts_ok = len(parts) == 2 and parts[1].isdigit()
        pieces = parts[0].split("/") if parts_ok else []
        if not parts_ok or len(pieces) < 3 or pieces[0] != folder:
            raise ValueError(f"{path}, line {n}: {line!r} is not '{folder}/<class>/<file> <label>'")
        check_inside(root, parts[0], f"{path}, line {n}: {parts[0]!r}")
        if not (root / parts[0]).is_file():
            raise FileNotFoundError(f"{path}, line {n}: lists {parts[0]!r} but {root / parts[0]} does not exist")
        rows.append((parts[0], pieces[1], int(parts[1]), n))
    if not rows:
        raise ValueError(f"split list {path} lists no images for domain {folder!r}")
    return rows
