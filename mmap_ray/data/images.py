"""Which image files a dataset may use: inside its root, and readable by PIL (checked at load time).

Bad data fails when the dataset is loaded, not hours into training: every image is opened and verified
with PIL (a JPEG cut short is caught too), and every listed or found path must stay inside the data root
(no `..`, absolute path or symlink that leaves it). Errors name the files at fault.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHOW = 5  # how many offending paths an error message names
JPEG_END = b"\xff\xd9"  # EOI marker: a JPEG cut short lacks it (one with trailing bytes gets a full decode)


def drop_unreadable(root: Path, rels: list[str], skip: bool) -> set[str]:
    """Verify every image with PIL; fail naming the bad ones, or (with `skip`) warn and return them."""
    from PIL import Image

    def problem(rel: str) -> str | None:
        try:
            with Image.open(root / rel) as im:
                fmt = im.format
                im.verify()  # PNG: every chunk and checksum; other formats: little beyond the header
            if fmt != "PNG" and not (fmt == "JPEG" and _ends_with(root / rel, JPEG_END)):
                with Image.open(root / rel) as im:  # a truncated file only shows when decoded
                    im.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...) for a bad file
            return f"{type(e).__name__}: {e}"
        return None

    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        bad = [(rel, why) for rel, why in zip(rels, pool.map(problem, rels)) if why is not None]
    if bad and not skip:
        shown = "\n  ".join(f"{root / rel}: {why}" for rel, why in bad[:SHOW])
        raise ValueError(
            f"{len(bad)} of {len(rels)} image files under {root} cannot be read by PIL, e.g.:\n  "
            f"{shown}\nRepair or remove them, or set skip_bad_images=True to drop them"
        )
    if bad:
        warnings.warn(
            f"skip_bad_images=True: dropping {len(bad)} unreadable image files under {root}, "
            f"e.g. {[rel for rel, _ in bad[:SHOW]]}",
            stacklevel=3,
        )
    return {rel for rel, _ in bad}


def _ends_with(path: Path, tail: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(tail):
            return False
        f.seek(-len(tail), os.SEEK_END)
        return f.read() == tail


@functools.lru_cache(maxsize=8)
def _real(root: Path) -> Path:
    return root.resolve()


def check_inside(root: Path, rel: str, where: str) -> None:
    """Refuse a listed or found path that leaves the data root (through `..`, an absolute path or a symlink)."""
    real_root = _real(root)
    target = (root / rel).resolve()
    if not target.is_relative_to(real_root):
        raise ValueError(
            f"{where} resolves to {target}, outside the data root {real_root}; every image must "
            f"lie under the root (no '..', absolute paths or symlinks that leave it)"
        )
