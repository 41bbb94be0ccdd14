"""Which image files a dataset may use: inside its root, and decodable by PIL (checked at load time).

Bad data fails when the dataset is loaded, not hours into training: every image is decoded once with
PIL (a PNG whose compressed data is cut short but whose checksums are valid, or a JPEG cut short, only
shows when decoded), and every listed or found path must stay inside the data root (no `..`, absolute
path or symlink that leaves it). Errors name the files at fault. Which files decoded is remembered per
machine (`cache.cache_dir()/image-checks/`, keyed by path, size and modification time), so a second run,
or each Ray worker after the first, does not decode the dataset again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import cache_dir
from ..parse import parse_json
from ..storage import resolved

if TYPE_CHECKING:
    from PIL import Image

SHOW = 5  # how many offending paths an error message names
MAX_IMAGE_PIXELS = 64_000_000  # the default cap on width x height: 192 MB decoded as RGB
DRAFT = (64, 64)  # JPEGs decode at reduced scale: every byte of the stream is still read, 10-60x faster

# (size, mtime, ctime in ns): a file changed since its check differs; ctime also catches a replacement whose
# size and mtime were put back (tar, cp -p, rsync -a), as nothing but the kernel sets it
Stamp = tuple[int, int, int]


def drop_unreadable(root: Path, rels: list[str], skip: bool, max_pixels: int = MAX_IMAGE_PIXELS) -> set[str]:
    """Decode every image with PIL; fail naming the bad ones, or (with `skip`) warn and return them.

    An image of more than `max_pixels` (width x height, read from its header before decoding) fails the
    load whatever `skip` says: the cap guards memory, and dropping such images would change the data a
    trial trains on without its identity saying so."""
    stamps = {rel: _stamp(root / rel) for rel in rels}
    known = _read_checked(root, max_pixels)
    todo = [rel for rel in rels if known.get(rel) != stamps[rel]]
    from PIL import Image

    # PIL's own warning above 89 megapixels is not shown: the cap says it by name. Filtered once, here, for
    # the pool's threads (warnings.catch_warnings swaps the process's filters: not safe inside each thread)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        found = zip(todo, pool.map(lambda rel: decode_problem(root / rel, max_pixels), todo))  # PIL: no GIL
        bad = [(rel, why) for rel, why in found if why]
    if len(bad) < len(todo):
        failed = {rel for rel, _ in bad}
        _write_checked(root, {**known, **{rel: stamps[rel] for rel in todo if rel not in failed}}, max_pixels)
    big = [(rel, why) for rel, why in bad if why.startswith(TOO_LARGE)]
    if big:
        shown = "\n  ".join(f"{root / rel}: {why}" for rel, why in big[:SHOW])
        raise ValueError(
            f"{len(big)} of {len(rels)} image files under {root} are larger than max_image_pixels={max_pixels:,} "
            f"(width x height), e.g.:\n  {shown}\nDownscale them, or raise max_image_pixels "
            f"(--max-image-pixels) if memory allows: an image takes 3 bytes per pixel decoded"
        )
    if bad and not skip:
        shown = "\n  ".join(f"{root / rel}: {why}" for rel, why in bad[:SHOW])
        raise ValueError(
            f"{len(bad)} of {len(rels)} image files under {root} cannot be decoded by PIL, e.g.:\n  "
            f"{shown}\nRepair or remove them, or set skip_bad_images=True (--skip-bad-images) to drop them"
        )
    if bad:
        warnings.warn(
            f"skip_bad_images=True: dropping {len(bad)} undecodable image files under {root}, "
            f"e.g. {[rel for rel, _ in bad[:SHOW]]}",
            stacklevel=3,
        )
    return {rel for rel, _ in bad}


def rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB, its full range kept: 16-bit and 32-bit integer images (PIL modes I;16*, I) are
    scaled from 0-65535, float images (F) from 0-1; palette, alpha, CMYK, grey and the rest convert as PIL
    converts them. ValueError for integer or float pixels outside those ranges (no range to scale from)."""
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)  # (H, W)
        top = 1.0 if im.mode == "F" else 65535.0
        if a.size and (a.min() < 0 or a.max() > top):
            raise ValueError(
                f"mode {im.mode} pixels range {a.min():g}..{a.max():g}, outside 0..{top:g}: convert the image to "
                f"8-bit RGB (or 16-bit) first"
            )
        return Image.fromarray(np.round(a * (255 / top)).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


TOO_LARGE = "too large: "  # how decode_problem's answer for an image over the pixel cap begins


def decode_problem(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why PIL cannot decode the image at `path` ("OSError: image file is truncated"), or None if it can.
    An image over `max_pixels` is not decoded: its answer starts with TOO_LARGE."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                return f"{TOO_LARGE}{width}x{height} = {width * height:,} pixels"
            im.verify()  # PNG: every chunk's checksum
        with Image.open(path) as im:  # a stream cut short or corrupt only shows when decoded
            if im.format == "JPEG":
                im.draft("RGB", DRAFT)
            im.load()
            if not im.mode.startswith(("RGB", "L", "P", "CMYK", "YCbCr", "LA", "1")):
                rgb(im)  # an integer or float image whose range cannot be scaled is refused here, by name
    except Image.DecompressionBombError as e:  # over PIL's hard limit (2 x 89 megapixels), raised by open
        return f"{TOO_LARGE}{e}"
    except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...) for a bad file
        return f"{type(e).__name__}: {e}"
    return None


def _stamp(path: Path) -> Stamp:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _checked_file(root: Path) -> Path:
    real = str(_real(root))
    return cache_dir() / "image-checks" / f"{hashlib.sha256(real.encode()).hexdigest()[:24]}.json"


def _read_checked(root: Path, max_pixels: int) -> dict[str, Stamp]:
    """The images under `root` that decoded before under the same pixel cap, with their stamps then; {} if
    none or unreadable."""
    try:
        data = parse_json(_checked_file(root).read_text(), _checked_file(root))
        if data.get("root") != str(_real(root)) or data.get("max_pixels") != max_pixels:
            return {}
        return {rel: tuple(int(v) for v in st) for rel, st in data["decoded"].items()}
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # no cache (or no home folder), or one we cannot read: decode again


def _write_checked(root: Path, decoded: dict[str, Stamp], max_pixels: int) -> None:
    """Remember what decoded (atomically; a cache that cannot be written only costs a decode next time)."""
    try:
        path = _checked_file(root)
    except RuntimeError:  # no home folder to keep a cache in
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"root": str(_real(root)), "max_pixels": max_pixels, "decoded": decoded}))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # e.g. the cache's folder is a file: nothing was written
            tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=8)
def _real(root: Path) -> Path:
    return resolved(root, "root")


def check_inside(root: Path, rel: str, where: str) -> None:
    """Refuse a listed or found path that leaves the data root (through `..`, an absolute path or a symlink)."""
    real_root = _real(root)
    target = resolved(root / rel, where)
    if not target.is_relative_to(real_root):
        raise ValueError(
            f"{where} resolves to {target}, outside the data root {real_root}; every image must "
            f"lie under the root (no '..', absolute paths or symlinks that leave it)"
        )
