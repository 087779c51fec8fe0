"""flock-based locks that say who holds them.

The lock file holds the holder's description (``pid N since …``) for as long as the holder
keeps the lock; only the holder writes or clears it, so a waiter that gives up leaves it intact
and the next waiter still names the holder. ``flock`` is released by the kernel when the holder
dies, so a lock is never stale (its text may be: it is only read while the lock is held).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import PipelineError


def describe_self() -> str:
    return f"pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"


def read_holder(path: Path) -> str:
    """The description the current holder wrote (a few tries: it writes right after locking)."""
    for _ in range(5):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text:
            return text.splitlines()[0][:200]
        time.sleep(0.02)
    return "unknown"


def _open(path: Path) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _announce(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (describe_self() + "\n").encode(), 0)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[str | None]:
    """Take the lock without waiting: yields None when held by us, else the holder's description."""
    fd = _open(path)
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            yield read_holder(path)
            return
        _announce(fd)
        yield None
    finally:
        if acquired:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def wait_lock(
    path: Path, timeout: float, what: str, error: type[PipelineError] = PipelineError, poll: float = 0.05
) -> Iterator[None]:
    """Hold the lock, waiting up to ``timeout`` seconds; ``error`` names the holder after that."""
    fd = _open(path)
    acquired = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(
                        f"{what} is locked by {read_holder(path)} ({path}); waited {timeout:g} s: retry "
                        "when it has finished"
                    ) from None
                time.sleep(poll)
        _announce(fd)
        yield
    finally:
        if acquired:  # only the holder clears its own description
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)
