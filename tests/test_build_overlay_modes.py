"""The build overlay at /cvmfs/<repo> in each of its modes, mounted for real (fast: no EasyBuild).

Kernel overlayfs as root; fuse-overlayfs in a user namespace; kernel overlayfs in a user namespace
(Linux >= 5.11).  As root every mode can be tried (the user namespace maps root to root, so /dev/fuse
opens).  The unprivileged case runs as ``nobody`` through ``setpriv`` with the system Python and takes
whatever mode :func:`host_overlay_mode` chooses for that user.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest

from eessi_pipeline.matrix import PROJECT_ROOT
from eessi_pipeline.proc import CommandFailed
from eessi_pipeline.software.overlay import (
    FUSE_OVERLAYFS,
    KERNEL_USERNS_OVERLAY,
    OverlayMode,
    OverlayView,
    kernel_release,
)

REPO = "/cvmfs/modes.eessi.local"
SCRIPT = f"cat {REPO}/versions/old && echo new > {REPO}/versions/new && rm {REPO}/versions/gone"
NOBODY = 65534

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="trying every mode needs root")


def _host_cvmfs() -> list[str]:
    return sorted(os.listdir("/cvmfs")) if os.path.isdir("/cvmfs") else []


def _mode_available(mode: OverlayMode) -> str | None:
    """Why ``mode`` cannot be tried here (None: it can)."""
    if mode is OverlayMode.FUSE_USERNS and shutil.which(FUSE_OVERLAYFS) is None:
        return "fuse-overlayfs is not installed (Debian: apt-get install fuse-overlayfs)"
    if mode.user_namespace and kernel_release(os.uname().release) < KERNEL_USERNS_OVERLAY:
        return "kernel older than 5.11"
    return None


def _view(tmp_path: Path, mode: OverlayMode) -> OverlayView:
    lower = tmp_path / "lower"
    (lower / "versions").mkdir(parents=True)
    (lower / "versions" / "old").write_text("old\n")
    (lower / "versions" / "gone").write_text("x\n")
    return OverlayView(REPO, tmp_path, lower, mode, fuse_overlayfs=shutil.which(FUSE_OVERLAYFS) or "")


@root_only
@pytest.mark.parametrize("mode", list(OverlayMode), ids=lambda m: m.name.lower())
def test_overlay_mode_as_root_writes_only_to_upper(tmp_path, mode):
    if why := _mode_available(mode):
        pytest.skip(why)
    before = _host_cvmfs()
    view = _view(tmp_path, mode)
    result = view.run(["sh", "-c", SCRIPT], timeout=60)
    assert result.stdout == "old\n"
    assert (view.upper / "versions" / "new").read_text() == "new\n"
    assert (view.lower / "versions" / "gone").exists()  # the deletion is a whiteout in upper only
    assert _host_cvmfs() == before and not os.path.exists(REPO)


@root_only
def test_overlay_fuse_mode_returns_the_command_status(tmp_path):
    if why := _mode_available(OverlayMode.FUSE_USERNS):
        pytest.skip(why)
    result = _view(tmp_path, OverlayMode.FUSE_USERNS).run(["sh", "-c", "exit 3"], timeout=60, check=False)
    assert result.returncode == 3


def _fuse_processes(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and FUSE_OVERLAYFS in cmd:
            found.append(cmd)
    return found


@root_only
def test_overlay_fuse_mode_time_out_leaves_no_fuse_overlayfs_behind(tmp_path):
    if why := _mode_available(OverlayMode.FUSE_USERNS):
        pytest.skip(why)
    view = _view(tmp_path, OverlayMode.FUSE_USERNS)
    with pytest.raises(CommandFailed) as info:
        view.run(["sleep", "60"], timeout=2)
    assert info.value.timed_out
    assert _fuse_processes(str(view.upper)) == []


def _nobody_can_run_the_project() -> str | None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
        return "needs root, setpriv and /usr/bin/python3 to act as nobody"
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         "/usr/bin/python3", "-c", "import eessi_pipeline.software.overlay"],
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": os.defpath},
        capture_output=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return "nobody cannot import the project with /usr/bin/python3 here"
    if not os.path.isdir("/cvmfs"):
        return "/cvmfs does not exist (root creates it on the first build)"
    return None


@pytest.fixture
def nobody_dir():
    """A directory nobody owns (pytest's tmp_path lies under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="eessi-nobody-"))
    path.chmod(0o755)
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _archive_owned_by_someone_else(path: Path) -> None:
    """A tarball whose member belongs to uid 1000, like the upstream source tarballs EasyBuild unpacks."""
    data = b"from upstream\n"
    info = tarfile.TarInfo("pkg-1.0/README")
    info.size, info.uid, info.gid = len(data), 1000, 1000
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(data))
    os.chown(path, NOBODY, NOBODY)


def test_overlay_unprivileged_user_builds_through_a_user_namespace(nobody_dir):
    if why := _nobody_can_run_the_project():
        pytest.skip(why)
    work = nobody_dir
    _archive_owned_by_someone_else(work / "src.tar")
    script = (
        f"id -u && mkdir -p {REPO}/versions && echo hi > {REPO}/versions/f && "
        f"tar xf {work / 'src.tar'} -C {REPO}/versions"  # root in the namespace: tar would chown
    )
    (work / "probe.py").write_text(
        textwrap.dedent(f"""
            from pathlib import Path
            from eessi_pipeline.software.overlay import OverlayView, host_overlay_mode
            mode, reason = host_overlay_mode()
            print(mode.name if mode else "NONE", reason, sep="\\n")
            view = OverlayView.for_repository("modes.eessi.local", Path({str(work)!r}) / "ovl")
            print(view.run(["sh", "-c", {script!r}], timeout=60).stdout, end="")
        """)
    )
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         "/usr/bin/python3", str(work / "probe.py")],
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(work)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    mode, _reason, uid = result.stdout.splitlines()[:3]
    fuse_ok = shutil.which(FUSE_OVERLAYFS) and os.stat("/dev/fuse").st_mode & 0o006 == 0o006
    assert mode == ("FUSE_USERNS" if fuse_ok else "KERNEL_USERNS")
    assert uid == "0"  # EasyBuild would see root: the namespace's, mapped to nobody
    upper = work / "ovl" / "upper" / "versions"
    assert (upper / "f").read_text() == "hi\n" and (upper / "f").stat().st_uid == NOBODY
    assert (upper / "pkg-1.0" / "README").stat().st_uid == NOBODY
