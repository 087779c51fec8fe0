"""Mount a writable overlay at a repository path, then run a command: inside a private mount namespace.

Run as ``unshare --mount --propagation private -- python3 -I -S ovlexec.py --cover /cvmfs
--lower L --stage S --upper U --work W --mount /cvmfs/<repo> [--skeleton K] [--fuse FUSE-OVERLAYFS]
-- ARGV...`` (built by :mod:`eessi_pipeline.software.overlay`; unprivileged users run it under
``unshare --user --map-root-user --mount``).  Steps: bind ``L`` (the repository's current content,
possibly under ``/cvmfs`` itself) onto ``S``; cover ``/cvmfs`` with an empty tmpfs so that the mount
point is created without touching the host; mount ``lowerdir=S,upperdir=U,workdir=W`` at the
repository path; run ``ARGV``.  ``--skeleton K`` adds ``K`` as the lowest lower layer: a tree of empty
directories that are mount points for later read-only binds inside the repository (a compatibility
layer at its prefix), so that creating them writes nothing into the upper dir.

Without ``--fuse`` the overlay is the kernel's and ``ARGV`` replaces this process.  With ``--fuse`` the
overlay is a ``fuse-overlayfs`` process in the foreground (``-f``, so it stays in this process group
and dies with it on a time-out); ``ARGV`` runs as a child, then the overlay is unmounted and
fuse-overlayfs is waited for, and the child's exit status is returned.  Everything vanishes with the
namespace.  Standard library only (it runs with ``-I -S``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
FUSE_MOUNT_WAIT = 20.0
USAGE = (
    "usage: ovlexec.py --cover DIR --lower L --stage S --upper U --work W --mount PATH "
    "[--skeleton K] [--fuse FUSE-OVERLAYFS] -- ARGV..."
)
REQUIRED = {"cover", "lower", "stage", "upper", "work", "mount"}


def fuse_overlayfs_argv(binary: str, lower: str, upper: str, work: str, mount: str) -> list[str]:
    """fuse-overlayfs in the foreground with the overlay's three directories (pure)."""
    return [binary, "-f", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", mount]


def _mount(
    libc: ctypes.CDLL, source: str, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    enc = os.fsencode
    rc = libc.mount(
        enc(source), enc(target), enc(fstype) if fstype else None, ctypes.c_ulong(flags),
        enc(data) if data is not None else None,
    )  # fmt: skip
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        return any(line.split()[4] == path for line in fh if len(line.split()) > 4)


def lowerdirs(opts: dict[str, str]) -> str:
    """The overlay's ``lowerdir`` option: the staged repository over the optional skeleton (pure)."""
    return f"{opts['stage']}:{opts['skeleton']}" if opts.get("skeleton") else opts["stage"]


def _run_on_fuse(libc: ctypes.CDLL, opts: dict[str, str], command: list[str]) -> int:
    argv = fuse_overlayfs_argv(opts["fuse"], lowerdirs(opts), opts["upper"], opts["work"], opts["mount"])
    daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    deadline = time.monotonic() + FUSE_MOUNT_WAIT
    while not _mounted(opts["mount"]):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            sys.stderr.write(
                f"ovlexec: fuse-overlayfs did not mount {opts['mount']} (exit {daemon.returncode}); "
                "check that /dev/fuse can be opened\n"
            )
            return 126
        time.sleep(0.02)
    try:
        try:
            return subprocess.call(command)
        except OSError as e:
            sys.stderr.write(f"ovlexec: cannot run {command[0]}: {e.strerror}\n")
            return 127
    finally:
        if libc.umount2(os.fsencode(opts["mount"]), MNT_DETACH) != 0:
            daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i][2:] in (*REQUIRED, "fuse", "skeleton") and argv[i].startswith("--") and i + 1 < len(argv):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            sys.stderr.write(f"ovlexec: unexpected argument {argv[i]!r}\n{USAGE}\n")
            return 2
    command = argv[i + 1 :]
    if not set(opts) >= REQUIRED or not command:
        sys.stderr.write(USAGE + "\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _mount(libc, opts["lower"], opts["stage"], None, MS_BIND | MS_REC, None)
        _mount(libc, "tmpfs", opts["cover"], "tmpfs", 0, "mode=0755")
        os.makedirs(opts["mount"], exist_ok=True)
        if "fuse" not in opts:
            data = f"lowerdir={lowerdirs(opts)},upperdir={opts['upper']},workdir={opts['work']}"
            _mount(libc, "overlay", opts["mount"], "overlay", 0, data)
    except OSError as e:
        sys.stderr.write(
            f"ovlexec: cannot mount the overlay at {opts['mount']}: {e}; "
            "this needs root or a user namespace\n"
        )
        return 126
    if "fuse" in opts:
        return _run_on_fuse(libc, opts, command)
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"ovlexec: cannot run {command[0]}: {e.strerror}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
