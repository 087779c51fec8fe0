"""pytest-testinfra checks of the filesystem layer: services, replication, proxy, client.

They run against the embedded network (see conftest.py) or, in monitoring mode, against
the servers named by --infra-config (with --hosts=ssh://… for the host checks).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import urllib.request
import warnings

import pytest

from conftest import Network
from eessi_pipeline.cvmfs.manifest import parse_manifest
from eessi_pipeline.cvmfs.whitelist import parse_whitelist
from eessi_pipeline.monitor import Level, replication_lag, whitelist_expiry

pytestmark = pytest.mark.infra


def _get(url: str, proxy: str | None = None) -> bytes:
    handler = urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    with urllib.request.build_opener(handler).open(url, timeout=10) as r:
        data: bytes = r.read()
        return data


def test_services_are_listening(host, network: Network) -> None:  # type: ignore[no-untyped-def]
    if not network.embedded:
        pytest.skip("host checks of the embedded services only (monitoring mode checks URLs)")
    for name, port in network.ports.items():
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, name
    assert host.process.filter(comm="nginx"), "no nginx process"
    assert host.process.filter(comm="squid"), "no squid process"


def test_services_listen_on_loopback_only(host, network: Network) -> None:  # type: ignore[no-untyped-def]
    if not network.embedded:
        pytest.skip("embedded services only")
    ours = {str(p) for p in network.ports.values()}
    exposed = [s for s in host.socket.get_listening_sockets() if s.rsplit(":", 1)[-1] in ours
               and not s.startswith(("tcp://127.", "udp://127.", "tcp://::1", "unix://"))]  # fmt: skip
    assert exposed == []


def test_stratum1_at_stratum0_revision(network: Network) -> None:
    m0, _ = parse_manifest(_get(f"{network.stratum0}/.cvmfspublished"))
    for url in network.stratum1:
        m1, _ = parse_manifest(_get(f"{url}/.cvmfspublished"))
        assert m1.root_catalog == m0.root_catalog or m1.revision != m0.revision
        finding = replication_lag(m0.revision, m1.revision,
                                  dt.datetime.fromtimestamp(m0.timestamp or 0, dt.UTC), dt.datetime.now(dt.UTC))  # fmt: skip
        assert finding.level is not Level.FAILURE, finding.message
        if finding.level is Level.WARNING:
            warnings.warn(finding.message, stacklevel=1)
        if network.embedded:
            assert finding.level is Level.OK and m1.revision == m0.revision


def test_whitelist_valid_on_every_server(network: Network) -> None:
    now = dt.datetime.now(dt.UTC)
    for url in (network.stratum0, *network.stratum1):
        wl, _ = parse_whitelist(_get(f"{url}/.cvmfswhitelist"))
        finding = whitelist_expiry(wl.expires, now)
        assert finding.level is not Level.FAILURE, f"{url}: {finding.message}"
        if finding.level is Level.WARNING:
            warnings.warn(f"{url}: {finding.message}", stacklevel=1)


def test_repositories_json_valid(network: Network) -> None:
    for role, url in (("stratum0", network.stratum0), ("stratum1", network.stratum1[0])):
        base = url.rsplit("/", 1)[0]  # …/cvmfs
        doc = json.loads(_get(f"{base}/info/v1/repositories.json"))
        assert isinstance(doc["schema"], int) and doc["schema"] >= 1
        for key in ("cvmfs_version", "os_id", "os_version_id", "os_pretty_name"):
            assert isinstance(doc[key], str), key
        listed = {r["name"] for r in doc["repositories" if role == "stratum0" else "replicas"]}
        other = doc["replicas" if role == "stratum0" else "repositories"]
        assert network.repository in listed and other == [], role


def test_squid_second_read_is_a_cache_hit(network: Network) -> None:
    if network.proxy is None or network.access_log is None:
        pytest.skip("no proxy access log configured")
    from eessi_pipeline.services.squid import parse_access_log

    m, _ = parse_manifest(_get(f"{network.stratum1[0]}/.cvmfspublished", network.proxy))
    url = f"{network.stratum1[0]}/data/{m.root_catalog[:2]}/{m.root_catalog[2:]}C"
    first = _get(url, network.proxy)
    second = _get(url, network.proxy)
    assert first == second
    deadline = time.monotonic() + 10
    entries = []
    while time.monotonic() < deadline:
        if network.access_log.exists():
            entries = [
                e for e in parse_access_log(network.access_log.read_text().splitlines()) if e.url == url
            ]
            if len(entries) >= 2:
                break
        time.sleep(0.2)
    assert len(entries) >= 2, f"{url} not in {network.access_log}"
    assert entries[-1].is_hit, [e.result for e in entries]


def test_client_mount_serves_newest_revision_and_runs_software(host, network: Network) -> None:  # type: ignore[no-untyped-def]
    if network.mountpoint is None:
        pytest.skip("no client mount (needs /dev/fuse and root, or `mountpoint` in --infra-config)")
    m1, _ = parse_manifest(_get(f"{network.stratum1[0]}/.cvmfspublished"))
    deadline = time.monotonic() + 15
    while (
        time.monotonic() < deadline
        and os.getxattr(network.mountpoint, "user.revision") != str(m1.revision).encode()
    ):
        time.sleep(0.2)
    assert os.getxattr(network.mountpoint, "user.revision") == str(m1.revision).encode()
    assert host.file(str(network.mountpoint)).is_directory
    if network.program:
        program = network.mountpoint / network.program
        done = subprocess.run([str(program)], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_scraper_reports_no_fetch_errors(network: Network) -> None:
    scraper = pytest.importorskip("cvmfsscraper")
    servers = scraper.scrape(
        stratum0_servers=[network.server_names["stratum0"]], stratum1_servers=[network.server_names["stratum1"]],
        repos=[network.repository], ignore_repos=[],
    )  # fmt: skip
    assert len(servers) == 2
    for server in servers:
        errors = list(server.fetch_errors) + [e for r in server.repositories for e in r.fetch_errors]
        assert errors == [], f"{server.name}: {errors}"
