"""A dataset folder in object storage, staged to each node's local disk the first time a run there reads it.

Why: the nodes of a Ray cluster come and go (the autoscaler adds GPU nodes while a study runs), and
training reads thousands of small images per epoch, which only local disk serves fast. So a run names
the dataset by its object-storage URI, and whichever process loads it first on a node copies it there:

    mmap-ray data push ~/data/OfficeHomeDataset s3://my-bucket/datasets/OfficeHomeDataset
    mmap-ray train --dataset office-home --root s3://my-bucket/datasets/OfficeHomeDataset
    python studies/grouping.py --preset office-home --root gs://my-bucket/datasets/OfficeHomeDataset ...

An S3-protocol server (MinIO, Ceph) is named as for `--storage`:
`s3://bucket/datasets/OfficeHomeDataset?endpoint_override=HOST:PORT&scheme=http`. Credentials come from
the environment (instance profile, service account, AWS_* / GOOGLE_APPLICATION_CREDENTIALS), never the URI.

**Push** (`push`, `mmap-ray data push LOCAL_FOLDER URI`) uploads every file of the folder, hashing it on
the way, then the manifest (`data/manifest.py`: relative path -> size and sha256) last. Any earlier
manifest is deleted first, so a prefix whose push was interrupted has none and is refused, not half read.
`mmap-ray data check URI` reads the manifest alone (a cheap "was it pushed?" for a node's boot script).

**Stage** (`stage`; the folder loader calls it, so the driver, every Ray Train worker and every study trial
do) copies the folder to `<cache>/<hash of the URI>/<folder name>/` and the loader reads that copy. The
cache is `$MMAP_RAY_DATA_CACHE`, else `$MMAP_RAY_CACHE/datasets`, else `~/.cache/mmap-ray/datasets`: put
it on the node's local disk, with room for the dataset.

- Every file is downloaded to a hidden temporary name, checked against the manifest's size and sha256,
  and renamed into place. The copy is marked complete (`complete.json`: the URI and the manifest it
  matches, written to a temporary name and renamed) only once every file is. A file that does not match
  raises `ManifestMismatch`, naming the object, the expected and actual size and sha256, and what to do;
  the copy stays unmarked and the next run tries again.
- A later call finds the complete copy matching the bucket's manifest (one small read) and downloads
  nothing; after a new push it downloads only the files that changed, and deletes those that went.
- Several stagers on one node (the Ray Train workers of a run, concurrent trials) take turns through a
  node-local file lock (`flock` on `<cache>/<hash>/.lock`): the first downloads, the others wait, then find
  the copy complete. The kernel releases the lock when its holder dies, so a killed stager blocks no one.
  (`mmap_ray.lock`, the study driver's lock, is not used: it refuses a second holder instead of waiting.)
- Before a study claims any cluster resource, its driver checks the URI cheaply: the manifest must exist
  and list the dataset's domains (`folders.task_names` reads the manifest instead of a folder).

Only JSON (the manifest) and the dataset's own files are read from the bucket; nothing is unpickled. A
run in progress must not share a node with a stage of a newer push of the same URI: the copy is updated
in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_dir
from ..storage import Location, StorageError, check_reachable, is_uri, location
from .manifest import MANIFEST, FileEntry, Manifest, check_relative, read_hashing

CACHE_ENV = "MMAP_RAY_DATA_CACHE"
COMPLETE = "complete.json"  # in the URI's cache folder, next to the copy: the manifest the copy matches
LOCK = ".lock"
THREADS = 16  # transfers at once: a dataset is many small images, so round trips, not bandwidth, dominate
URI_FORM = "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (add ?endpoint_override=HOST:PORT&scheme=http for MinIO)"

Log = Callable[[str], None]


class ManifestMismatch(ValueError):
    """A downloaded file is not what the manifest says; the message names it and what to do."""


@dataclass(frozen=True)
class Staged:
    """Where a staging left the local copy, and what it had to fetch."""

    root: Path  # the local copy: hand it to the loader
    downloaded: int  # files fetched from object storage by this call
    kept: int  # files already in the cache, matching the manifest


def _stderr(text: str) -> None:
    print(f"mmap-ray: {text}", file=sys.stderr, flush=True)


def data_cache() -> Path:
    """Where staged datasets live on this node: $MMAP_RAY_DATA_CACHE, else `cache_dir()/datasets`."""
    return Path(os.environ.get(CACHE_ENV) or cache_dir() / "datasets").expanduser().absolute()  # "": unset


def cache_folder(loc: Location) -> Path:
    """The URI's own folder in the cache: a short hash of the whole URI (bucket, prefix and endpoint)."""
    return data_cache() / hashlib.sha256(loc.uri.encode()).hexdigest()[:16]


def read_manifest(root: str | Location) -> Manifest:
    """The manifest of a pushed dataset folder; FileNotFoundError (no manifest) or ValueError naming the URI."""
    loc = _remote(root)
    where = loc / MANIFEST
    try:
        found = where.exists()
        text = where.read_bytes() if found else b""
    except (OSError, ValueError) as e:  # pyarrow: OSError for I/O, ArrowInvalid (a ValueError) for bad options
        raise OSError(f"cannot read {where}: {e}") from None
    if not found:
        raise FileNotFoundError(
            f"{loc} holds no {MANIFEST}: push the dataset folder there first (`mmap-ray data push LOCAL_FOLDER "
            f"{loc}`); a push that did not finish leaves none either"
        )
    return Manifest.from_json(text, where.uri)


def _remote(root: str | Location) -> Location:
    loc = location(root, "root")
    if loc.is_local:
        raise ValueError(f"{loc} is a local path, not a pushed dataset's URI: {URI_FORM}")
    return loc


def stage(root: str | Location, threads: int = THREADS, log: Log = _stderr) -> Staged:
    """Copy the pushed dataset folder at `root` (a URI) to this node's cache, checked file by file against its
    manifest; returns the local copy. Downloads nothing when a complete, matching copy is there."""
    loc = _remote(root)
    manifest = read_manifest(loc)
    folder = cache_folder(loc)
    copy = folder / (loc.name or "data")
    folder.mkdir(parents=True, exist_ok=True)
    marker = json.dumps({"uri": loc.uri, "manifest": json.loads(manifest.to_json())}, sort_keys=True)
    with _node_lock(folder / LOCK, loc, log):
        if _complete(folder / COMPLETE, marker, copy, manifest):
            return Staged(copy, 0, len(manifest.files))
        (folder / COMPLETE).unlink(missing_ok=True)  # from here the copy is unmarked until every file matches
        _remove_unlisted(copy, manifest)
        todo = [rel for rel, entry in manifest.files.items() if not _holds(copy / rel, entry)]
        if todo:
            need = sum(manifest.files[rel].size for rel in todo)
            _check_space(folder, need, loc)
            log(f"staging {loc}: downloading {len(todo)} of {len(manifest.files)} files ({_size(need)}) to {copy}")
            _download(loc, copy, manifest, todo, threads)
        tmp = folder / f".{COMPLETE}.{os.getpid()}.tmp"
        tmp.write_text(marker)
        os.replace(tmp, folder / COMPLETE)  # atomic: a reader sees no marker or the whole marker
    return Staged(copy, len(todo), len(manifest.files) - len(todo))


@contextmanager
def _node_lock(path: Path, loc: Location, log: Log) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`: one stager per cache folder on this node at a time."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process on this node that is staging {loc} (lock {path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(path: Path, marker: str, copy: Path, manifest: Manifest) -> bool:
    """The copy is marked complete for this very manifest, and every file is there with its size."""
    try:
        if path.read_text() != marker:
            return False
        return all((copy / rel).stat().st_size == e.size for rel, e in manifest.files.items())
    except OSError:  # no marker, or a file gone since
        return False


def _holds(path: Path, entry: FileEntry) -> bool:
    """A file already in place has the manifest's size and content (only hashed when the size matches)."""
    try:
        if path.stat().st_size != entry.size:
            return False
        with open(path, "rb") as f:
            return read_hashing(f) == entry
    except OSError:
        return False


def _remove_unlisted(copy: Path, manifest: Manifest) -> None:
    """Delete what the manifest does not list (files of an older push, a killed stager's temporary files)
    and the folders left empty: the loader scans folders, so anything extra would become data."""
    if not copy.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(copy, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            if (here / name).relative_to(copy).as_posix() not in manifest.files:
                (here / name).unlink()
        for name in dirnames:
            if (here / name).is_symlink():
                (here / name).unlink()
            elif not any((here / name).iterdir()):
                (here / name).rmdir()


def _check_space(folder: Path, need: int, loc: Location) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(
            f"staging {loc} needs {_size(need)} in {folder}, but its disk has {_size(free)} free: free some, or "
            f"set {CACHE_ENV} to a folder on a larger local disk"
        )


def _download(loc: Location, copy: Path, manifest: Manifest, todo: list[str], threads: int) -> None:
    """Fetch `todo` into `copy`, each through a temporary name and checked before it is renamed into place."""
    fs = loc.filesystem()

    def fetch(rel: str) -> None:
        src, target = loc / rel, copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            try:
                with fs.open_input_stream(src.path) as f, open(tmp, "wb") as out:
                    got = read_hashing(f, out)
            except OSError as e:
                raise OSError(
                    f"cannot stage {src} (listed in {loc / MANIFEST}) to {target}: {e}; if the object is gone, "
                    f"push the dataset folder again"
                ) from None
            if got != manifest.files[rel]:
                raise _mismatch(loc, rel, manifest.files[rel], got)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(fetch, rel) for rel in todo]
        try:
            for done in as_completed(futures):
                done.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _mismatch(loc: Location, rel: str, expected: FileEntry, got: FileEntry) -> ManifestMismatch:
    return ManifestMismatch(
        f"{rel} in {loc} does not match the dataset's manifest ({MANIFEST}): expected {expected.size} bytes with "
        f"sha256 {expected.sha256}, got {got.size} bytes with sha256 {got.sha256}. The object changed or was "
        f"corrupted after the push: push the dataset folder again (`mmap-ray data push LOCAL_FOLDER {loc}`). The "
        f"copy in {cache_folder(loc)} is not marked complete; the next run stages again"
    )


def push(folder: str | Path, dest: str | Location, threads: int = THREADS, log: Log = _stderr) -> Manifest:
    """Upload every file below `folder` to `dest` (a URI), then the manifest of what was uploaded, last."""
    local = Path(folder).expanduser()
    if not local.is_dir():
        raise ValueError(
            f"{folder} is not a folder; give the local dataset folder to push, the one holding its domain "
            f"folders (e.g. ~/data/OfficeHomeDataset)"
        )
    if not is_uri(dest):
        raise ValueError(f"{dest} is not an object-storage URI; give {URI_FORM}, e.g. s3://my-bucket/datasets/NAME")
    loc = location(dest, "destination")
    check_reachable(loc, "destination")
    rels = _local_files(local)
    if not rels:
        raise ValueError(f"{local} holds no files; give the dataset folder that holds its images")
    fs = loc.filesystem()
    manifest_at = loc / MANIFEST
    total = sum((local / rel).stat().st_size for rel in rels)
    log(f"pushing {len(rels)} files ({_size(total)}) from {local} to {loc}")
    try:
        if manifest_at.exists():
            fs.delete_file(manifest_at.path)  # an interrupted push then leaves no manifest: stagers refuse it

        def put(rel: str) -> FileEntry:
            with open(local / rel, "rb") as f, fs.open_output_stream((loc / rel).path) as out:
                return read_hashing(f, out)  # the manifest records what was sent, read once

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            entries = list(pool.map(put, rels))
    except OSError as e:
        raise StorageError(f"cannot push {local} to {loc}: {e}; push again (no manifest was written)") from e
    manifest = Manifest(dict(zip(rels, entries)))
    manifest_at.write_text(manifest.to_json())
    return manifest


def _local_files(local: Path) -> list[str]:
    """Every file below `local` (symlinks to files followed, to folders not), as sorted POSIX paths; the
    folder's own manifest, if it holds one, is not data."""
    rels = []
    for dirpath, _, filenames in os.walk(local):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(local).as_posix()
            if path.is_file() and rel != MANIFEST:
                check_relative(rel, f"cannot push {local}")
                rels.append(rel)
    return sorted(rels)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
