"""The one mount-namespace launcher: apply a list of mounts in order, then run a command.

Run inside a private mount namespace, as ``unshare --mount --propagation private [--user
--map-root-user] -- python3 -I -S nslaunch.py SPEC -- ARGV...`` (or ``python -m
eessi_pipeline.nslaunch``).  ``SPEC`` is a JSON plan (:func:`to_json` of a :class:`Spec`), given
inline or as the path of a file holding it.  Callers build their plans with pure functions:
:class:`eessi_pipeline.software.overlay.OverlayView` (the build's overlay at ``/cvmfs/<repo>``),
:class:`eessi_pipeline.compat.runner.LayerView` (a staged compatibility layer at its prefix) and
:func:`eessi_pipeline.cvmfs.nsrun.run_mounted` (the verifying FUSE client at ``/cvmfs/<repo>``).

Kinds of :class:`Mount`, applied in order (each target but a tmpfs's is created first):

- ``tmpfs``: an empty tmpfs (``mode=0755``) over ``target``, so that mount points can be created
  below it without touching the host's file system;
- ``bind``: ``source`` bind-mounted (recursively) at ``target``, read-only with ``readonly``;
- ``overlay``: ``lower`` (top first), ``upper`` and ``work`` at ``target``, by the kernel, or with
  ``fuse`` (the ``fuse-overlayfs`` binary) by that program in the foreground;
- ``fuse``: the FUSE daemon ``argv`` (which mounts ``target`` and stays in the foreground, its output
  appended to ``log``), waited for until ``target`` is mounted.

Without a FUSE daemon ``ARGV`` replaces this process; with one, ``ARGV`` runs as a child, then the
daemons' mounts are detached (last first) and the daemons waited for.  Exit codes: 2 for a bad
command line or plan, 126 when a mount fails, 127 when ``ARGV`` cannot be run, else ``ARGV``'s.
Everything vanishes with the namespace.  Standard library only: it runs with ``-I -S``, possibly
in another environment than the pipeline's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
FUSE_MOUNT_WAIT = 30.0
DAEMON_EXIT_WAIT = 15.0
KINDS = ("tmpfs", "bind", "overlay", "fuse")
USAGE = "usage: nslaunch.py SPEC -- ARGV...  (SPEC: a JSON mount plan, or a file holding one)"
EXIT_USAGE = 2
EXIT_MOUNT = 126
EXIT_NOT_RUN = 127
LAUNCHER = str(Path(__file__).resolve())


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount operation (see the module's docstring for the kinds and their fields)."""

    kind: str
    target: str
    source: str = ""
    readonly: bool = False
    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    fuse: str = ""  # overlay: the fuse-overlayfs binary; empty for the kernel's overlayfs
    argv: tuple[str, ...] = ()  # fuse: the daemon's command line
    log: str = ""  # fuse: the file the daemon's output is appended to (empty: this process's stderr)
    new_session: bool = False  # fuse: the daemon in a session of its own (kept from the terminal's signals)

    def describe(self) -> str:
        if self.kind == "tmpfs":
            return f"a tmpfs over {self.target}"
        if self.kind == "bind":
            return f"{self.source} at {self.target}{' read-only' if self.readonly else ''}"
        if self.kind == "overlay":
            return f"the overlay at {self.target}{' (fuse-overlayfs)' if self.fuse else ''}"
        return f"the FUSE file system at {self.target}"


@dataclass(frozen=True, slots=True)
class Spec:
    """The mounts, in order, and a hint appended to a mount failure's message."""

    mounts: tuple[Mount, ...]
    hint: str = ""


def to_json(spec: Spec) -> str:
    """``spec`` as compact JSON, the launcher's ``SPEC`` argument (pure)."""
    return json.dumps(dataclasses.asdict(spec), separators=(",", ":"))


def from_json(text: str) -> Spec:
    """The plan in ``text`` (pure); ValueError names what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("mounts"), list):
        raise ValueError("the plan is not an object with a list of mounts")
    names = {f.name for f in dataclasses.fields(Mount)}
    mounts = []
    for item in data["mounts"]:
        if not isinstance(item, dict) or not set(item) <= names or "kind" not in item or "target" not in item:
            raise ValueError(f"not a mount: {item!r}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in item.items()}
        m = Mount(**fields)
        if m.kind not in KINDS:
            raise ValueError(f"unknown kind of mount {m.kind!r} (one of {', '.join(KINDS)})")
        if (m.kind == "bind" and not m.source) or (
            m.kind == "overlay" and not (m.lower and m.upper and m.work)
        ):
            raise ValueError(f"incomplete {m.kind} mount for {m.target}")
        if m.kind == "fuse" and not m.argv:
            raise ValueError(f"no FUSE daemon given for {m.target}")
        mounts.append(m)
    return Spec(tuple(mounts), str(data.get("hint", "")))


def command_line(spec: Spec, command: list[str], python: str = sys.executable) -> list[str]:
    """The launcher running ``command`` under ``spec`` (pure; put ``unshare`` in front of it)."""
    return [python, "-I", "-S", LAUNCHER, to_json(spec), "--", *command]


def overlay_data(m: Mount) -> str:
    """The overlay's mount options (pure)."""
    return f"lowerdir={':'.join(m.lower)},upperdir={m.upper},workdir={m.work}"


def fuse_overlayfs_argv(m: Mount) -> list[str]:
    """fuse-overlayfs in the foreground (``-f``: it stays in this process group) for an overlay (pure)."""
    return [m.fuse, "-f", "-o", overlay_data(m), m.target]


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None) -> None:  # fmt: skip
    enc = os.fsencode
    rc = libc.mount(
        enc(source) if source is not None else None, enc(target), enc(fstype) if fstype else None,
        ctypes.c_ulong(flags), enc(data) if data is not None else None,
    )  # fmt: skip
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or '(none)'} on {target}: {os.strerror(err)}")


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        return any(len(f) > 4 and f[4] == path for f in (line.split() for line in fh))


class MountFailed(Exception):
    """A mount could not be made (the message is the whole line to print)."""


def _start_daemon(m: Mount, argv: list[str]) -> subprocess.Popen[bytes]:
    out = open(m.log, "ab") if m.log else None  # noqa: SIM115 - the daemon keeps it open
    try:
        daemon = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out or sys.stderr, stderr=out,
            start_new_session=m.new_session,
        )  # fmt: skip
    except OSError as e:
        raise MountFailed(f"cannot start {argv[0]} for {m.target}: {e.strerror}") from e
    finally:
        if out is not None:
            out.close()
    deadline = time.monotonic() + FUSE_MOUNT_WAIT
    while not _mounted(m.target):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            tail = ""
            if m.log:
                lines = Path(m.log).read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
                tail = f": {' | '.join(lines)} (log: {m.log})"
            raise MountFailed(
                f"{os.path.basename(argv[0])} did not mount {m.target} (exit {daemon.returncode}){tail}; "
                "check that /dev/fuse can be opened"
            )
        time.sleep(0.02)
    return daemon


def apply(libc: ctypes.CDLL, spec: Spec) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Make ``spec``'s mounts in order; return the FUSE daemons started, with their mount points."""
    daemons: list[tuple[str, subprocess.Popen[bytes]]] = []
    for m in spec.mounts:
        try:
            if m.kind == "tmpfs":
                _mount(libc, "tmpfs", m.target, "tmpfs", 0, "mode=0755")
                continue
            os.makedirs(m.target, exist_ok=True)
            if m.kind == "bind":
                _mount(libc, m.source, m.target, None, MS_BIND | MS_REC, None)
                if m.readonly:
                    _mount(libc, None, m.target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
            elif m.kind == "overlay" and not m.fuse:
                _mount(libc, "overlay", m.target, "overlay", 0, overlay_data(m))
            else:
                argv = fuse_overlayfs_argv(m) if m.kind == "overlay" else list(m.argv)
                daemons.append((m.target, _start_daemon(m, argv)))
        except MountFailed as e:
            release(libc, daemons)
            raise MountFailed(f"{e}{'; ' + spec.hint if spec.hint else ''}") from e
        except OSError as e:
            release(libc, daemons)
            raise MountFailed(
                f"cannot mount {m.describe()}: {e}{'; ' + spec.hint if spec.hint else ''}"
            ) from e
    return daemons


def release(libc: ctypes.CDLL, daemons: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Detach the daemons' mounts, last first, and wait for the daemons to exit."""
    for target, daemon in reversed(daemons):
        if libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
            daemon.terminate()
        try:
            daemon.wait(timeout=DAEMON_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(USAGE + "\n")
        return EXIT_USAGE
    text, command = argv[0], argv[2:]
    try:
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text(encoding="utf-8")
        spec = from_json(text)
    except (OSError, ValueError, TypeError) as e:
        sys.stderr.write(f"nslaunch: bad mount plan: {e}\n{USAGE}\n")
        return EXIT_USAGE
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        daemons = apply(libc, spec)
    except MountFailed as e:
        sys.stderr.write(f"nslaunch: {e}\n")
        return EXIT_MOUNT
    try:
        if not daemons:
            os.execvp(command[0], command)
        return subprocess.call(command)
    except OSError as e:
        sys.stderr.write(f"nslaunch: cannot run {command[0]}: {e.strerror}\n")
        return EXIT_NOT_RUN
    finally:
        release(libc, daemons)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
