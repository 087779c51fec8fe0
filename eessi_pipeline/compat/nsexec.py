"""Show a staged layer at its prefix, then run a command: the last step inside a private mount namespace.

Run as ``unshare --mount --propagation private [--map-root-user] -- python3 -I -S nsexec.py
[--tmpfs DIR] --bind STAGING PREFIX -- ARGV...`` (see :mod:`eessi_pipeline.compat.runner`,
which builds that command).  ``--tmpfs DIR`` first covers ``DIR`` (``/cvmfs``) with an empty
tmpfs, so that the mount point can be created without touching the host's file system; the
staging tree is then bind-mounted at the prefix, read-only as CernVM-FS would show it (``--rw``
for a build that must write there), and
``ARGV`` replaces this process.  The mounts vanish with the namespace when ``ARGV`` and its
children exit.  Standard library only, and run with ``-S``, so that it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

USAGE = "usage: nsexec.py [--tmpfs DIR] [--rw] --bind STAGING PREFIX -- ARGV..."


def _mount(
    libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    enc = os.fsencode
    rc = libc.mount(
        enc(source) if source is not None else None,
        enc(target),
        enc(fstype) if fstype is not None else None,
        ctypes.c_ulong(flags),
        enc(data) if data is not None else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or '(none)'} on {target}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    tmpfs: str | None = None
    bind: tuple[str, str] | None = None
    writable = False
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--tmpfs" and i + 1 < len(argv):
            tmpfs = argv[i + 1]
            i += 2
        elif argv[i] == "--rw":
            writable = True
            i += 1
        elif argv[i] == "--bind" and i + 2 < len(argv):
            bind = (argv[i + 1], argv[i + 2])
            i += 3
        else:
            sys.stderr.write(f"nsexec: unexpected argument {argv[i]!r}\n{USAGE}\n")
            return 2
    command = argv[i + 1 :]
    if bind is None or not command:
        sys.stderr.write(USAGE + "\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    staging, prefix = bind
    try:
        if tmpfs is not None:
            _mount(libc, "tmpfs", tmpfs, "tmpfs", 0, "mode=0755")
        os.makedirs(prefix, exist_ok=True)
        _mount(libc, staging, prefix, None, MS_BIND | MS_REC, None)
        if not writable:
            _mount(libc, None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    except OSError as e:
        sys.stderr.write(
            f"nsexec: cannot show {staging} at {prefix}: {e}; this needs root or user namespaces "
            "(unshare --map-root-user); run as root or enable unprivileged user namespaces\n"
        )
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"nsexec: cannot run {command[0]}: {e.strerror}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
