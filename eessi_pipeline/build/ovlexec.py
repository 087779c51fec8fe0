"""Mount a writable overlay at a repository path, then run a command: inside a private mount namespace.

Run as ``unshare --mount --propagation private -- python3 -I -S ovlexec.py --cover /cvmfs
--lower L --stage S --upper U --work W --mount /cvmfs/<repo> -- ARGV...`` (built by
:mod:`eessi_pipeline.build.overlay`).  Steps: bind ``L`` (the repository's current content, possibly
under ``/cvmfs`` itself) onto ``S``; cover ``/cvmfs`` with an empty tmpfs so that the mount point is
created without touching the host; mount a kernel overlayfs ``lowerdir=S,upperdir=U,workdir=W`` at the
repository path; exec ``ARGV``.  Everything vanishes with the namespace.  Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_BIND = 4096
MS_REC = 16384
USAGE = "usage: ovlexec.py --cover DIR --lower L --stage S --upper U --work W --mount PATH -- ARGV..."


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


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] in ("--cover", "--lower", "--stage", "--upper", "--work", "--mount") and i + 1 < len(argv):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            sys.stderr.write(f"ovlexec: unexpected argument {argv[i]!r}\n{USAGE}\n")
            return 2
    command = argv[i + 1 :]
    if set(opts) != {"cover", "lower", "stage", "upper", "work", "mount"} or not command:
        sys.stderr.write(USAGE + "\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _mount(libc, opts["lower"], opts["stage"], None, MS_BIND | MS_REC, None)
        _mount(libc, "tmpfs", opts["cover"], "tmpfs", 0, "mode=0755")
        os.makedirs(opts["mount"], exist_ok=True)
        data = f"lowerdir={opts['stage']},upperdir={opts['upper']},workdir={opts['work']}"
        _mount(libc, "overlay", opts["mount"], "overlay", 0, data)
    except OSError as e:
        sys.stderr.write(f"ovlexec: cannot mount the overlay at {opts['mount']}: {e}; this needs root\n")
        return 126
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"ovlexec: cannot run {command[0]}: {e.strerror}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
