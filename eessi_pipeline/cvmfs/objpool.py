"""Batches of small objects stored by worker processes.

A small file costs little compression but several system calls (stat, open, write, close,
rename); in a thread each of them hands the GIL back and forth with the thread that parses the
tarball.  Processes have no GIL to share: batches of small contents go to them (one pickled list
per batch), each child stores the objects with its own :class:`.objects.ObjectStore` on the same
directory and returns the hashes and the paths it created, which the parent's store adopts (so an
aborted ingest still removes them).  Large contents stay in threads, where zlib and hashlib
release the GIL for long stretches.

The children are forked when the pool is made, before the ingest starts its decompressing thread,
and die with their parent (they inherit its publisher lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from .objects import ObjectStore

_CHILD_STORE: ObjectStore | None = None
_PR_SET_PDEATHSIG = 1


def _child_init(root: str, parent: int) -> None:
    global _CHILD_STORE
    _die_with(parent)
    _CHILD_STORE = ObjectStore(Path(root), 1)


def _die_with(parent: int) -> None:
    """Be killed when the parent dies (Linux ``PR_SET_PDEATHSIG``): a child outliving a ``kill -9``
    of its ingest would keep the inherited publisher lock held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # died before that took effect
        os._exit(0)


def _child_ready() -> bool:
    return _CHILD_STORE is not None


def _child_put(blobs: list[bytes]) -> tuple[list[str], list[str]]:
    store = _CHILD_STORE
    assert store is not None
    store.record_new()
    try:
        hashes = [store.put(b) for b in blobs]
    finally:
        created = store.stop_recording()
    return hashes, created


class BatchPool:
    """``workers`` processes storing lists of small contents into ``store``'s directory."""

    def __init__(self, store: ObjectStore, workers: int) -> None:
        self.store = store
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_child_init,
            initargs=(str(store.root), os.getpid()),
        )
        self._pool.submit(_child_ready).result()  # fork every child now, while this is the only busy thread

    def submit(self, blobs: list[bytes], done: Callable[[], None]) -> Future[list[str]]:
        """Store ``blobs``; the future gives their hashes in order.  ``done`` runs when it settles."""
        out: Future[list[str]] = Future()

        def settle(f: Future[tuple[list[str], list[str]]]) -> None:
            try:
                hashes, created = f.result()
            except BaseException as e:  # handed to whoever reads the result
                out.set_exception(e)
            else:
                self.store.adopt(created)
                out.set_result(hashes)
            finally:
                done()

        self._pool.submit(_child_put, blobs).add_done_callback(settle)
        return out

    def close(self) -> None:
        """Wait for every batch handed over (their objects are then known to the store) and stop."""
        self._pool.shutdown(wait=True)
