"""The whole filesystem layer as a user meets it, through the command line only.

repo init → repo ingest (a program + its module) → init build --publish → stratum up →
stratum snapshot → client mount (through squid and the Stratum 1) → source init/bash →
module load → the program runs from the mount.  The compatibility layer is a stand-in on the client
(``EESSI_COMPAT_LAYER_DIR``, as EESSI's init honours it: bash and Lmod of the host); the real layer
is published and used by ``eessi-pipeline run`` (tests/test_pipeline_e2e.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cvmfs_helpers import software_tarball
from helpers import free_ports

from eessi_pipeline import cli
from eessi_pipeline.software.lmodfiles import lmod_files

NAME = "journey.eessi.local"
SUBDIR = "x86_64/generic"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/fuse").exists() or os.geteuid() != 0, reason="needs /dev/fuse and root")
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists() or not Path("/usr/sbin/squid").exists(),
                    reason="nginx and squid are not installed (bash setup.sh)")  # fmt: skip
def test_user_journey_published_software_runs_from_the_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the journey publishes an x86_64 build")
    state = tmp_path / "state"
    mountpoint = tmp_path / "cvmfs" / NAME
    for var, value in {
        "EESSI_PIPELINE_STATE_DIR": str(state), "EESSI_PIPELINE_REPOSITORY": NAME,
        "EESSI_PIPELINE_STRATUM0_PORT": str(free_ports()[0]), "EESSI_PIPELINE_STRATUM1_PORT": str(free_ports()[0]),
        "EESSI_PIPELINE_PROXY_PORT": str(free_ports()[0]),
    }.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(sys, "stderr", io.StringIO())

    def run(*argv: str) -> str:
        out = io.StringIO()
        code = cli.main(list(argv), out=out)
        assert code == 0, f"{argv}: {sys.stderr.getvalue()[-2000:]}"  # type: ignore[attr-defined]
        return out.getvalue()

    prefix = f"{mountpoint}/versions/2023.06/software/linux/{SUBDIR}"
    lua = f'whatis("hello 1.0")\nprepend_path("PATH", "{prefix}/software/hello/1.0/bin")\n'
    tarball = software_tarball(tmp_path, "2023.06", SUBDIR, {
        "software/hello/1.0/bin/hello": b"#!/bin/sh\necho hello from the stack\n",
        "modules/all/hello/1.0.lua": lua.encode(),
        **{f".lmod/{name}": text.encode() for name, text in lmod_files(prefix).items()},
    })  # fmt: skip
    layer = tmp_path / "compat-stand-in"
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "bash").symlink_to("/bin/bash")
    (layer / "usr" / "share").mkdir(parents=True)
    (layer / "usr" / "share" / "Lmod").symlink_to("/usr/share/lmod/lmod")
    run("repo", "init", NAME)
    run("repo", "ingest", "--tarball", str(tarball))
    run("init", "build", "--publish")
    os.chmod(state, 0o755)  # the web servers' workers read the state
    run("stratum", "up")
    try:
        assert "revision 3" in run("stratum", "snapshot")
        run("client", "mount", str(mountpoint))
        try:
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EESSI_CVMFS_REPO_OVERRIDE": str(mountpoint),
                   "EESSI_SOFTWARE_SUBDIR_OVERRIDE": SUBDIR, "EESSI_COMPAT_LAYER_DIR": str(layer)}  # fmt: skip
            script = (f"source {mountpoint}/versions/2023.06/init/bash >/dev/null && module load hello && hello "
                      "&& echo $EESSI_SOFTWARE_SUBDIR")  # fmt: skip
            done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                                  check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == ["hello from the stack", SUBDIR]
            assert os.getxattr(mountpoint, "user.revision") == b"3"
        finally:
            run("client", "umount", str(mountpoint))
    finally:
        run("stratum", "down")
