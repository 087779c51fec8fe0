"""Stratum 1 replication (``eessi_pipeline.cvmfs.replica.snapshot``) over loopback HTTP.

Sources are served by Python's ``http.server`` on 127.0.0.1: the real cvmfs_server 2.12
repository of ``tests/data/cvmfs-reference``
and our own embedded Stratum 0, copied per test from one module-wide template so keys are made
once.  The "stand-in proxy" test proves only that ``proxy=`` reaches urllib (a GET with an
absolute URL); real squid is tested with the services.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cvmfs_helpers import reference_dir, software_tarball

from eessi_pipeline.cvmfs.common import object_path
from eessi_pipeline.cvmfs.keys import sign_manifest_hash
from eessi_pipeline.cvmfs.manifest import assemble_signed
from eessi_pipeline.cvmfs.reader import HttpSource, open_repository, verify_repository
from eessi_pipeline.cvmfs.replica import (
    LAST_SNAPSHOT_NAME,
    SNAPSHOTTING_NAME,
    STATUS_NAME,
    SnapshotResult,
    date_utc,
    snapshot,
)
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import RepositoryError

NAME = "software.eessi.local"
REF_NAME = "reference.eessi.local"
REF_SRV = reference_dir() / "srv"
REF_MASTER_PUB = reference_dir() / "keys" / f"{REF_NAME}.pub"
SUBDIR = "x86_64/generic"
NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)

RequestHook = Callable[[str], None]


# --------------------------------------------------------------------------- HTTP serving


class _QuietHandler(SimpleHTTPRequestHandler):
    on_request: RequestHook | None = None

    def do_GET(self) -> None:
        if self.on_request is not None:
            self.on_request(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _StandInProxyHandler(BaseHTTPRequestHandler):
    """Answers forward-proxy requests (``GET http://host/path``) from a local directory."""

    root: Path
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in urllib.parse.unquote(url.path).split("/") if p and p not in (".", "..")]
        target = self.root.joinpath(*parts)
        if not url.scheme or not target.is_file():
            self.send_error(404 if url.scheme else 400)
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Factory: serve a directory on 127.0.0.1; returns ``http://127.0.0.1:<port>``."""
    servers: list[ThreadingHTTPServer] = []

    def _serve(directory: Path, on_request: RequestHook | None = None) -> str:
        handler = type(
            "Handler", (_QuietHandler,), {"on_request": staticmethod(on_request) if on_request else None}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield _serve
    for server in servers:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- our Stratum 0


@pytest.fixture(scope="module")
def s0_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Revision 2 of an embedded Stratum 0: a nested catalog per installation and a chunked file."""
    tmp = tmp_path_factory.mktemp("s0-template")
    repo = Repository(tmp / "state", NAME)
    repo.init(now=NOW)
    repo.store.chunk_sizes = (16 * 1024, 32 * 1024, 64 * 1024)  # small chunks, so P objects appear
    files = {
        "software/foo/1.0/bin/foo": b"#!/bin/sh\necho foo\n",
        "software/foo/1.0/lib/libfoo.so": os.urandom(300_000),
        "modules/all/foo/1.0.lua": b'whatis("foo")\n',
    }
    repo.ingest(software_tarball(tmp, "2023.06", SUBDIR, files), now=NOW)
    return tmp / "state"


@pytest.fixture
def s0(s0_template: Path, tmp_path: Path) -> Repository:
    """A private copy of the template Stratum 0 (keys included)."""
    shutil.copytree(s0_template, tmp_path / "state", symlinks=True)
    return Repository(tmp_path / "state", NAME)


def _url(base: str) -> str:
    return f"{base}/cvmfs/{NAME}"


def _master(repo: Repository) -> bytes:
    return repo.paths.keys.master_public.read_bytes()


def _objects(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "data").glob("[0-9a-f][0-9a-f]/*")}


def _ingest_small(repo: Repository, tmp: Path, name: str = "hello.txt") -> None:
    files = {f"software/bar/2.0/{name}": b"hello, replica\n"}
    repo.ingest(software_tarball(tmp, "2023.06", SUBDIR, files, stamp=1700000100), now=NOW)


def _assert_clean(dest: Path) -> None:
    """No snapshotting marker and nothing half-written left behind."""
    assert not (dest / SNAPSHOTTING_NAME).exists()
    assert list((dest / "data" / "txn").iterdir()) == []


# --------------------------------------------------------------------------- (1) the real server's repository


def test_snapshot_reference_repository_replica_verifies_at_revision_4(serve: Serve, tmp_path: Path) -> None:
    base = serve(REF_SRV)
    source = REF_SRV / "cvmfs" / REF_NAME
    dest = tmp_path / "replica" / REF_NAME
    master = REF_MASTER_PUB.read_bytes()

    result = snapshot(f"{base}/cvmfs/{REF_NAME}", dest, master, now=NOW)

    assert (result.name, result.revision, result.previous_revision) == (REF_NAME, 4, None)
    report = verify_repository(dest, master, now=NOW)
    assert report.revision == 4 and report.warnings == ()
    for name in (".cvmfspublished", ".cvmfswhitelist", ".cvmfsreflog"):
        assert (dest / name).read_bytes() == (source / name).read_bytes(), name
    with open_repository(dest, master, now=NOW) as replica:
        tags = replica.tags()
        history = replica.manifest.history
    assert {t.revision for t in tags} == {1, 2, 3, 4}
    for tag in tags:
        assert (dest / object_path(tag.hash, "C")).is_file(), tag.name
    # Everything the source holds except the history databases of earlier revisions, which
    # nothing the manifest reaches refers to (cvmfs_swissknife pull leaves them behind too).
    expected = {o for o in _objects(source) if not o.endswith("H") or o == object_path(history or "", "H")}
    assert _objects(dest) == expected
    assert result.objects_fetched == len(expected) and result.objects_skipped == 0
    assert result.catalogs_fetched == len([o for o in expected if o.endswith("C")])
    _assert_clean(dest)


def test_snapshot_reference_repository_again_fetches_nothing(serve: Serve, tmp_path: Path) -> None:
    url = f"{serve(REF_SRV)}/cvmfs/{REF_NAME}"
    dest = tmp_path / REF_NAME
    master = REF_MASTER_PUB.read_bytes()
    first = snapshot(url, dest, master, now=NOW)

    again = snapshot(url, dest, master, now=NOW, workers=1)

    assert (again.revision, again.previous_revision) == (4, 4)
    assert again.objects_fetched == 0 and again.catalogs_fetched == 0
    assert again.objects_skipped > 0 and again.bytes_fetched < first.bytes_fetched / 10
    assert verify_repository(dest, master, now=NOW).revision == 4


# --------------------------------------------------------------------------- (2) incremental snapshots


def test_snapshot_after_new_publish_fetches_only_new_objects(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    url = _url(serve(s0.paths.state_dir / "srv"))
    dest = tmp_path / "s1" / NAME
    first = snapshot(url, dest, _master(s0), now=NOW)
    assert first.revision == 2 and first.objects_fetched == len(_objects(s0.paths.root) - _old_histories(s0))
    assert any(o.endswith("P") for o in _objects(dest)), "the chunked file's P objects were not replicated"
    before = _objects(s0.paths.root)
    never_current = _old_histories(s0)  # revision 1's history: no snapshot saw it as the current one
    _ingest_small(s0, tmp_path)
    new_on_s0 = _objects(s0.paths.root) - before

    second = snapshot(url, dest, _master(s0), now=NOW)

    assert (second.revision, second.previous_revision) == (3, 2)
    assert second.objects_fetched == len(new_on_s0)
    assert _objects(dest) == _objects(s0.paths.root) - never_current
    assert second.bytes_fetched < 100_000 < 300_000 < first.bytes_fetched
    assert verify_repository(dest, _master(s0)).revision == 3
    assert (dest / ".cvmfspublished").read_bytes() == s0.paths.manifest.read_bytes()
    _assert_clean(dest)


def test_snapshot_follows_previous_revisions_until_a_local_catalog(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    url = _url(serve(s0.paths.state_dir / "srv"))
    dest = tmp_path / NAME
    snapshot(url, dest, _master(s0), now=NOW)
    before = _objects(s0.paths.root)
    _ingest_small(s0, tmp_path, "a.txt")
    root_3 = s0.manifest().root_catalog
    revision_3 = _objects(s0.paths.root) - before
    _ingest_small(s0, tmp_path, "b.txt")
    _drop_history(s0)  # no tags: only revision 4's previous_revision leads to revision 3

    result = snapshot(url, dest, _master(s0), now=NOW)

    assert (result.revision, result.previous_revision) == (4, 2)
    assert (dest / object_path(root_3, "C")).is_file()
    assert {o for o in revision_3 if not o.endswith("H")} <= _objects(dest)
    assert verify_repository(dest, _master(s0)).revision == 4


def _drop_history(repo: Repository) -> None:
    """Re-sign the manifest without H (so the replicator sees no tags)."""
    body = repo.manifest().with_(history=None).body()
    signature = sign_manifest_hash(repo.paths.keys.key, hashlib.sha1(body).hexdigest())
    repo.paths.manifest.write_bytes(assemble_signed(body, signature))


def _old_histories(repo: Repository) -> set[str]:
    current = object_path(repo.manifest().history or "", "H")
    return {o for o in _objects(repo.paths.root) if o.endswith("H") and o != current}


# --------------------------------------------------------------------------- (3) a failed snapshot


def test_snapshot_tampered_object_fails_naming_it_and_keeps_previous_revision(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    url = _url(serve(s0.paths.state_dir / "srv"))
    dest = tmp_path / NAME
    snapshot(url, dest, _master(s0), now=NOW)
    old_manifest = (dest / ".cvmfspublished").read_bytes()
    before = _objects(s0.paths.root)
    _ingest_small(s0, tmp_path)
    (new_data,) = [o for o in _objects(s0.paths.root) - before if o[-1] in "0123456789abcdef"]
    tampered = s0.paths.root / new_data
    good = tampered.read_bytes()
    tampered.write_bytes(zlib.compress(b"not what was published\n"))

    with pytest.raises(RepositoryError, match=new_data) as info:
        snapshot(url, dest, _master(s0), now=NOW)

    assert "altered" in str(info.value) and "still serves revision 2" in str(info.value)
    assert (dest / ".cvmfspublished").read_bytes() == old_manifest
    assert verify_repository(dest, _master(s0)).revision == 2
    assert not (dest / new_data).exists()
    _assert_clean(dest)
    # Once the Stratum 0 serves the right object again, the next snapshot completes.
    tampered.write_bytes(good)
    assert snapshot(url, dest, _master(s0), now=NOW).revision == 3
    assert verify_repository(dest, _master(s0)).revision == 3


def test_snapshot_missing_object_fails_and_keeps_previous_revision(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    url = _url(serve(s0.paths.state_dir / "srv"))
    dest = tmp_path / NAME
    snapshot(url, dest, _master(s0), now=NOW)
    before = _objects(s0.paths.root)
    _ingest_small(s0, tmp_path)
    new_catalog = sorted(o for o in _objects(s0.paths.root) - before if o.endswith("C"))[0]
    (s0.paths.root / new_catalog).unlink()

    with pytest.raises(RepositoryError, match=rf"{new_catalog}: missing from the repository"):
        snapshot(url, dest, _master(s0), now=NOW)

    assert verify_repository(dest, _master(s0)).revision == 2
    _assert_clean(dest)


def test_snapshot_interrupted_earlier_leftovers_are_cleaned(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    (dest / "data" / "txn").mkdir(parents=True)
    (dest / "data" / "txn" / "replica.leftover").write_bytes(b"half an object")
    (dest / SNAPSHOTTING_NAME).write_text("Mon Nov 30 10:00:00 UTC 2026\n")

    result = snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=NOW)

    assert result.revision == 2
    _assert_clean(dest)


# --------------------------------------------------------------------------- (4)-(6) refusals


def test_snapshot_source_without_master_replica_refused(s0: Repository, serve: Serve, tmp_path: Path) -> None:
    (s0.paths.root / ".cvmfs_master_replica").unlink()
    dest = tmp_path / NAME

    with pytest.raises(RepositoryError, match=r"\.cvmfs_master_replica: not found.*not a replication source"):
        snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=NOW)

    assert not (dest / ".cvmfspublished").exists() and not (dest / SNAPSHOTTING_NAME).exists()


def test_snapshot_wrong_master_key_refused(s0: Repository, serve: Serve, tmp_path: Path) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    dest = tmp_path / NAME

    with pytest.raises(RepositoryError, match=r"\.cvmfswhitelist: the signature does not verify"):
        snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, pem, now=NOW)

    assert not (dest / ".cvmfspublished").exists()
    assert _objects(dest) == set()
    _assert_clean(dest)


def test_snapshot_expired_whitelist_refused(s0: Repository, serve: Serve, tmp_path: Path) -> None:
    later = NOW + dt.timedelta(days=31)
    with pytest.raises(RepositoryError, match=r"\.cvmfswhitelist: expired"):
        snapshot(_url(serve(s0.paths.state_dir / "srv")), tmp_path / NAME, _master(s0), now=later)


def test_snapshot_older_source_revision_refused_as_rollback(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    old_copy = tmp_path / "old-srv"
    shutil.copytree(s0.paths.state_dir / "srv", old_copy)  # revision 2
    _ingest_small(s0, tmp_path)
    dest = tmp_path / NAME
    snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=NOW)
    manifest = (dest / ".cvmfspublished").read_bytes()

    with pytest.raises(RepositoryError, match=r"revision 2 .*older than the replica's revision 3.*roll"):
        snapshot(_url(serve(old_copy)), dest, _master(s0), now=NOW)

    assert (dest / ".cvmfspublished").read_bytes() == manifest
    assert verify_repository(dest, _master(s0)).revision == 3
    _assert_clean(dest)


def test_snapshot_other_repository_into_replica_refused(s0: Repository, serve: Serve, tmp_path: Path) -> None:
    other = Repository(tmp_path / "other", "other.eessi.local")
    other.init(now=NOW)
    dest = tmp_path / NAME
    snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=NOW)

    url = f"{serve(other.paths.state_dir / 'srv')}/cvmfs/other.eessi.local"
    with pytest.raises(RepositoryError, match=r"serves repository 'other.eessi.local'"):
        snapshot(url, dest, other.paths.keys.master_public.read_bytes(), now=NOW)

    assert verify_repository(dest, _master(s0)).revision == 2


def test_snapshot_concurrent_snapshot_into_same_replica_refused(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RepositoryError, match="another snapshot into this replica is running"):
            snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=NOW)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("url", "workers", "match"),
    [
        ("/srv/cvmfs/software.eessi.local", 8, "not an HTTP URL"),
        ("http://127.0.0.1:1/cvmfs/x", 0, "workers must be at least 1"),
    ],
    ids=["local-path", "zero-workers"],
)
def test_snapshot_bad_arguments_refused(tmp_path: Path, url: str, workers: int, match: str) -> None:
    with pytest.raises(RepositoryError, match=match):
        snapshot(url, tmp_path / "replica", b"", workers=workers)


# --------------------------------------------------------------------------- (7) status files and order


def test_snapshot_status_files_written_in_date_utc_format(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    dest.mkdir()
    (dest / STATUS_NAME).write_text(
        json.dumps({"last_gc": "Fri Aug 25 01:00:00 UTC 2023", "check_status": "succeeded"})
    )
    when = dt.datetime(2023, 8, 26, 22, 2, 3, tzinfo=dt.UTC)

    result = snapshot(_url(serve(s0.paths.state_dir / "srv")), dest, _master(s0), now=when)

    status = json.loads((dest / STATUS_NAME).read_text())
    assert status == {
        "last_gc": "Fri Aug 25 01:00:00 UTC 2023",
        "check_status": "succeeded",
        "last_snapshot": "Sat Aug 26 22:02:03 UTC 2023",
    }
    assert (dest / LAST_SNAPSHOT_NAME).read_text() == "Sat Aug 26 22:02:03 UTC 2023\n"
    assert result.last_snapshot == "Sat Aug 26 22:02:03 UTC 2023"
    assert dt.datetime.strptime(status["last_snapshot"], "%a %b %d %H:%M:%S %Z %Y") == when.replace(
        tzinfo=None
    )
    _assert_clean(dest)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (dt.datetime(2023, 8, 26, 22, 2, 3, tzinfo=dt.UTC), "Sat Aug 26 22:02:03 UTC 2023"),
        (dt.datetime(2023, 8, 5, 0, 0, 9, tzinfo=dt.UTC), "Sat Aug  5 00:00:09 UTC 2023"),
        (
            dt.datetime(2024, 1, 1, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "Sun Dec 31 23:30:00 UTC 2023",
        ),
        (dt.datetime(2026, 2, 14, 8, 0, 0), "Sat Feb 14 08:00:00 UTC 2026"),
    ],
    ids=["two-digit-day", "space-padded-day", "other-zone-converted", "naive-is-utc"],
)
def test_date_utc_formats_like_gnu_date(when: dt.datetime, expected: str) -> None:
    assert date_utc(when) == expected


def test_snapshot_in_progress_marker_written_first_and_manifest_last(
    s0: Repository, serve: Serve, tmp_path: Path
) -> None:
    dest = tmp_path / NAME
    marker_seen: dict[str, bool] = {}

    def on_request(path: str) -> None:
        marker_seen[path.rsplit("/", 1)[-1]] = (dest / SNAPSHOTTING_NAME).is_file()

    snapshot(_url(serve(s0.paths.state_dir / "srv", on_request)), dest, _master(s0), now=NOW)

    assert ".cvmfs_master_replica" in marker_seen and not marker_seen[".cvmfs_master_replica"]
    assert marker_seen[".cvmfspublished"] and all(
        v for k, v in marker_seen.items() if k != ".cvmfs_master_replica"
    )
    written = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    manifest = written.pop(dest / ".cvmfspublished")
    for path in (dest / STATUS_NAME, dest / LAST_SNAPSHOT_NAME):
        written.pop(path)
    assert manifest >= max(written.values())
    _assert_clean(dest)


def test_snapshot_logs_progress_at_info(
    s0: Repository, serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="eessi_pipeline.cvmfs.replica"):
        result = snapshot(_url(serve(s0.paths.state_dir / "srv")), tmp_path / NAME, _master(s0), now=NOW)
    messages = [r.getMessage() for r in caplog.records]
    assert any("objects fetched" in m and "/" in m for m in messages)
    assert any(f"{result.objects_fetched} objects fetched" in m for m in messages)


# --------------------------------------------------------------------------- (8) proxy


def test_snapshot_stand_in_proxy_receives_every_request(s0: Repository, tmp_path: Path) -> None:
    handler = type("Proxy", (_StandInProxyHandler,), {"root": s0.paths.state_dir / "srv", "seen": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
        origin = f"http://stratum0.invalid/cvmfs/{NAME}"  # resolvable only through the proxy
        dest = tmp_path / NAME

        result = snapshot(origin, dest, _master(s0), proxy=proxy_url, now=NOW)
    finally:
        proxy.shutdown()
        proxy.server_close()

    assert isinstance(result, SnapshotResult) and result.revision == 2
    seen: list[str] = handler.seen
    assert seen and all(u.startswith(f"{origin}/") for u in seen)
    assert f"{origin}/.cvmfs_master_replica" in seen and f"{origin}/.cvmfspublished" in seen
    assert verify_repository(dest, _master(s0)).revision == 2


def test_http_source_unreachable_proxy_named_in_error() -> None:
    source = HttpSource("http://stratum0.invalid/cvmfs/x", timeout=2.0, proxy="http://127.0.0.1:1")
    with pytest.raises(RepositoryError, match=r"via proxy http://127\.0\.0\.1:1"):
        source.fetch(".cvmfspublished")
