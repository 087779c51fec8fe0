"""The real cvmfs_server's repository through our own network: nginx Stratum 0 → snapshot → nginx
Stratum 1 → squid → client (and the FUSE mount), byte for byte as expected-tree.json says."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from cvmfs_helpers import reference_dir

from eessi_pipeline.cvmfs.client import ClientConfig, open_client
from eessi_pipeline.cvmfs.mount import is_mounted, mount, umount
from eessi_pipeline.cvmfs.reader import verify_repository
from eessi_pipeline.cvmfs.replica import snapshot
from eessi_pipeline.services import stratum1
from eessi_pipeline.services.plans import Ports
from eessi_pipeline.services.stack import Stack

REF_NAME = "reference.eessi.local"


def _ports() -> list[int]:
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_reference_repository_through_nginx_squid_and_client(tmp_path: Path) -> None:
    ref = reference_dir()
    if not Path("/usr/sbin/nginx").exists() or not Path("/usr/sbin/squid").exists():
        pytest.skip("nginx and squid are not installed (bash setup.sh)")
    state = tmp_path / "state"
    shutil.copytree(ref / "srv" / "cvmfs", state / "srv" / "cvmfs")  # served as the Stratum 0
    for p in [state, *state.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if p.is_dir() else 0))
    os.chmod(tmp_path, 0o755)
    key = (ref / "keys" / f"{REF_NAME}.pub").read_bytes()
    s0, s1, px = _ports()
    stack = Stack(state, Ports(s0, s1, px))
    stack.up()
    mountpoint = tmp_path / "cvmfs" / REF_NAME
    try:
        result = snapshot(
            f"http://127.0.0.1:{s0}/cvmfs/{REF_NAME}", stratum1.Stratum1Paths(state).replica(REF_NAME), key
        )
        assert result.revision == 4
        stratum1.write_info(state)
        assert verify_repository(f"http://127.0.0.1:{s1}/cvmfs/{REF_NAME}", key).revision == 4
        expected = json.loads((ref / "expected-tree.json").read_text())
        config = ClientConfig(REF_NAME, (f"http://127.0.0.1:{s1}/cvmfs",), tmp_path / "cache",
                              ref / "keys" / f"{REF_NAME}.pub", proxy=f"http://127.0.0.1:{px}")  # fmt: skip
        reader, source = open_client(config)
        with reader:
            assert reader.tree_json() == expected
            for e in expected["entries"]:
                if e["type"] == "file":
                    assert hashlib.sha1(reader.read_file(e["path"])).hexdigest() == e["sha1"]
        assert source.downloads > 0
        if Path("/dev/fuse").exists() and os.geteuid() == 0:
            mount(config, mountpoint, state)
            data = (
                mountpoint
                / "versions/2023.06/software/linux/x86_64/generic/software/zlib/1.2.13/include/zlib.h"
            ).read_bytes()
            assert hashlib.sha1(data).hexdigest() == "6237fbc56246fb36fb8c983580a6d9b3f5870059"
    finally:
        if is_mounted(mountpoint):
            umount(mountpoint, state)
        stack.down()
