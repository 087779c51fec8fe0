"""Plumbing for the daemons this pipeline starts (Slurm, nginx, squid): finding their programs, their
pid files, recognising them by command line, stopping a process tree, and the tail of their logs.

Used by :mod:`eessi_pipeline.cluster.manager` and :mod:`eessi_pipeline.services.stack`; what a
daemon is (its argv, its marker, its readiness) stays with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .services import sockets

log = logging.getLogger(__name__)

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
"""Where Debian puts daemons (slurmctld, nginx, squid); not on an ordinary user's PATH."""
LOG_TAIL_LINES = 15
POLL = 0.1


def which(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``name`` on PATH or in the sbin directories, else None."""
    env = os.environ if environ is None else environ
    path = os.pathsep.join([env.get("PATH", os.defpath), *SBIN_DIRS])
    return shutil.which(name, path=path)


def read_pid(path: Path) -> int | None:
    """The pid a daemon wrote to ``path`` (first word), or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def send_signal(pid: int, sig: int) -> None:
    """Signal ``pid``; one already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def find(candidates: Iterable[int | None], marker: str) -> int | None:
    """Our daemon's master: the first candidate (pid file, record) alive with ``marker`` in its
    command line, else the oldest ancestor among the live processes with it (pid files are written a
    moment after the daemon forks, and can be lost); never a process recognised by name alone."""
    for pid in candidates:
        if pid is None:
            continue
        info = sockets.process_info(pid)
        if info is not None and info.alive and marker in info.command + " ":
            return pid
    ours = [p for p in sockets.all_processes() if p.alive and marker in p.command + " "]
    pids = {p.pid for p in ours}
    masters = sorted(p.pid for p in ours if p.ppid not in pids)
    return masters[0] if masters else None


def wait_gone(pids: Iterable[int], timeout: float, poll: float = POLL) -> bool:
    """Wait until none of ``pids`` is alive; False after ``timeout`` seconds."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(sockets.is_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def stop_trees(
    pids: Iterable[int],
    sig: int,
    timeout: float,
    what: str,
    *,
    kill_wait: float = 5.0,
    poll: float = POLL,
) -> list[int]:
    """Send ``sig`` to ``pids`` and wait for their whole process trees, escalating to SIGKILL after
    ``timeout`` seconds; the processes that survived SIGKILL too (empty when all are gone)."""
    pids = list(pids)
    tree = sorted({p for pid in pids for p in sockets.process_tree(pid)})
    for pid in pids:
        send_signal(pid, sig)
    if wait_gone(tree, timeout, poll):
        return []
    left = [p for p in tree if sockets.is_alive(p)]
    log.warning("%s: %s still running after %g s; sending SIGKILL", what, left, timeout)
    for p in left:
        send_signal(p, signal.SIGKILL)
    if wait_gone(left, kill_wait, poll):
        return []
    return left


def survivors_hint(left: list[int]) -> str:
    """How to look at processes that survived SIGKILL."""
    return f"look at them with `ps -o pid,stat,cmd -p {','.join(map(str, left))}`"


def tail(path: Path | None, n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` lines of a daemon's log, for an error message."""
    if path is None:
        return ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"
