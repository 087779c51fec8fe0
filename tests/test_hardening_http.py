"""Issue 16, hostile servers: every HTTP read is bounded in time and size, and fails over.

A real repository served by a real (hostile) HTTP server on 127.0.0.1; bounded in count and time:
each fault test has a 2 s deadline and must end well before 20 s.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cvmfs_helpers import software_tarball
from hostile_server import MODES, hostile_server_fixture, serve_hostile  # noqa: F401 (a fixture)

from eessi_pipeline import cli
from eessi_pipeline.cvmfs.client import ClientConfig, open_client
from eessi_pipeline.cvmfs.http import HttpFetchError, HttpLimits, http_get
from eessi_pipeline.cvmfs.reader import verify_repository
from eessi_pipeline.cvmfs.replica import snapshot
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import RepositoryError, UsageError

NAME = "software.eessi.local"
TOOL = "/versions/2023.06/software/linux/x86_64/generic/bin/tool"
CONTENT = b"#!/bin/sh\necho tool\n" + bytes(range(256)) * 64
LIMITS = HttpLimits(read_timeout=1.0, request_deadline=2.0, operation_deadline=5.0, max_bytes=4 << 20)
BOUND_S = 20.0  # a 2 s deadline must stop every fault long before this

# What each fault is refused for, as the message says it.
EXPECTED = {
    "slow": "deadline of 2 s",
    "endless": "limit of",
    "truncated": "truncated",
    "wrong-length": "announces",
    "wrong-content": "hash",
    "redirect-loop": "redirect loop",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    tmp = tmp_path_factory.mktemp("hostile")
    r = Repository(tmp / "state", NAME)
    r.init()
    r.ingest(software_tarball(tmp, "2023.06", "x86_64/generic", {"bin/tool": CONTENT}))
    return r


def _srv(repo: Repository) -> Path:
    return repo.paths.state_dir / "srv"


@pytest.mark.parametrize("mode", [m for m in MODES if m != "wrong-content"])
def test_http_get_stops_each_fault_at_its_limit(repo: Repository, mode: str) -> None:
    with serve_hostile(mode, _srv(repo), only="/") as url:
        start = time.monotonic()
        with pytest.raises(HttpFetchError) as caught:
            http_get(f"{url}/cvmfs/{NAME}/.cvmfspublished", LIMITS)
        elapsed = time.monotonic() - start
    assert elapsed < BOUND_S
    message = str(caught.value)
    assert url in message and EXPECTED[mode] in message, message


def test_an_endless_body_is_cut_at_the_object_size_the_catalog_gives(repo: Repository) -> None:
    with serve_hostile("endless", _srv(repo), only="/") as url, pytest.raises(HttpFetchError, match="5000 b"):
        http_get(f"{url}/cvmfs/{NAME}/.cvmfspublished", LIMITS, max_bytes=5000)


def test_limits_come_from_the_environment_and_bad_values_are_refused() -> None:
    env = {"EESSI_PIPELINE_HTTP_DEADLINE": "7", "EESSI_PIPELINE_HTTP_MAX_BYTES": "1000"}
    limits = HttpLimits.from_env(env)
    assert (limits.request_deadline, limits.max_bytes, limits.read_timeout) == (7.0, 1000, 10.0)
    assert HttpLimits.from_env(env, request_deadline=3.0).request_deadline == 3.0
    with pytest.raises(UsageError, match="EESSI_PIPELINE_HTTP_DEADLINE"):
        HttpLimits.from_env({"EESSI_PIPELINE_HTTP_DEADLINE": "soon"})
    with pytest.raises(UsageError, match="positive"):
        HttpLimits.from_env({"EESSI_PIPELINE_HTTP_MAX_BYTES": "-1"})


@pytest.mark.parametrize("mode", MODES)
def test_client_fails_over_from_a_hostile_stratum1(
    repo: Repository, tmp_path: Path, hostile_server: Callable[..., str], mode: str
) -> None:
    bad = hostile_server(mode, _srv(repo))
    good = hostile_server("ok", _srv(repo))
    config = ClientConfig(NAME, (f"{bad}/cvmfs", f"{good}/cvmfs"), tmp_path / "cache",
                          repo.paths.keys.master_public, limits=LIMITS)  # fmt: skip
    start = time.monotonic()
    reader, source = open_client(config)
    with reader:
        assert reader.read_file(TOOL) == CONTENT
    assert time.monotonic() - start < BOUND_S
    assert source.preferred == 1


def _read_tool(config: ClientConfig) -> bytes:
    reader, _source = open_client(config)
    with reader:
        return reader.read_file(TOOL)


@pytest.mark.parametrize("mode", ["slow", "endless", "wrong-length"])
def test_client_with_only_hostile_servers_names_them_and_the_limit(
    repo: Repository, tmp_path: Path, hostile_server: Callable[..., str], mode: str
) -> None:
    urls = tuple(f"{hostile_server(mode, _srv(repo))}/cvmfs" for _ in range(2))
    config = ClientConfig(NAME, urls, tmp_path / "cache", repo.paths.keys.master_public, limits=LIMITS)
    start = time.monotonic()
    with pytest.raises(RepositoryError) as caught:  # the certificate or the file: whichever comes first
        _read_tool(config)
    assert time.monotonic() - start < 2 * BOUND_S
    message = str(caught.value)
    assert all(u.removesuffix("/cvmfs") in message for u in urls), message
    assert "deadline" in message or "limit" in message or "announces" in message, message


@pytest.mark.parametrize("mode", ["slow", "endless", "truncated", "redirect-loop"])
def test_snapshot_from_a_hostile_stratum0_fails_within_its_limits(
    repo: Repository, tmp_path: Path, hostile_server: Callable[..., str], mode: str
) -> None:
    url = hostile_server(mode, _srv(repo))
    dest = tmp_path / "replica"
    start = time.monotonic()
    with pytest.raises(RepositoryError, match=r"snapshot of .* failed") as caught:
        snapshot(
            f"{url}/cvmfs/{NAME}", dest, repo.paths.keys.master_public.read_bytes(), workers=2, limits=LIMITS
        )
    assert time.monotonic() - start < 2 * BOUND_S
    assert EXPECTED[mode] in str(caught.value) and url in str(caught.value)
    assert not (dest / ".cvmfspublished").exists()


def test_a_snapshot_past_its_deadline_stops_and_the_replica_keeps_its_revision(
    tmp_path: Path, hostile_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request of a slow source is within its own limits (5 s); the whole snapshot is not (1 s)."""
    r = Repository(tmp_path / "state", NAME)
    r.init()
    r.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": CONTENT}))
    key = r.paths.keys.master_public.read_bytes()
    dest = tmp_path / "replica"
    before = snapshot(f"{hostile_server('ok', _srv(r))}/cvmfs/{NAME}", dest, key, limits=LIMITS)
    published = (dest / ".cvmfspublished").read_bytes()
    (tmp_path / "next").mkdir()
    r.ingest(
        software_tarball(tmp_path / "next", "2023.06", "x86_64/generic", {"bin/new": CONTENT * 2}, 1700000001)
    )
    slow = hostile_server("slow", _srv(r))
    patient = HttpLimits(read_timeout=5.0, request_deadline=5.0, operation_deadline=10.0)
    monkeypatch.setenv("EESSI_PIPELINE_SNAPSHOT_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(RepositoryError, match=r"snapshot of .* failed") as caught:
        snapshot(f"{slow}/cvmfs/{NAME}", dest, key, workers=2, limits=patient)
    assert time.monotonic() - start < BOUND_S
    message = str(caught.value)
    assert "deadline of 1 s ($EESSI_PIPELINE_SNAPSHOT_TIMEOUT)" in message, message
    assert f"still serves revision {before.revision}" in message, message
    assert (dest / ".cvmfspublished").read_bytes() == published
    assert verify_repository(str(dest), key).revision == before.revision


def test_a_bad_snapshot_deadline_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EESSI_PIPELINE_SNAPSHOT_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="EESSI_PIPELINE_SNAPSHOT_TIMEOUT"):
        snapshot("http://127.0.0.1:9/cvmfs/x", tmp_path, b"")


@pytest.mark.parametrize("mode", ["slow", "wrong-length", "wrong-content"])
def test_verify_url_of_a_hostile_server_fails_within_its_limits(
    repo: Repository, hostile_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("EESSI_PIPELINE_HTTP_DEADLINE", "2")
    monkeypatch.setenv("EESSI_PIPELINE_HTTP_READ_TIMEOUT", "1")
    url = hostile_server(mode, _srv(repo))
    start = time.monotonic()
    with pytest.raises(RepositoryError) as caught:
        verify_repository(f"{url}/cvmfs/{NAME}", repo.paths.keys.master_public.read_bytes())
    assert time.monotonic() - start < BOUND_S
    assert EXPECTED[mode] in str(caught.value), str(caught.value)


HTTP_ENV = ("EESSI_PIPELINE_HTTP_READ_TIMEOUT", "EESSI_PIPELINE_HTTP_DEADLINE",
            "EESSI_PIPELINE_HTTP_OPERATION_DEADLINE", "EESSI_PIPELINE_HTTP_MAX_BYTES")  # fmt: skip


@pytest.mark.parametrize("command", ["verify", "cat"])
def test_the_command_line_flags_bound_verify_and_client_cat(
    repo: Repository, tmp_path: Path, hostile_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:  # fmt: skip
    for var in HTTP_ENV:  # the flags export these; restored after the test
        monkeypatch.setenv(var, "")
    url = hostile_server("slow", _srv(repo))
    key = str(repo.paths.keys.master_public)
    flags = ["--http-deadline", "2", "--http-read-timeout", "1"]
    if command == "verify":
        argv = ["repo", "verify", f"{url}/cvmfs/{NAME}", "--master-key", key, *flags]
    else:
        argv = ["client", "cat", TOOL, "--repo", NAME, "--stratum1", f"{url}/cvmfs", "--no-proxy",
                "--master-key", key, "--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path), *flags]  # fmt: skip
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv, out=io.StringIO())
    assert time.monotonic() - start < BOUND_S
    assert code == 1 and "deadline of 2 s" in err.getvalue() and url in err.getvalue(), err.getvalue()


@pytest.mark.skipif(not Path("/dev/fuse").exists() or os.geteuid() != 0, reason="needs /dev/fuse and root")
def test_the_fuse_mount_keeps_to_the_limits(
    repo: Repository, tmp_path: Path, hostile_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount runs in its own process: the limits reach it through the environment."""
    from eessi_pipeline.cvmfs.mount import is_mounted, mount, umount

    monkeypatch.setenv("EESSI_PIPELINE_HTTP_DEADLINE", "2")
    monkeypatch.setenv("EESSI_PIPELINE_HTTP_READ_TIMEOUT", "1")
    slow, good = hostile_server("slow", _srv(repo)), hostile_server("ok", _srv(repo))
    mountpoint = tmp_path / "cvmfs" / NAME
    config = ClientConfig(
        NAME, (f"{slow}/cvmfs", f"{good}/cvmfs"), tmp_path / "cache", repo.paths.keys.master_public
    )
    state = tmp_path / "state"
    state.mkdir()
    mount(config, mountpoint, state)
    try:
        start = time.monotonic()
        assert (mountpoint / TOOL.lstrip("/")).read_bytes() == CONTENT  # after failing over from the slow one
        assert time.monotonic() - start < BOUND_S
    finally:
        if is_mounted(mountpoint):
            umount(mountpoint, state)
