"""The manifest of a dataset folder in object storage: every file's relative path, size and sha256.

`mmap-ray data push` writes it next to the files it uploads (`<prefix>/mmap-ray-manifest.json`, uploaded
last); every node that stages the folder (`data/remote.py`) checks each downloaded file against it, so a
file changed, cut short or corrupted in the bucket is refused, naming the file. It is plain JSON, sorted,
so it diffs and reads well:

    {"format": "mmap-ray-manifest", "version": 1,
     "files": {"Art/Alarm_Clock/00001.jpg": {"size": 21344, "sha256": "9f86d0..."}, ...}}

Nothing in it is trusted: every path must be a plain relative path (no `..`, no absolute path, no
backslash) before a node writes a file under it, and a manifest from a newer mmap-ray is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from ..parse import parse_json

MANIFEST = "mmap-ray-manifest.json"
FORMAT = "mmap-ray-manifest"
VERSION = 1
CHUNK = 1 << 20  # bytes read and hashed at a time
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileEntry(NamedTuple):
    """What a file must be: its size in bytes and the hex sha256 of its content."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The files of a dataset folder, by relative POSIX path."""

    files: dict[str, FileEntry]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    def folders(self) -> tuple[str, ...]:
        """The top-level folder names (a dataset's domains and split-list folders), sorted, hidden ones left out."""
        return tuple(sorted({rel.split("/", 1)[0] for rel in self.files if "/" in rel and not rel.startswith(".")}))

    def to_json(self) -> str:
        files = {rel: e._asdict() for rel, e in sorted(self.files.items())}
        return json.dumps({"format": FORMAT, "version": VERSION, "files": files}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and check a manifest; a ValueError names `where` (the manifest's URI) and what is wrong."""
        try:
            data = parse_json(text, "the manifest")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"manifest {where} is not valid JSON ({e}); push the dataset folder again") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
            raise ValueError(f"manifest {where} is not an mmap-ray manifest (written by `mmap-ray data push`)")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise ValueError(
                f"manifest {where} has version {data.get('version')!r}; this mmap-ray reads version {VERSION}: "
                f"upgrade mmap-ray on this node"
            )
        files = {}
        for rel, entry in data["files"].items():
            size = entry.get("size") if isinstance(entry, dict) else None
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            ok = isinstance(size, int) and not isinstance(size, bool) and size >= 0
            if not (ok and isinstance(digest, str) and _SHA256.fullmatch(digest)):
                raise ValueError(f"manifest {where}: entry {rel!r} needs a size >= 0 and a hex sha256, not {entry!r}")
            check_relative(rel, f"manifest {where} (not written by `mmap-ray data push`)")
            files[rel] = FileEntry(size, digest)
        if not files:
            raise ValueError(f"manifest {where} lists no files; push a dataset folder that holds its images")
        return cls(files)


def check_relative(rel: str, where: str) -> None:
    """Refuse a path that could leave the folder it is joined to, or that is not plain POSIX."""
    parts = rel.split("/")
    if not rel or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"{where}: {rel!r} is not a plain relative path (no leading '/', '..', '.', empty part or backslash)"
        )


def read_hashing(src: BinaryIO, dst: BinaryIO | None = None) -> FileEntry:
    """The size and sha256 of what `src` holds, read in chunks (and copied to `dst` on the way, if given)."""
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return FileEntry(size, digest.hexdigest())
