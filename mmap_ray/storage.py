"""Where a study keeps its files: a local folder or object storage (`s3://`, `gs://`), one interface for both.

A `Location` is a path or URI as the user wrote it, for example `runs/studies`, `/shared/studies`,
`s3://bucket/studies` or, for an S3-protocol server such as MinIO or moto,
`s3://bucket/studies?endpoint_override=127.0.0.1:9000&scheme=http`. pyarrow.fs does the I/O, so the same
code path serves our own files (study.json, partitions.json, the Parquet results, checkpoint reads) and
Ray's (`storage_path` + `storage_filesystem`, as Ray wants it for custom endpoints).

Writes are atomic for readers: a local file is written to a hidden temporary name and renamed into place;
an object-store PUT only becomes visible once the whole object is uploaded, so it is written directly.
Credentials never go in the URI (it is saved in study.json): they come from the environment, as for any
AWS or GCS client.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

OBJECT_SCHEMES = ("s3", "gs")
_SECRET_KEYS = ("access_key", "secret_key", "session_token")


class StorageError(OSError):
    """A study file could not be written; the message names the file and the cause."""


@dataclass(frozen=True)
class Location:
    """A file or folder, local or in object storage. Build with `location()`."""

    scheme: str  # "" for local
    path: str  # scheme-less: an absolute local path, or "bucket/key/prefix"
    query: str = ""  # filesystem options of a URI (endpoint_override, scheme, region, ...)

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> Location:
        return Location(self.scheme, posixpath.join(self.path, str(part)), self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(self.scheme, posixpath.dirname(self.path.rstrip("/")), self.query)

    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem (picklable: Ray ships it to the Train workers)."""
        if self.is_local:
            return pafs.LocalFileSystem()
        return _object_store(self.scheme, self.path.split("/", 1)[0], self.query)

    def ray_storage(self) -> dict:
        """`storage_path` and `storage_filesystem` for a Ray Tune / Ray Train `RunConfig`."""
        if self.is_local:
            return {"storage_path": self.path}
        return {"storage_path": self.path, "storage_filesystem": self.filesystem()}

    # ---- I/O ----

    def exists(self) -> bool:
        return self.filesystem().get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.filesystem().get_file_info(self.path).type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.filesystem().open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file; readers see the old file or the new one, never a part.

        A failed write (read-only folder, full disk, lost connection) raises `StorageError` naming the
        file and leaves any earlier version of it, and every other file, as it was.
        """
        try:
            if self.is_local:
                self._write_local(data)
            else:
                with self.filesystem().open_output_stream(self.path) as f:  # one PUT, or a multipart upload
                    f.write(data)  # completed at close: an object appears whole or not at all
        except OSError as e:
            raise StorageError(
                f"cannot write {self.uri}: {e.strerror or e}; any earlier version of it is intact"
            ) from e

    def _write_local(self, data: bytes) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove_tree(self) -> None:
        """Delete this folder and everything below it (a missing folder is fine)."""
        try:
            if self.exists():
                self.filesystem().delete_dir(self.path)
        except OSError as e:
            raise StorageError(f"cannot delete {self.uri}: {e.strerror or e}") from e

    def glob(self, pattern: str) -> list[Location]:
        """Files below this folder whose relative path matches `pattern` (fnmatch, `/` separated), sorted."""
        fs = self.filesystem()
        if fs.get_file_info(self.path).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        root = self.path.rstrip("/") + "/"
        rel = sorted(i.path[len(root) :] for i in infos if i.path.startswith(root) and i.type == pafs.FileType.File)
        return [self / r for r in rel if fnmatch.fnmatchcase(r, pattern) and not posixpath.basename(r).startswith(".")]

    def dirs(self, pattern: str = "*") -> list[Location]:
        """Direct sub-folders whose name matches `pattern`, sorted."""
        fs = self.filesystem()
        if fs.get_file_info(self.path).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(self.path))
        return sorted(
            (
                self / posixpath.basename(i.path)
                for i in infos
                if i.type == pafs.FileType.Directory and fnmatch.fnmatchcase(posixpath.basename(i.path), pattern)
            ),
            key=lambda loc: loc.path,
        )


@functools.lru_cache(maxsize=32)
def _object_store(scheme: str, bucket: str, query: str) -> pafs.FileSystem:
    """One filesystem per bucket and options: from_uri may resolve the bucket's region over the network."""
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}" + (f"?{query}" if query else ""))
    return fs


def safe_name(value: object) -> str:
    """`value` as a file or folder name: every character but letters, digits and `-_.` replaced by `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))


def is_uri(where: str | os.PathLike | Location) -> bool:
    """Whether `where` is written as a URI (`s3://...`, or an unsupported `ftp://...`), not a local path."""
    return "://" in str(where)


def resolved(path: str | os.PathLike, field: str = "path") -> Path:
    """`path` made absolute with its symlinks followed; ValueError naming `field` for a symlink loop."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # Python 3.11: RuntimeError('Symlink loop from ...')
        raise ValueError(f"{field}={str(path)!r} cannot be resolved ({e}): a symlink loop?") from None


def location(where: str | os.PathLike | Location, field: str = "storage_path") -> Location:
    """Parse a local path or a `s3://` / `gs://` URI; a bad one fails with a message naming `field`."""
    if isinstance(where, Location):
        return where
    text = str(where)
    if not is_uri(text):
        return Location("", str(resolved(text, field)))
    parts = urlsplit(text)
    if parts.scheme not in OBJECT_SCHEMES:
        raise ValueError(
            f"{field}={text!r}: unsupported scheme {parts.scheme!r}; use a local folder, a shared filesystem "
            f"mounted on every node, or one of {[s + '://' for s in OBJECT_SCHEMES]}"
        )
    if not parts.netloc:
        raise ValueError(f"{field}={text!r} names no bucket; write {parts.scheme}://BUCKET/PREFIX")
    secrets = sorted(set(parse_qs(parts.query)) & set(_SECRET_KEYS))
    if secrets:
        raise ValueError(
            f"{field}={text!r} carries credentials ({secrets}); the URI is saved with the study, so pass them "
            f"through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, or "
            f"GOOGLE_APPLICATION_CREDENTIALS)"
        )
    path = (parts.netloc + parts.path).rstrip("/")
    return Location(parts.scheme, path, parts.query)


def location_as_given(where: str | os.PathLike | Location, field: str = "storage_path") -> Location:
    """`location(where)`, but a local path keeps its symlinks (absolute, not resolved): a `results` link
    inside a study folder still belongs to that folder."""
    if isinstance(where, Location) or is_uri(str(where)):
        return location(where, field)
    return Location("", os.path.normpath(Path(where).expanduser().absolute()))


def default_storage() -> str:
    """Where studies live when no --storage is given: $MMAP_RAY_STORAGE, else ~/mmap-ray/studies."""
    return os.environ.get("MMAP_RAY_STORAGE") or str(Path.home() / "mmap-ray" / "studies")


def job_working_copy(cwd: str | os.PathLike | None = None) -> Path | None:
    """Ray's per-job copy of a submitted working dir that this process runs in, if it does; else None.

    `ray job submit --working-dir DIR` runs the driver in `<session>/runtime_resources/working_dir_files/
    _ray_pkg_<hash>/`, which Ray deletes with the job's files. Read from the working directory itself, not
    from a variable: Ray's job supervisor sets no `RAY_JOB_ID` for the driver.
    """
    path = Path(cwd or os.getcwd()).resolve()
    for folder in (path, *path.parents):
        if folder.name.startswith("_ray_pkg_") and folder.parent.name == "working_dir_files":
            return folder
    return None


def resolve_storage(where: str | None, field: str = "storage") -> str:
    """The storage root a study uses, resolved once, in the driver: the default for None, a URI as given,
    a local path made absolute against the folder the user launched from.

    A relative path in a submitted job's driver (the job runs in Ray's temporary copy of the working dir,
    so "relative" has no folder the user knows) is refused: the study would be deleted with the job.
    """
    if where is None:
        where = default_storage()
    if is_uri(where) or Path(where).expanduser().is_absolute():
        return where if is_uri(where) else str(resolved(where, field))
    copy = job_working_copy()
    if copy is not None:
        raise ValueError(
            f"{field}={where!r} is a relative path, and this driver runs in Ray's temporary copy of the job's "
            f"working dir ({copy}), which Ray deletes with the job: pass an absolute path (shared by every "
            f"node) or a URI (s3://BUCKET/PREFIX), or leave it out for the default ($MMAP_RAY_STORAGE, else "
            f"~/mmap-ray/studies on the node the driver runs on)"
        )
    return str(resolved(where, field))


def move_aside(folder: Location, suffix: str) -> Location:
    """Rename `folder` to `<folder>.<suffix>` (object stores: copy every object, then delete the originals)."""
    return move_folder(folder, folder.parent / f"{folder.name}.{suffix}")


def move_folder(folder: Location, target: Location) -> Location:
    """Rename `folder` to `target`, a name that must be free (object stores: copy, then delete)."""
    fs = folder.filesystem()
    if target.exists():
        raise ValueError(f"cannot move {folder} aside: {target} exists already")
    try:
        if folder.is_local:
            os.rename(folder.path, target.path)
            return target
        for src in folder.glob("*"):
            fs.copy_file(src.path, target.path + src.path[len(folder.path) :])
        fs.delete_dir(folder.path)
    except OSError as e:
        raise StorageError(f"cannot move {folder} aside to {target}: {e}") from e
    return target


def check_reachable(loc: Location, field: str = "storage_path") -> None:
    """Fail now, with the reason, if the bucket cannot be listed (wrong endpoint, bucket or credentials) or
    the local folder cannot be one (a file stands where it or a parent folder would be)."""
    if loc.is_local:
        path = Path(loc.path)
        try:
            for p in (path, *path.parents):
                if p.exists() and not p.is_dir():
                    raise ValueError(f"{field}={loc.uri!r}: {p} is a file, not a folder; choose a folder")
        except OSError as e:  # a name too long, a folder we may not enter
            raise ValueError(f"{field}={loc.uri!r}: {e.strerror or e}") from None
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.filesystem().get_file_info(bucket)
    except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError) for bad options, OSError for I/O
        raise ValueError(f"{field}={loc.uri!r}: cannot reach the object store: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"{field}={loc.uri!r}: bucket {bucket!r} does not exist (create it first)")
