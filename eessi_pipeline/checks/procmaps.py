"""Which files the processes of a command map, read from ``/proc/<pid>/maps`` while they run.

A smoke command is over in a blink, so its processes are **held at their first write**: their standard
output and error go to a pipe of one page that is already full, so the first ``write`` of any of them
blocks until this module drains the pipe.  By then the loader has mapped the program, its libraries and
everything it imports (a C program flushes its buffered output at exit, Python when it prints); while the
command is held, every process of it (the started process and its descendants) is sampled: its
``/proc/<pid>/exe`` and the files of ``/proc/<pid>/maps``.  A command that writes nothing is never held
and is reported so.

``python -m eessi_pipeline.checks.procmaps SPEC.json OUT.json`` runs a user's session described by
``SPEC.json`` (run it where ``/cvmfs/<repo>`` is mounted, e.g. through ``eessi-pipeline client exec``):
a setup script (source an init script, ``module avail``, load every module) run by the compatibility
layer's bash, which saves the environment it ends with, then each smoke command in that environment,
each held and sampled; ``OUT.json`` gets the outputs, exit codes and the sampled maps.

:func:`mapped_files`, :func:`foreign_files` and :func:`session_problems` are pure.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIPE_SIZE = 4096  # one page: the smallest pipe Linux makes
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_WRITE_SYSCALLS = {"x86_64": "1", "aarch64": "64", "ppc64le": "4", "riscv64": "64"}
# mappings that are no files of the system: anonymous-memory files and devices
_NOT_FILES = ("/memfd:", "/dev/", "/SYSV")


@dataclass(frozen=True, slots=True)
class ProcessMaps:
    """One sampled process: its program and the files it has mapped."""

    pid: int
    exe: str
    files: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "exe": self.exe, "files": list(self.files)}


@dataclass(frozen=True, slots=True)
class SampledRun:
    argv: tuple[str, ...]
    returncode: int
    output: str
    held: bool  # whether the command was held at a write and sampled there
    processes: tuple[ProcessMaps, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "returncode": self.returncode,
            "output": self.output,
            "held": self.held,
            "processes": [p.to_json() for p in self.processes],
        }


def mapped_files(maps: str) -> tuple[str, ...]:
    """The files named in the text of ``/proc/<pid>/maps``, sorted, once each (pure)."""
    found: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            found.add(parts[5].removesuffix(" (deleted)"))
    return tuple(sorted(found))


def foreign_files(processes: Sequence[ProcessMaps], allowed: Sequence[str]) -> list[str]:
    """``<exe> (pid N) maps <file>`` for each program or mapped file outside the ``allowed`` dirs (pure).

    An entry of ``allowed`` admits itself and everything below it (a directory, or one file such as the
    qemu-user interpreter of an emulated session)."""
    roots = tuple(a.rstrip("/") + "/" for a in allowed)
    exact = {a.rstrip("/") for a in allowed}
    problems = []
    for p in processes:
        for f in (p.exe, *p.files):
            if f.startswith(_NOT_FILES) or f.startswith(roots) or f in exact:
                continue
            problems.append(f"{p.exe} (pid {p.pid}) maps {f}")
    return problems


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants now."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _blocked_in_write(pid: int) -> bool:
    try:
        if "pipe_write" in Path(f"/proc/{pid}/wchan").read_text():
            return True
        call = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(call) and call[0] == _WRITE_SYSCALLS.get(os.uname().machine, "1")


def _sample(pid: int) -> ProcessMaps | None:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        files = mapped_files(Path(f"/proc/{pid}/maps").read_text())
    except OSError:
        return None  # gone meanwhile
    return ProcessMaps(pid, exe.removesuffix(" (deleted)"), files)


def _full_pipe() -> tuple[int, int, int]:
    """A pipe whose buffer is full: (read end, write end, bytes in it)."""
    r, w = os.pipe()
    filled = 0
    fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            filled += os.write(w, b"\0" * PIPE_SIZE)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, flags)  # the command's writes must block, not fail
    return r, w, filled


def run_sampled(argv: Sequence[str], env: Mapping[str, str], timeout: float = 300.0) -> SampledRun:
    """Run ``argv`` held at its first write, sample its processes there, then let it finish."""
    r, w, filled = _full_pipe()
    proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=w, stderr=w)
    os.close(w)
    deadline = time.monotonic() + timeout
    seen: dict[int, ProcessMaps] = {}
    held = False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            pids = process_tree(proc.pid)
            if any(_blocked_in_write(p) for p in pids):
                held = True
                for pid in process_tree(proc.pid):
                    sampled = _sample(pid)
                    if sampled is not None:
                        seen[pid] = sampled
                break
            time.sleep(0.002)
        chunks = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        returncode = proc.wait()
        chunks.append(f"\n(killed after {timeout:.0f} s)\n".encode())
    finally:
        os.close(r)
    output = b"".join(chunks)[filled:].decode(errors="replace")
    return SampledRun(tuple(argv), returncode, output, held, tuple(seen[p] for p in sorted(seen)))


def session_problems(
    result: Mapping[str, Any], allowed: Sequence[str], setup_allowed: Sequence[str] = ()
) -> list[str]:
    """Every way a sampled session (what :func:`main` writes) went wrong (pure).

    ``setup_allowed``: more directories the setup shell alone may map (it starts before the init
    script has set up anything, e.g. with the host's locale)."""
    problems: list[str] = []
    runs = [("setup", result["setup"]), *((c["module"], c["run"]) for c in result["commands"])]
    for name, run in runs:
        ok = [*allowed, *setup_allowed] if name == "setup" else list(allowed)
        if run["returncode"] != 0:
            tail = " | ".join(run["output"].strip().splitlines()[-3:])
            problems.append(f"{name}: exit {run['returncode']}: {tail}")
        if not run["held"]:
            problems.append(f"{name}: wrote nothing, so its processes could not be sampled")
        procs = [ProcessMaps(p["pid"], p["exe"], tuple(p["files"])) for p in run["processes"]]
        problems += [f"{name}: {f}" for f in foreign_files(procs, ok)]
    return problems


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m eessi_pipeline.checks.procmaps SPEC.json OUT.json\n")
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    bash, env_file = spec["bash"], Path(argv[1]).with_suffix(".env")
    base_env = {k: v for k, v in os.environ.items() if k in ("HOME", "USER", "TERM", "LANG")}
    base_env["PATH"] = "/usr/bin:/bin"
    base_env.update(spec.get("env", {}))  # e.g. an emulated session's EESSI_MACHINE_TYPE, EESSI_PROC_CPUINFO
    script = spec["setup"] + f"\nenv -0 > {json.dumps(str(env_file))}\n"
    setup = run_sampled([bash, "-c", script], base_env)
    env: dict[str, str] = {}
    if env_file.exists():
        for item in env_file.read_bytes().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep and not key.startswith("BASH_FUNC_"):
                env[key] = value
        env_file.unlink()
    commands = []
    for c in spec["commands"]:
        run = run_sampled([bash, "-c", c["command"]], env or base_env)
        commands.append({"module": c["module"], "command": c["command"], "run": run.to_json()})
    out = {"setup": setup.to_json(), "commands": commands}
    Path(argv[1]).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
