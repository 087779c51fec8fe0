"""The verifying client: fail-over across Stratum 1 mirrors, local cache, tamper detection."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
from cvmfs_helpers import reference_dir, serve_directory, software_tarball

from eessi_pipeline.cvmfs.client import ClientConfig, open_client
from eessi_pipeline.cvmfs.common import object_path
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import RepositoryError

NAME = "software.eessi.local"
TOOL = "/versions/2023.06/software/linux/x86_64/generic/bin/tool"


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/cvmfs"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "state", NAME)
    r.init()
    r.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"#!/bin/sh\necho tool\n"}))
    return r


def _config(repo: Repository, urls: list[str], cache: Path) -> ClientConfig:
    return ClientConfig(NAME, tuple(urls), cache, repo.paths.keys.master_public)


def test_client_fails_over_to_a_working_mirror(repo: Repository, tmp_path: Path) -> None:
    with serve_directory(repo.paths.state_dir / "srv") as url:
        reader, source = open_client(_config(repo, [_dead_url(), f"{url}/cvmfs"], tmp_path / "cache"))
        with reader:
            assert reader.read_file(TOOL) == b"#!/bin/sh\necho tool\n"
        assert source.preferred == 1  # the working mirror is tried first from now on


def test_client_second_read_comes_from_the_cache(repo: Repository, tmp_path: Path) -> None:
    with serve_directory(repo.paths.state_dir / "srv") as url:
        config = _config(repo, [f"{url}/cvmfs"], tmp_path / "cache")
        reader, source = open_client(config)
        with reader:
            reader.read_file(TOOL)
        first = source.downloads
        reader2, source2 = open_client(config)
        with reader2:
            assert reader2.read_file(TOOL) == b"#!/bin/sh\necho tool\n"
    assert source2.hits > 0
    assert source2.downloads < first  # only manifest and whitelist were fetched again


def test_client_corrupt_cached_object_is_fetched_again(repo: Repository, tmp_path: Path) -> None:
    with serve_directory(repo.paths.state_dir / "srv") as url:
        config = _config(repo, [f"{url}/cvmfs"], tmp_path / "cache")
        reader, _ = open_client(config)
        with reader:
            entry = reader.lookup(TOOL)
            reader.read_file(TOOL)
        assert entry is not None and entry.hash
        cached = tmp_path / "cache" / NAME / object_path(entry.hash)
        cached.write_bytes(b"garbage")
        reader, _ = open_client(config)
        with reader:
            assert reader.read_file(TOOL) == b"#!/bin/sh\necho tool\n"
        assert hashlib.sha1(cached.read_bytes()).hexdigest() == entry.hash


def test_client_tampered_mirror_skipped_for_a_good_one(repo: Repository, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(repo.paths.state_dir / "srv", bad)
    with serve_directory(bad) as bad_url, serve_directory(repo.paths.state_dir / "srv") as good_url:
        reader, _ = open_client(_config(repo, [f"{good_url}/cvmfs"], tmp_path / "probe"))
        with reader:
            entry = reader.lookup(TOOL)
        assert entry is not None and entry.hash
        victim = bad / "cvmfs" / NAME / object_path(entry.hash)
        victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
        reader, source = open_client(
            _config(repo, [f"{bad_url}/cvmfs", f"{good_url}/cvmfs"], tmp_path / "cache")
        )
        with reader:
            assert reader.read_file(TOOL) == b"#!/bin/sh\necho tool\n"
        assert source.preferred == 1


def test_client_every_mirror_broken_names_each(repo: Repository, tmp_path: Path) -> None:
    dead1, dead2 = _dead_url(), _dead_url()
    with pytest.raises(RepositoryError) as e:
        open_client(_config(repo, [dead1, dead2], tmp_path / "cache"))
    assert dead1 in str(e.value) and dead2 in str(e.value) and ".cvmfspublished" in str(e.value)


def test_client_wrong_master_key_refused(repo: Repository, tmp_path: Path) -> None:
    other = Repository(tmp_path / "other", "other.eessi.local")
    other.init()
    with serve_directory(repo.paths.state_dir / "srv") as url:
        config = ClientConfig(NAME, (f"{url}/cvmfs",), tmp_path / "cache", other.paths.keys.master_public)
        with pytest.raises(RepositoryError, match="whitelist"):
            open_client(config)


def test_client_reads_the_real_cvmfs_server_repository(tmp_path: Path) -> None:
    ref = reference_dir()
    expected = json.loads((ref / "expected-tree.json").read_text())
    with serve_directory(ref / "srv") as url:
        config = ClientConfig(
            "reference.eessi.local",
            (f"{url}/cvmfs",),
            tmp_path / "cache",
            ref / "keys" / "reference.eessi.local.pub",
        )
        reader, _ = open_client(config)
        with reader:
            for e in expected["entries"]:
                if e["type"] == "file":
                    assert hashlib.sha1(reader.read_file(e["path"])).hexdigest() == e["sha1"], e["path"]
