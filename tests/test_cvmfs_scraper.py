"""Proof of format (c): served over HTTP, our repository passes EESSI's cvmfs-server-scraper.

The web server here is Python's own ``http.server`` on 127.0.0.1 serving the
state directory's ``srv/`` (so ``/cvmfs/<repo>/…`` maps to ``srv/cvmfs/<repo>/…``);
the nginx Stratum services come with the filesystem-layer issue.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cvmfs_helpers import software_tarball

from eessi_pipeline.cvmfs.repository import Repository

scraper = pytest.importorskip(
    "cvmfsscraper", reason="cvmfs-server-scraper is not installed (pip install -e '.[test]')"
)

NAME = "software.eessi.local"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Repository, str]]:
    repo = Repository(tmp_path / "state", NAME)
    repo.init()
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"#!/bin/sh\n"}))
    handler = functools.partial(_QuietHandler, directory=str(repo.paths.state_dir / "srv"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield repo, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_scraper_stratum0_our_repository_has_no_fetch_errors(served: tuple[Repository, str]) -> None:
    repo, host = served
    servers = scraper.scrape(stratum0_servers=[host], stratum1_servers=[], repos=[NAME], ignore_repos=[])
    assert len(servers) == 1
    server = servers[0]
    assert server.fetch_errors == []
    repos = {r.name: r for r in server.repositories}
    assert NAME in repos
    scraped = repos[NAME]
    assert scraped.fetch_errors == []
    manifest = repo.manifest()
    assert scraped.revision == manifest.revision == 2
    assert scraped.root_cryptographic_hash == manifest.root_catalog


def test_scraper_manifest_without_reflog_key_is_reported(served: tuple[Repository, str]) -> None:
    repo, host = served  # the scraper requires Y (and H, M): prove the check above can fail
    raw = repo.paths.manifest.read_bytes()
    head, _, rest = raw.partition(b"--\n")
    stripped = b"".join(line + b"\n" for line in head.splitlines() if not line.startswith(b"Y"))
    repo.paths.manifest.write_bytes(stripped + b"--\n" + rest)
    servers = scraper.scrape(stratum0_servers=[host], stratum1_servers=[], repos=[NAME], ignore_repos=[])
    errors = list(servers[0].fetch_errors) + [e for r in servers[0].repositories for e in r.fetch_errors]
    assert errors, "the scraper accepted a manifest without Y"
