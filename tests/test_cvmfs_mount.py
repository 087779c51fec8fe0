"""The FUSE mount: a real libfuse mount of a repository read through a Stratum 1 URL."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cvmfs_helpers import reference_dir, serve_directory, software_tarball

from eessi_pipeline.cvmfs.client import ClientConfig
from eessi_pipeline.cvmfs.mount import is_mounted, mount, umount
from eessi_pipeline.cvmfs.repository import Repository

pytestmark = pytest.mark.skipif(
    not Path("/dev/fuse").exists() or os.geteuid() != 0, reason="needs /dev/fuse and root to mount FUSE"
)
NAME = "software.eessi.local"
PREFIX = "versions/2023.06/software/linux/x86_64/generic"


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Repository, Path]]:
    repo = Repository(tmp_path / "state", NAME)
    repo.init()
    t = software_tarball(
        tmp_path, "2023.06", "x86_64/generic", {"bin/hello": b"#!/bin/sh\necho hello from cvmfs\n"}
    )
    import tarfile

    with tarfile.open(t) as tf:  # make bin/hello executable in a rebuilt tarball
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(t, "w:gz") as tf:
        import io

        for m, data in members:
            if m.name.endswith("bin/hello"):
                m.mode = 0o755
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    repo.ingest(t)
    mountpoint = tmp_path / "cvmfs" / NAME
    with serve_directory(repo.paths.state_dir / "srv") as url:
        config = ClientConfig(NAME, (f"{url}/cvmfs",), tmp_path / "cache", repo.paths.keys.master_public)
        mount(config, mountpoint, repo.paths.state_dir, refresh=0.5)
        try:
            yield repo, mountpoint
        finally:
            if is_mounted(mountpoint):
                umount(mountpoint, repo.paths.state_dir)


def test_mount_lists_reads_and_runs_programs(mounted: tuple[Repository, Path]) -> None:
    _repo, mp = mounted
    assert sorted(os.listdir(mp)) == [".cvmfsdirtab", "new_repository", "versions"]
    hello = mp / PREFIX / "bin" / "hello"
    assert stat.S_IMODE(hello.stat().st_mode) == 0o755
    assert (
        subprocess.run([str(hello)], capture_output=True, text=True, check=True).stdout
        == "hello from cvmfs\n"
    )
    assert os.getxattr(mp, "user.revision") == b"2"


def test_mount_is_read_only(mounted: tuple[Repository, Path]) -> None:
    _repo, mp = mounted
    with pytest.raises(OSError, match=r"Read-only file system|Function not implemented|Permission denied"):
        (mp / "new_file").write_text("x")
    with pytest.raises(OSError, match=r"Read-only file system|Permission denied"):
        (mp / "new_repository").write_text("x")


def test_mount_shows_a_new_revision_after_publish(mounted: tuple[Repository, Path], tmp_path: Path) -> None:
    repo, mp = mounted
    (tmp_path / "next").mkdir()
    repo.ingest(software_tarball(tmp_path / "next", "2023.06", "x86_64/generic", {"bin/second": b"2\n"}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.getxattr(mp, "user.revision") != b"3":
        time.sleep(0.2)
    assert os.getxattr(mp, "user.revision") == b"3"
    assert (mp / PREFIX / "bin" / "second").read_bytes() == b"2\n"


def test_mount_real_cvmfs_server_repository_matches_expected_tree(tmp_path: Path) -> None:
    ref = reference_dir()
    expected = json.loads((ref / "expected-tree.json").read_text())
    mp = tmp_path / "cvmfs" / "reference.eessi.local"
    with serve_directory(ref / "srv") as url:
        config = ClientConfig("reference.eessi.local", (f"{url}/cvmfs",), tmp_path / "cache",
                              ref / "keys" / "reference.eessi.local.pub")  # fmt: skip
        mount(config, mp, tmp_path / "state")
        try:
            for e in expected["entries"]:
                p = mp / e["path"].lstrip("/")
                st = p.lstat()
                assert oct(stat.S_IMODE(st.st_mode)) == e["mode"], e["path"]
                assert int(st.st_mtime) == e["mtime"], e["path"]
                if e["type"] == "file":
                    assert hashlib.sha1(p.read_bytes()).hexdigest() == e["sha1"], e["path"]
                    assert st.st_nlink == e["nlink"]
                elif e["type"] == "symlink":
                    assert os.readlink(p) == e["target"]
                else:
                    assert stat.S_ISDIR(st.st_mode)
        finally:
            umount(mp, tmp_path / "state")
    assert not is_mounted(mp)


def test_run_mounted_shows_the_repository_privately_through_the_launcher(tmp_path: Path) -> None:
    from eessi_pipeline.cvmfs.nsrun import run_mounted

    repo = Repository(tmp_path / "state", NAME)
    repo.init()
    repo.ingest(
        software_tarball(tmp_path, "2023.06", "x86_64/generic", {"share/greeting": b"hi from cvmfs\n"})
    )
    host_view = sorted(os.listdir("/cvmfs")) if os.path.isdir("/cvmfs") else []
    with serve_directory(repo.paths.state_dir / "srv") as url:
        config = ClientConfig(NAME, (f"{url}/cvmfs",), tmp_path / "cache", repo.paths.keys.master_public)
        done = run_mounted(
            config, repo.paths.state_dir, ["sh", "-c", f"cat /cvmfs/{NAME}/{PREFIX}/share/greeting; exit 5"],
            capture=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert done.stdout == "hi from cvmfs\n"
    assert sorted(os.listdir("/cvmfs")) == host_view  # the mount and its tmpfs stayed in the namespace
