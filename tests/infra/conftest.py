"""Filesystem-layer checks: the embedded network by default, real servers with --infra-config.

Embedded mode (no option): a session fixture brings up nginx (Stratum 0 and 1) and
squid on free loopback ports in a temporary state directory, publishes a small
repository with a program, snapshots it to the Stratum 1, and mounts it through the
proxy with FUSE.  Monitoring mode: ``pytest tests/infra --infra-config FILE`` with a
YAML file naming the real servers (see README), optionally ``--hosts=ssh://…`` for
testinfra's host checks.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ helpers

from cvmfs_helpers import software_tarball

NAME = "software.eessi.local"
PROGRAM = "versions/2023.06/software/linux/x86_64/generic/bin/hello-infra"


@dataclass(frozen=True)
class Network:
    repository: str
    stratum0: str  # repository URL, e.g. http://127.0.0.1:18080/cvmfs/<repo>
    stratum1: tuple[str, ...]
    proxy: str | None
    master_key: Path
    server_names: dict[str, str] = field(default_factory=dict)  # scraper host:port per role
    ports: dict[str, int] = field(default_factory=dict)  # embedded services only
    access_log: Path | None = None
    mountpoint: Path | None = None
    program: str | None = None  # path inside the mount that must run
    embedded: bool = True


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--infra-config", metavar="FILE", help="YAML naming real Stratum 0/1, proxy, key, mount")
    parser.addoption("--infra-slurm-conf", metavar="FILE", help="check a real Slurm cluster (its slurm.conf)")


def _from_config(path: Path) -> Network:
    data = yaml.safe_load(path.read_text())
    missing = [k for k in ("repository", "stratum0", "stratum1", "master_key") if k not in data]
    if missing:
        raise pytest.UsageError(f"{path}: missing keys {missing}; see README 'Filesystem-layer checks'")

    def host(url: str) -> str:
        return url.split("://", 1)[1].split("/", 1)[0]

    s1 = tuple(data["stratum1"]) if isinstance(data["stratum1"], list) else (data["stratum1"],)
    return Network(
        repository=data["repository"], stratum0=data["stratum0"], stratum1=s1, proxy=data.get("proxy"),
        master_key=Path(data["master_key"]),
        server_names={"stratum0": host(data["stratum0"]), "stratum1": host(s1[0])},
        access_log=Path(data["proxy_access_log"]) if data.get("proxy_access_log") else None,
        mountpoint=Path(data["mountpoint"]) if data.get("mountpoint") else None,
        program=data.get("program"), embedded=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def network(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    config = pytestconfig.getoption("--infra-config")
    if config:
        yield _from_config(Path(config))
        return
    if (
        shutil.which("nginx", path="/usr/sbin:/usr/bin") is None
        or shutil.which("squid", path="/usr/sbin:/usr/bin") is None
    ):
        pytest.skip("nginx and squid are not installed (Debian packages nginx, squid: run `bash setup.sh`)")
    from eessi_pipeline.cvmfs.client import ClientConfig
    from eessi_pipeline.cvmfs.mount import is_mounted, mount, umount
    from eessi_pipeline.cvmfs.replica import snapshot
    from eessi_pipeline.cvmfs.repository import Repository
    from eessi_pipeline.services import stratum1
    from eessi_pipeline.services.plans import Ports
    from eessi_pipeline.services.stack import Stack

    root = tmp_path_factory.mktemp("infra")
    state = root / "state"
    s0, s1, px = free_ports(3)
    stack = Stack(state, Ports(s0, s1, px))
    repo = Repository(state, NAME)
    repo.init()
    repo.ingest(
        software_tarball(
            root, "2023.06", "x86_64/generic", {"bin/hello-infra": b"#!/bin/sh\necho infra ok\n"}
        )
    )
    os.chmod(state, 0o755)  # nginx and squid workers read the state as their own users
    stack.up()
    mountpoint = root / "cvmfs" / NAME
    try:
        s0_url = f"http://127.0.0.1:{s0}/cvmfs/{NAME}"
        snapshot(
            s0_url, stratum1.Stratum1Paths(state).replica(NAME), repo.paths.keys.master_public.read_bytes()
        )
        stratum1.write_info(state)
        s1_base = f"http://127.0.0.1:{s1}/cvmfs"
        mount_ok = Path("/dev/fuse").exists() and os.geteuid() == 0
        if mount_ok:
            client = ClientConfig(NAME, (s1_base,), root / "cache", repo.paths.keys.master_public,
                                  proxy=f"http://127.0.0.1:{px}")  # fmt: skip
            mount(client, mountpoint, state, refresh=1.0)
        access_log = stack.proxy_access_log
        yield Network(
            repository=NAME, stratum0=s0_url, stratum1=(f"{s1_base}/{NAME}",), proxy=f"http://127.0.0.1:{px}",
            master_key=repo.paths.keys.master_public,
            server_names={"stratum0": f"127.0.0.1:{s0}", "stratum1": f"127.0.0.1:{s1}"},
            ports={"stratum0": s0, "stratum1": s1, "proxy": px},
            access_log=access_log,
            mountpoint=mountpoint if mount_ok else None, program=PROGRAM,
        )  # fmt: skip
    finally:
        if is_mounted(mountpoint):
            umount(mountpoint, state)
        stack.down()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Filesystem-layer checks belong to every target's acceptance run (``pytest -m arch_<target>``)."""
    from eessi_pipeline.matrix import load_matrix

    markers = [t.marker for t in load_matrix(config.getoption("--eessi-matrix")).targets]
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            for marker in markers:
                item.add_marker(getattr(pytest.mark, marker))
