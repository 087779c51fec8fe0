"""Reliability: concurrent publishers, hostile tarballs through the real ingest path, tampered
Stratum 1 replicas, servers going down under a client, and a bounded load test through squid.

Everything is bounded (hypothesis examples, requests, seconds) and listens on loopback only.
The kill -9 at every publish step and the lock tests live in test_cvmfs_repository.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import random
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cvmfs_helpers import serve_directory, software_tarball
from helpers import free_ports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline import cli
from eessi_pipeline.cvmfs.client import ClientConfig, open_client
from eessi_pipeline.cvmfs.common import object_path
from eessi_pipeline.cvmfs.reader import HttpSource, RepositoryReader, open_repository, verify_repository
from eessi_pipeline.cvmfs.replica import snapshot
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.cvmfs.tarcheck import printable
from eessi_pipeline.errors import RepositoryError

NAME = "software.eessi.local"
VERSION = "2023.06"
SUBDIR = "x86_64/generic"
PREFIX = f"/versions/{VERSION}/software/linux/{SUBDIR}"
SW = f"{VERSION}/software/linux/{SUBDIR}"
HOSTILE_NAME = f"eessi-{VERSION}-software-linux-x86_64-generic-1700000000.tar.gz"


def _objects(repo: Repository) -> set[str]:
    data = repo.paths.root / "data"
    return {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.parent.name != "txn"}


def _package(i: int, files: int = 5) -> dict[str, bytes]:
    return {
        f"software/pkg{i}/1.0/file{j}": f"package {i} file {j}\n".encode() * (j + 1) for j in range(files)
    }


# -- two publishers at once ------------------------------------------------------------------------------


def _publish(state: str, tarball: str, log: str, go: multiprocessing.synchronize.Event) -> None:
    go.wait(10)
    marks: list[float] = []

    def hook(step: str) -> None:
        if not marks:
            marks.append(time.monotonic())  # first step of the commit: inside the lock
        if step == "catalogs written":
            time.sleep(0.3)  # widen the window in which an unserialised publisher would interleave
        if step == "manifest written":
            marks.append(time.monotonic())

    result = Repository(Path(state), NAME).ingest(Path(tarball), hook=hook)
    Path(log).write_text(f"{marks[0]} {marks[1]} {result.revision}\n")


def test_two_publishers_at_once_serialised_both_revisions_land(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "state", NAME)
    repo.init()
    tarballs = []
    for i in (1, 2):
        (tmp_path / f"t{i}").mkdir()
        tarballs.append(software_tarball(tmp_path / f"t{i}", VERSION, SUBDIR, _package(i)))
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    logs = [tmp_path / f"log{i}" for i in (1, 2)]
    procs = [
        ctx.Process(target=_publish, args=(str(repo.paths.state_dir), str(t), str(log), go))
        for t, log in zip(tarballs, logs, strict=True)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    (s1, e1, r1), (s2, e2, r2) = (log.read_text().split() for log in logs)
    assert sorted([int(r1), int(r2)]) == [2, 3]  # both revisions landed, one after the other
    assert float(e1) <= float(s2) or float(e2) <= float(s1), "the two commits interleaved"
    report = verify_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes())
    assert report.revision == 3
    with open_repository(repo.paths.root) as reader:
        for i in (1, 2):
            for rel, data in _package(i).items():
                assert reader.read_file(f"{PREFIX}/{rel}") == data  # nothing lost
        assert {t.revision for t in reader.tags() if t.name.startswith("generic")} == {1, 2, 3}


# -- hostile tarballs through `repo ingest` ---------------------------------------------------------------

_BASE: list[tuple[str, str, bytes, int]] = [
    (VERSION, "dir", b"", 0o755),
    (f"{VERSION}/software", "dir", b"", 0o755),
    (f"{VERSION}/software/linux", "dir", b"", 0o755),
    (f"{VERSION}/software/linux/x86_64", "dir", b"", 0o755),
    (SW, "dir", b"", 0o755),
    (f"{SW}/modules/all/GCC", "dir", b"", 0o755),
    (f"{SW}/modules/all/GCC/13.2.0.lua", "file", b"-- module\n", 0o644),
]
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
          "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}  # fmt: skip


def _hostile(kind: str, tag: str) -> tuple[str, str, bytes, int, str, str]:
    """(name, type, data, mode, link target, reason the refusal must give) for one hostile member."""
    base = f"{SW}/{tag}"
    table = {
        "traversal": (f"{SW}/../../../../../{tag}", "file", b"x", 0o644, "", "'..' component"),
        "absolute": (f"/etc/{tag}", "file", b"x", 0o644, "", "absolute path"),
        "symlink-escape": (
            base,
            "sym",
            b"",
            0o777,
            f"../../../../../../etc/{tag}",
            "outside the version directory",
        ),
        "symlink-absolute": (base, "sym", b"", 0o777, f"/etc/{tag}", "absolute symlink target"),
        "hardlink-escape": (base, "link", b"", 0o644, f"/etc/{tag}", "not an earlier regular file"),
        "char-device": (base, "chr", b"", 0o644, "", "character device"),
        "block-device": (base, "blk", b"", 0o644, "", "block device"),
        "fifo": (base, "fifo", b"", 0o644, "", "fifo"),
        "setuid": (base, "file", b"x", 0o4755, "", "setuid"),
        "setgid": (base, "file", b"x", 0o2755, "", "setgid"),
        "huge": (base, "file", b"x" * 65, 0o644, "", "exceeds the limit"),
        "bad-utf8": (f"{base}-\udcff", "file", b"x", 0o644, "", "not valid UTF-8"),
        "duplicate": (f"./{SW}/modules/all/GCC/13.2.0.lua", "file", b"y", 0o644, "", "duplicate"),
    }
    return table[kind]


HOSTILE_KINDS = ["traversal", "absolute", "symlink-escape", "symlink-absolute", "hardlink-escape", "char-device",
                 "block-device", "fifo", "setuid", "setgid", "huge", "bad-utf8", "duplicate"]  # fmt: skip


def _write_hostile(path: Path, members: list[tuple[str, str, bytes, int, str]]) -> Path:
    with tarfile.open(
        path, "w:gz", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        for name, kind, data, mode, target in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = _TYPES[kind], mode, 1700000000, target
            if kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            info.size = len(data) if kind == "file" else 0
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return path


@st.composite
def hostile_cases(draw: st.DrawFn) -> tuple[list[tuple[str, str, bytes, int, str]], list[tuple[str, str]]]:
    """A valid software tarball with 1-3 hostile members mixed in; returns members and (name, reason)."""
    members = [(n, k, d, m, "") for n, k, d, m in _BASE]
    n_good = draw(st.integers(0, 4))
    for j in range(n_good):
        members.append((f"{SW}/bin/tool{j}", "file", draw(st.binary(max_size=32)), 0o755, ""))
    kinds = draw(st.lists(st.sampled_from(HOSTILE_KINDS), min_size=1, max_size=3, unique=True))
    expected = []
    for i, kind in enumerate(kinds):
        name, typ, data, mode, target, reason = _hostile(kind, f"h{i}")
        at = len(members) if kind == "duplicate" else draw(st.integers(len(_BASE), len(members)))
        members.insert(at, (name, typ, data, mode, target))
        expected.append((name, reason))
    return members, expected


@contextlib.contextmanager
def _state_env(state: Path) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in ("EESSI_PIPELINE_STATE_DIR", "EESSI_PIPELINE_REPOSITORY")}
    os.environ["EESSI_PIPELINE_STATE_DIR"] = str(state)
    os.environ.pop("EESSI_PIPELINE_REPOSITORY", None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(argv), out=io.StringIO())
    return code, err.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_cases())
def test_hostile_tarball_through_repo_ingest_refused_naming_member_repository_unchanged(
    tmp_path: Path, case: tuple[list[tuple[str, str, bytes, int, str]], list[tuple[str, str]]]
) -> None:
    members, expected = case
    state = tmp_path / "state"
    repo = Repository(state, NAME)
    if not repo.exists:
        repo.init()
    manifest, objects = repo.paths.manifest.read_bytes(), _objects(repo)
    tarball = _write_hostile(tmp_path / HOSTILE_NAME, members)
    with _state_env(state):
        code, err = _cli("repo", "ingest", "--tarball", str(tarball), "--max-member-size", "64")
    assert code == 1, err
    for name, reason in expected:
        shown = printable(name)
        assert any(shown in line and reason in line for line in err.splitlines()), (name, reason, err)
    assert repo.paths.manifest.read_bytes() == manifest
    assert _objects(repo) == objects


# -- tampering on a Stratum 1 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    """A Stratum 1 replica directory (web root …/srv/cvmfs/<name>) of a small repository, its master
    key, and the files it holds."""
    root = tmp_path_factory.mktemp("replica")
    repo = Repository(root / "state", NAME)
    repo.init()
    files = _package(1)
    repo.ingest(software_tarball(root, VERSION, SUBDIR, files))
    dest = root / "s1" / "cvmfs" / NAME
    with serve_directory(repo.paths.state_dir / "srv") as url:
        snapshot(f"{url}/cvmfs/{NAME}", dest, repo.paths.keys.master_public.read_bytes())
    return dest, repo.paths.keys.master_public, {f"{PREFIX}/{k}": v for k, v in files.items()}


def _flip_hex_in_line(path: Path, key: bytes) -> None:
    """Change one hex digit in the first line that starts with ``key`` (before the signature)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\n" + key) + 1 + len(key) if not raw.startswith(key) else len(key)
    raw[at + 2] = ord("0") if raw[at + 2] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))


def _tamper(replica_dir: Path, what: str, target_file: str) -> None:
    with open_repository(replica_dir) as reader:
        entry = reader.lookup(target_file)
        root_catalog = reader.manifest.root_catalog
    assert entry is not None and entry.hash
    if what == "data object":
        path = replica_dir / object_path(entry.hash)
    elif what == "catalog":
        path = replica_dir / object_path(root_catalog, "C")
    else:
        path = replica_dir / (".cvmfspublished" if what.startswith("manifest") else ".cvmfswhitelist")
        _flip_hex_in_line(path, b"C" if what.startswith("manifest") else b"E")
        if what.endswith("re-hashed"):  # an attacker who also fixes the hash line: only the signature is left
            raw = path.read_bytes()
            body, rest = raw.split(b"\n--\n", 1)
            digest = hashlib.sha1(body + b"\n").hexdigest().encode()
            path.write_bytes(body + b"\n--\n" + digest + rest[40:])
        return
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _read_all(config: ClientConfig, files: dict[str, bytes]) -> None:
    reader, _ = open_client(config)
    with reader:
        for path, data in sorted(files.items()):
            assert reader.read_file(path) == data


TAMPER = [
    # (what is flipped, what verify_repository says, what the client says)
    ("data object", "content hash is", "content does not match its hash"),
    ("catalog", "content hash is", "content does not match its hash"),
    ("manifest", "does not match the signed lines", "does not match the signed lines"),
    ("whitelist", "does not match the signed lines", "does not match the signed lines"),
    ("manifest re-hashed", "signature", "signature"),
    ("whitelist re-hashed", "signature", "signature"),
]


@pytest.mark.parametrize(("what", "verify_says", "client_says"), TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_stratum1_detected_by_verify_and_client(
    replica: tuple[Path, Path, dict[str, bytes]],
    tmp_path: Path,
    what: str,
    verify_says: str,
    client_says: str,
) -> None:
    src, master, files = replica
    web = tmp_path / "srv" / "cvmfs"
    bad = web / NAME
    shutil.copytree(src, bad)
    target = sorted(files)[0]
    _tamper(bad, what, target)
    with pytest.raises(RepositoryError, match=verify_says):
        verify_repository(bad, master.read_bytes())
    with serve_directory(tmp_path / "srv") as url:
        config = ClientConfig(NAME, (f"{url}/cvmfs",), tmp_path / "cache", master, timeout=5.0)
        with pytest.raises(RepositoryError, match=client_says) as excinfo:
            _read_all(config, files)
    assert "tampered or corrupt" in str(excinfo.value) or what.startswith(("manifest", "whitelist"))


# -- servers down: fail-over, then the cache, then a clear error --------------------------------------------


def test_stratum1_down_client_fails_over_then_serves_cache_then_fails_clearly(
    replica: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    """Decision: an open client keeps the manifest it verified and serves every object in its cache
    while all servers are down (as the cvmfs client keeps serving its cached revision); a new
    ``open_client`` must fetch a fresh manifest and fails, naming each server; uncached data fails."""
    src, master, files = replica
    paths = sorted(files)
    with contextlib.ExitStack() as mirror_a, contextlib.ExitStack() as mirror_b:
        url_a = mirror_a.enter_context(serve_directory(src.parent.parent))
        url_b = mirror_b.enter_context(serve_directory(src.parent.parent))
        config = ClientConfig(
            NAME, (f"{url_a}/cvmfs", f"{url_b}/cvmfs"), tmp_path / "cache", master, timeout=5.0
        )
        reader, source = open_client(config)
        with reader:
            assert reader.read_file(paths[0]) == files[paths[0]]
            assert source.preferred == 0
            mirror_a.close()  # Stratum 1 A goes down: fail over to B
            assert reader.read_file(paths[1]) == files[paths[1]]
            assert source.preferred == 1  # the live mirror is tried first from now on
            mirror_b.close()  # all down: the cache still serves what was read
            downloads = source.downloads
            assert reader.read_file(paths[0]) == files[paths[0]]
            assert reader.read_file(paths[1]) == files[paths[1]]
            assert source.downloads == downloads and source.hits >= 2
            with pytest.raises(RepositoryError, match="no Stratum 1 could serve it") as excinfo:
                reader.read_file(paths[2])  # never read: not in the cache
            assert url_a in str(excinfo.value) and url_b in str(excinfo.value)
        with pytest.raises(RepositoryError, match=r"\.cvmfspublished: no Stratum 1 could serve it"):
            open_client(config)


# -- through the real squid -----------------------------------------------------------------------------------

needs_servers = pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None
    or shutil.which("squid", path="/usr/sbin:/usr/bin") is None,
    reason="nginx and squid are not installed (Debian packages nginx, squid: run `bash setup.sh`)",
)


@contextlib.contextmanager
def _network(root: Path, files: dict[str, bytes]) -> Iterator[tuple[str, str, Path, object]]:
    """Embedded Stratum 0 + 1 (nginx) and squid on free ports, as tests/infra/conftest.py brings them up;
    yields (Stratum 1 base URL, proxy URL, master key, stack)."""
    from eessi_pipeline.services import stratum1
    from eessi_pipeline.services.plans import Ports
    from eessi_pipeline.services.stack import Stack

    state = root / "state"
    repo = Repository(state, NAME)
    repo.init()
    repo.ingest(software_tarball(root, VERSION, SUBDIR, files))
    os.chmod(state, 0o755)
    s0, s1, px = free_ports(3)
    stack = Stack(state, Ports(s0, s1, px))
    stack.up()
    try:
        snapshot(f"http://127.0.0.1:{s0}/cvmfs/{NAME}", stratum1.Stratum1Paths(state).replica(NAME),
                 repo.paths.keys.master_public.read_bytes())  # fmt: skip
        yield f"http://127.0.0.1:{s1}/cvmfs", f"http://127.0.0.1:{px}", repo.paths.keys.master_public, stack
    finally:
        stack.down()


def _load_files(n: int = 40) -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        f"software/load/1.0/f{i:03d}": rng.randbytes(rng.choice([1, 100, 4096, 65536, 200_000]))
        for i in range(n)
    }


@needs_servers
@pytest.mark.slow
def test_load_concurrent_reads_through_squid_no_errors_every_byte_verified(tmp_path: Path) -> None:
    threads, per_thread, cap_s = 8, 200, 20.0
    files = {f"{PREFIX}/{k}": v for k, v in _load_files().items()}
    with _network(tmp_path, _load_files()) as (s1, proxy, master, _stack):
        deadline = time.monotonic() + cap_s
        done = [0] * threads
        errors: list[str] = []

        def worker(t: int) -> None:
            rng = random.Random(t)
            paths = sorted(files)
            try:
                with RepositoryReader(HttpSource(f"{s1}/{NAME}", proxy=proxy), master.read_bytes()) as reader:
                    for _ in range(per_thread):
                        if time.monotonic() > deadline:
                            return
                        path = rng.choice(paths)
                        if reader.read_file(path) != files[path]:  # content-addressed: hash checked too
                            errors.append(f"{path}: wrong bytes")
                            return
                        done[t] += 1
            except Exception as e:
                errors.append(f"thread {t}: {type(e).__name__}: {e}")

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(cap_s + 30)
        assert errors == []
        assert sum(done) >= threads * 25, done  # bounded by time, but a real load went through
        access_log = _stack.proxy_access_log  # type: ignore[attr-defined]
    assert len(access_log.read_text().splitlines()) >= len(files)


@needs_servers
@pytest.mark.slow
def test_proxy_down_client_serves_cache_then_fails_naming_the_proxy(tmp_path: Path) -> None:
    files = {f"{PREFIX}/{k}": v for k, v in _package(3).items()}
    paths = sorted(files)
    with _network(tmp_path, _package(3)) as (s1, proxy, master, stack):
        config = ClientConfig(NAME, (s1,), tmp_path / "cache", master, proxy=proxy, timeout=5.0)
        reader, source = open_client(config)
        assert reader.read_file(paths[0]) == files[paths[0]]
        assert source.downloads > 0
        stack.down()  # type: ignore[attr-defined]  # squid and both nginx gone
        with reader:
            assert reader.read_file(paths[0]) == files[paths[0]]  # from the client's cache
            with pytest.raises(RepositoryError, match=f"no Stratum 1 could serve it via proxy {proxy}"):
                reader.read_file(paths[1])
        with pytest.raises(RepositoryError, match=f"via proxy {proxy}"):
            open_client(config)
