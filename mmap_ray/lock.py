"""One driver per study: a lock file in the study folder, on a local folder or on object storage.

Why: two drivers on one study would run the same trials twice and race on the study's files. The lock
is a small JSON file, `<study>/.lock`, naming its holder (host, pid, start time, a random token):

- Local folders take it with an exclusive create (`O_CREAT | O_EXCL`): exactly one process wins.
- S3 (and S3-protocol servers) take it with a conditional write, `PutObject` with `If-None-Match: *`
  through boto3 (pyarrow has no create-if-absent): the store lets exactly one writer create the object.
- gs:// still checks that no lock exists, writes its own, waits and reads it back. That is not mutual
  exclusion (a writer delayed past another's read-back wins too); GCS's conditional write
  (`ifGenerationMatch=0`) needs its own client, not a dependency yet. Rows stay unique either way: their
  file names are their identity (`mmap_ray.results`).

A lock whose holder ran on this host and whose process is gone is stale and is taken over with a note.
Any other held lock is refused with a message naming the holder; `--break-lock` takes it over after a
crash on another machine.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from .parse import parse_json
from .storage import Location, StorageError

LOCK_NAME = ".lock"
SETTLE_S = 1.0  # gs://: how long a driver waits before reading its lock back


class LockHeld(ValueError):
    """Another driver holds the study's lock; the message names it and how to break a stale one."""


@dataclass
class StudyLock:
    """A held lock; `release()` removes it if it is still ours."""

    path: Location
    token: str

    def release(self) -> None:
        try:
            if _holder(self.path).get("token") == self.token:
                self.path.filesystem().delete_file(self.path.path)
        except (OSError, ValueError):
            pass  # gone already, or unreadable: never fail a study on its way out

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Location) -> dict:
    try:
        data = parse_json(path.read_text(), path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict) -> bool:
    """The holder ran on this host and its process no longer exists."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def running(folder: Location) -> str | None:
    """Who holds the study's lock ('pid 12 on host 'h', since ...'), or None when nobody does (no lock, or a
    lock whose process on this host is gone)."""
    path = folder / LOCK_NAME
    try:
        if not path.exists():
            return None
    except OSError:
        return None
    holder = _holder(path)
    return None if _stale(holder) else _describe(holder)


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock file"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, since {holder.get('started')}"


def _held(folder: Location, path: Location, hint: str = "") -> LockHeld:
    return LockHeld(f"study {folder} is in use by another driver ({_describe(_holder(path))}; lock file {path}){hint}")


def acquire(folder: Location, break_lock: bool = False) -> StudyLock:
    """Take the study folder's lock, or raise `LockHeld` naming who holds it."""
    path = folder / LOCK_NAME
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": secrets.token_hex(8),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[:8],
    }
    text = json.dumps(me, indent=2) + "\n"
    if path.exists():
        holder = _holder(path)
        if not (break_lock or _stale(holder)):
            raise _held(
                folder, path, "; wait for it to end, or if it crashed on another machine, rerun with --break-lock"
            )
        print(
            f"note: taking over the lock of study {folder} from {_describe(holder)} "
            f"({'--break-lock' if break_lock else 'that process is gone'})",
            file=sys.stderr,
        )
        path.filesystem().delete_file(path.path)
    if folder.is_local:
        os.makedirs(folder.path, exist_ok=True)
        try:
            fd = os.open(path.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise _held(folder, path) from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
    elif folder.scheme == "s3":
        if not _create_s3(path, text):
            raise _held(folder, path)
    else:
        path.write_text(text)
        time.sleep(SETTLE_S)
        if _holder(path).get("token") != me["token"]:
            raise _held(folder, path)
    return StudyLock(path, me["token"])


def _create_s3(path: Location, text: str) -> bool:
    """Create the object at `path` with `text` unless one exists (If-None-Match: *); False if one does."""
    import boto3  # here: only a lock on S3 needs it, and it costs start-up time
    from botocore.exceptions import BotoCoreError, ClientError

    options = {k: v[-1] for k, v in parse_qs(path.query).items()}  # as pyarrow reads them
    endpoint = options.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    bucket, key = path.path.split("/", 1)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name=options.get("region"))
        client.put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False  # another driver's lock is there (412), or its write is in flight (409)
        raise StorageError(f"cannot write {path.uri}: {e}") from e
    except BotoCoreError as e:  # no credentials, endpoint unreachable, ...
        raise StorageError(f"cannot write {path.uri}: {e}") from e
    return True
