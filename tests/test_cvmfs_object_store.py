"""Objects get their name only when complete: an unnamed file (O_TMPFILE) linked into place where the
file system and /proc allow it, a temporary name and a rename where they do not; both give the same
files, world-readable under any umask, nothing left in data/txn, and a second writer of the same
bytes is not counted twice."""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path

import pytest

from eessi_pipeline.cvmfs.objects import ObjectStore, content_hash


def _store(root: Path, how: str) -> ObjectStore:
    s = ObjectStore(root, 2)
    s.ensure_layout()
    if how == "renamed":
        s._unnamed = False
    else:
        assert s._probe_unnamed(), "this machine's /tmp should allow O_TMPFILE and linkat"
    return s


@pytest.fixture(params=["unnamed", "renamed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return _store(tmp_path / "repo", request.param)


@pytest.mark.parametrize("how", ["unnamed", "renamed"])
def test_objects_are_complete_readable_and_leave_nothing_behind(how: str, tmp_path: Path) -> None:
    old = os.umask(0o077)  # a strict umask: objects must still be world-readable
    try:
        store = _store(tmp_path / "repo", how)
        store.record_new()
        hashes = [store.put(bytes([i]) * (1000 * i + 1)) for i in range(20)]
        created = store.stop_recording()
    finally:
        os.umask(old)
    assert len(created) == 20 and store.new_objects == 20
    for i, h in enumerate(hashes):
        path = store.path(h)
        raw = path.read_bytes()
        assert content_hash(raw) == h
        assert zlib.decompress(raw) == bytes([i]) * (1000 * i + 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(store.txn_dir.iterdir()) == []


def test_the_same_bytes_twice_make_one_object_counted_once(store: ObjectStore) -> None:
    h1 = store.put(b"same content")
    h2 = store.put(b"same content")
    assert h1 == h2 and store.new_objects == 1


def test_a_writer_that_loses_the_race_neither_counts_nor_replaces(tmp_path: Path) -> None:
    s = ObjectStore(tmp_path / "repo", 2)
    s.ensure_layout()
    assert s._probe_unnamed()
    compressed = zlib.compress(b"raced", 6)
    h = content_hash(compressed)
    dest = s.path(h)
    dest.write_bytes(compressed)  # the other writer's object, named between our check and our link
    before = dest.stat().st_ino

    def write(fd: int) -> str:
        os.write(fd, compressed)
        return h

    assert s._new_object(str(dest.parent), write, "") == h
    assert s.new_objects == 0 and dest.stat().st_ino == before
    assert list(s.txn_dir.iterdir()) == []


@pytest.mark.parametrize("how", ["unnamed", "renamed"])
def test_a_streamed_object_is_the_object_of_the_joined_pieces(how: str, tmp_path: Path) -> None:
    """put_stream (a file too large to hold) names its object only when complete, like every other
    object: the same file put makes of the joined bytes, world-readable, nothing left in data/txn,
    and a second stream of the same bytes neither replaces nor counts it."""
    old = os.umask(0o077)
    try:
        store = _store(tmp_path / "repo", how)
        pieces = [os.urandom(1000), b"\0" * 70_000, b"tail"]
        h = store.put_stream(iter(pieces), "P")
        ino = store.path(h, "P").stat().st_ino
        assert store.put_stream(iter(pieces), "P") == h
    finally:
        os.umask(old)
    assert store.new_objects == 1 and store.path(h, "P").stat().st_ino == ino
    assert store.path(h, "P").read_bytes() == zlib.compress(b"".join(pieces), 6)
    assert stat.S_IMODE(store.path(h, "P").stat().st_mode) == 0o644
    assert list(store.txn_dir.iterdir()) == []
