"""SIGTERM ends a command-line study at once, in one line, with its lock released.

Why: `ray job stop` sends SIGTERM to the driver and SIGKILLs it 3 s later, so a clean stop must fit in
those seconds whatever the driver is doing. A Python signal handler runs only when the main thread next
executes bytecode, and Ray's start-up replaces it with its own (which unwinds Tune and Ray: several
seconds). So the handler is also reached from a watcher thread woken through `signal.set_wakeup_fd`: the
interpreter writes each caught signal's number to a pipe at once, even while the main thread waits in C
code. Whichever of the two comes first prints the line, releases the lock and exits 143; nothing is lost,
as rows are written whole and a running trial continues from its last checkpoint on `--resume`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from ..lock import StudyLock
from .config import StudyConfig


def _stop(study: StudyConfig, lock: StudyLock, signum: int) -> None:
    print(
        f"study {study.name!r} stopped by SIGTERM: finished trials keep their rows, running ones continue from "
        f"their last checkpoint; continue with --resume (study folder: {study.study_dir})",
        file=sys.stderr,
        flush=True,
    )
    lock.release()
    os._exit(128 + signum)  # not sys.exit: unwinding Tune and Ray takes longer than the 3 s a job stop allows


def _watch(read_fd: int, stop: Callable[[int], None]) -> None:
    """The watcher thread: reads the signal numbers the interpreter writes, until the pipe closes."""
    while data := os.read(read_fd, 64):
        if signal.SIGTERM in data:
            stop(signal.SIGTERM)


@contextlib.contextmanager
def stop_on_sigterm(study: StudyConfig, lock: StudyLock, active: bool = True) -> Iterator[Callable | None]:
    """While the study holds its lock, SIGTERM ends it as the module says (if `active`); yields the
    Python handler (to install again after anything that replaces it), None when inactive."""
    if not active:
        yield None
        return
    once = threading.Lock()

    def stop(signum: int) -> None:  # from the handler or the watcher, whichever runs first; once
        if once.acquire(blocking=False):
            _stop(study, lock, signum)

    def handler(signum: int, frame) -> None:
        stop(signum)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the interpreter's write from the signal handler must never block
    saved = signal.signal(signal.SIGTERM, handler)
    saved_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_fd, stop), name="sigterm-watcher", daemon=True).start()
    try:
        yield handler
    finally:
        signal.set_wakeup_fd(saved_fd)
        signal.signal(signal.SIGTERM, saved)
        os.close(write_fd)  # the watcher reads the end of the pipe and returns
