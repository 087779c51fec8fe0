"""The one way eessi-pipeline runs a program.

Every subprocess goes through :func:`run` (one command) or :func:`pipeline`
(``first | second`` without a shell).  Both take an argument vector, never a
shell string, and a time-out.  Each process starts in its own session, so it
leads a process group of its own: on time-out (or Ctrl-C) the whole group gets
SIGTERM, and whatever is still alive after a short grace gets SIGKILL.  Children
that a command spawned therefore die with it.

A failure raises :class:`CommandFailed`, which names the command, its exit code
and the last lines of what it wrote to stderr.  :func:`run` keeps at most
``output_limit`` bytes of each output stream: a command that writes more is
killed with its group and reported, rather than filling this process's memory.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from eessi_pipeline.errors import PipelineError

log = logging.getLogger(__name__)

KILL_GRACE = 2.0
"""Seconds a process group gets between SIGTERM and SIGKILL."""

MESSAGE_TAIL_LINES = 20
"""How many lines of stderr a :class:`CommandFailed` message quotes."""

OUTPUT_LIMIT = 64 << 20
"""Bytes :func:`run` accepts on a command's stdout, and as many on its stderr, unless told otherwise."""

EXIT_NOT_FOUND = 127
"""Exit code reported for a program that could not be started (the shell's convention)."""

# How to get a program this project runs; the fallback covers the rest.
_INSTALL_HINTS: Mapping[str, str] = {
    "cvmfs_server": "install the cvmfs-server package (https://cvmfs.readthedocs.io) or use the embedded "
    "backend (the default)",
    "gunzip": "install gzip (e.g. `dnf install gzip` or `apt-get install gzip`)",
    "gzip": "install gzip (e.g. `dnf install gzip` or `apt-get install gzip`)",
    "zstd": "install zstd (e.g. `dnf install zstd` or `apt-get install zstd`)",
    "ssh": "install the OpenSSH client (`dnf install openssh-clients` or `apt-get install openssh-client`)",
    "eb": "install EasyBuild (`pip install easybuild`) or load its module",
    "reframe": "install ReFrame (`pip install reframe-hpc`) or load its module",
    "nginx": "install nginx (e.g. `dnf install nginx` or `apt-get install nginx`)",
    "squid": "install squid (e.g. `dnf install squid` or `apt-get install squid`)",
}


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a finished command left behind; output is decoded as UTF-8 with replacement characters.

    For a :func:`pipeline`, ``argv`` is ``(*first, "|", *second)``, ``stdout`` is the
    second stage's and ``stderr`` both stages' (first, then second).
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of output: stdout followed by stderr (they are captured apart)."""
        return _last_lines(_join_streams(self.stdout, self.stderr), n)


class CommandFailed(PipelineError):
    """A command could not be started, exited non-zero, or ran past its time-out."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str],
        returncode: int,
        output_tail: str = "",
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.argv: tuple[str, ...] = tuple(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        self.timed_out = timed_out


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    stdin_file: BinaryIO | None = None,
    check: bool = True,
    kill_grace: float = KILL_GRACE,
    output_limit: int = OUTPUT_LIMIT,
) -> CommandResult:
    """Run ``argv`` to completion within ``timeout`` seconds and return its result.

    stdin is ``input_bytes``, or the open file ``stdin_file``, or empty (/dev/null).
    With ``check`` a non-zero exit raises :class:`CommandFailed`; a time-out, or a
    program that cannot be started, always does.  ``env`` replaces the environment.
    Output is read until every writer closes it, so a background process left
    holding stdout counts against the time-out (and is killed with the group).
    A command that writes more than ``output_limit`` bytes to stdout, or to stderr,
    is killed with its group and raises :class:`CommandFailed`.
    """
    args = _checked_argv(argv)
    if input_bytes is not None and stdin_file is not None:
        raise ValueError("run(): give input_bytes or stdin_file, not both")
    if output_limit < 1:
        raise ValueError(f"run(): output_limit must be at least 1 byte, not {output_limit}")
    stdin: int | IO[bytes] = subprocess.DEVNULL
    if input_bytes is not None:
        stdin = subprocess.PIPE
    elif stdin_file is not None:
        stdin = stdin_file
    log.debug("running %s (timeout %gs)", shlex.join(args), timeout)
    start = time.monotonic()
    proc = _start(args, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE)
    capture = _Capture(proc, input_bytes, output_limit)
    deadline = start + timeout
    try:
        if not capture.read(deadline):
            raise subprocess.TimeoutExpired(args, timeout)
        if not capture.over:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_groups([proc], kill_grace)
        capture.read(time.monotonic() + kill_grace)  # what it wrote while it was being stopped
        capture.close()
        result = _result(args, proc.returncode, capture.data("stdout"), capture.data("stderr"), start)
        raise _timeout_error(shlex.join(args), args, result, timeout) from None
    except BaseException:  # Ctrl-C or anything else: leave nothing running behind us
        _kill_groups([proc], kill_grace)
        capture.close()
        raise
    if capture.over:
        _kill_groups([proc], kill_grace)
        capture.close()
        result = _result(args, proc.returncode, capture.data("stdout"), capture.data("stderr"), start)
        raise _overflow_error(shlex.join(args), args, result, capture.over, output_limit)
    capture.close()
    result = _result(args, proc.returncode, capture.data("stdout"), capture.data("stderr"), start)
    log.debug("%s exited with %d after %.1fs", args[0], result.returncode, result.duration)
    if check and result.returncode != 0:
        raise _exit_error(shlex.join(args), args, result)
    return result


def run_echoed(
    argv: Sequence[str],
    *,
    timeout: float,
    echo: IO[str],
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = KILL_GRACE,
    output_limit: int = OUTPUT_LIMIT,
) -> CommandResult:
    """Like :func:`run` without ``check``, but every output line (stdout and stderr merged) is also
    written to ``echo`` as it arrives: progress for long work such as a nested pytest run.  All of it
    is echoed; the result keeps about the last ``output_limit`` bytes."""
    args = _checked_argv(argv)
    log.debug("running %s (timeout %gs, echoed)", shlex.join(args), timeout)
    start = time.monotonic()
    proc = _start(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT)  # fmt: skip
    kept: deque[bytes] = deque()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump() -> None:
        out = proc.stdout
        assert out is not None
        size = 0
        for line in iter(lambda: out.readline(65536), b""):
            kept.append(line)
            size += len(line)
            while size > output_limit and len(kept) > 1:  # the output's tail is what a failure needs
                size -= len(kept.popleft())
            echo.write(decoder.decode(line))
            echo.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        reader.join(timeout=kill_grace)
    except subprocess.TimeoutExpired:
        _kill_groups([proc], kill_grace)
        reader.join(timeout=kill_grace)
        result = _result(args, proc.returncode, b"".join(kept), b"", start)
        raise _timeout_error(shlex.join(args), args, result, timeout) from None
    except BaseException:
        _kill_groups([proc], kill_grace)
        raise
    return _result(args, proc.returncode, b"".join(kept), b"", start)


def pipeline(
    first: Sequence[str],
    second: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = KILL_GRACE,
) -> CommandResult:
    """Run ``first | second`` without a shell; fail if either stage fails (like ``set -o pipefail``).

    Each stage leads its own process group; on time-out both groups are killed.
    The reported exit code is the last stage's if it failed, else the first's.
    Note that the second stage has already done its work when a failure of the
    first is noticed: validate input (e.g. read the whole tarball) beforehand.
    """
    a, b = _checked_argv(first), _checked_argv(second)
    shown = f"{shlex.join(a)} | {shlex.join(b)}"
    argv = (*a, "|", *b)
    log.debug("running %s (timeout %gs)", shown, timeout)
    start = time.monotonic()
    p1 = _start(a, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    link = p1.stdout
    if link is None:  # cannot happen with stdout=PIPE; keeps the type checker honest without assert
        raise RuntimeError("pipeline(): the first stage has no stdout pipe")
    try:
        p2 = _start(b, cwd=cwd, env=env, stdin=link, stdout=subprocess.PIPE)
    except BaseException:
        _kill_groups([p1], kill_grace)
        _close_pipes(p1)
        raise
    # Our copy of the pipe must go, or the first stage never sees SIGPIPE when the second exits.
    link.close()
    readers = [_Drain(p1.stderr), _Drain(p2.stdout), _Drain(p2.stderr)]
    deadline = start + timeout
    try:
        for proc in (p2, p1):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for r in readers:
            r.join(max(0.0, deadline - time.monotonic()))
        if any(r.alive for r in readers):  # a stray process still holds a pipe open
            raise subprocess.TimeoutExpired(list(argv), timeout)
    except subprocess.TimeoutExpired:
        _kill_groups([p1, p2], kill_grace)
        for r in readers:
            r.join(kill_grace)
        err1, out2, err2 = (r.data() for r in readers)
        result = _result(argv, _pipe_status(p1, p2), out2, err1 + err2, start)
        raise _timeout_error(shown, argv, result, timeout) from None
    except BaseException:
        _kill_groups([p1, p2], kill_grace)
        raise
    err1, out2, err2 = (r.data() for r in readers)
    result = _result(argv, _pipe_status(p1, p2), out2, err1 + err2, start)
    log.debug("%s exited with %d/%d after %.1fs", shown, p1.returncode, p2.returncode, result.duration)
    if p2.returncode != 0:
        raise _exit_error(shown, argv, result, stage=f"the second stage ({b[0]})", stage_stderr=err2)
    if p1.returncode != 0:
        raise _exit_error(shown, argv, result, stage=f"the first stage ({a[0]})", stage_stderr=err1)
    return result


# --- internals ---------------------------------------------------------------------------------------------


class _Capture:
    """A command's stdout and stderr read (and its stdin fed) in the calling thread, as
    ``Popen.communicate`` does, but stopped as soon as one stream passes ``limit`` bytes."""

    __slots__ = ("_chunks", "_input", "_selector", "_sizes", "limit", "over")

    def __init__(self, proc: subprocess.Popen[bytes], input_bytes: bytes | None, limit: int) -> None:
        self.limit = limit
        self.over = ""  # the stream that passed the limit, once one has
        self._chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._input = memoryview(input_bytes or b"")
        self._selector = selectors.DefaultSelector()
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if pipe is not None:
                self._selector.register(pipe, selectors.EVENT_READ, name)
        if proc.stdin is not None:  # input_bytes given: stdin is our pipe
            if self._input:
                os.set_blocking(proc.stdin.fileno(), False)
                self._selector.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
            else:
                _close_quietly(proc.stdin)

    def read(self, deadline: float) -> bool:
        """Read until every pipe is closed or a stream passes the limit (True), or ``deadline`` (False)."""
        while self._selector.get_map() and not self.over:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self._selector.select(remaining):
                if key.data == "stdin":
                    self._feed(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._take(key.fileobj, key.data)  # type: ignore[arg-type]
        return True

    def _take(self, pipe: IO[bytes], name: str) -> None:
        try:
            chunk = os.read(pipe.fileno(), 65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(pipe)
            return
        self._chunks[name].append(chunk)
        self._sizes[name] += len(chunk)
        if self._sizes[name] > self.limit:
            self.over = name

    def _feed(self, pipe: IO[bytes]) -> None:
        try:
            written = os.write(pipe.fileno(), self._input[:65536])
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin (EPIPE): it has read what it wanted
            written = len(self._input)
        self._input = self._input[written:]
        if not self._input:
            self._drop(pipe)

    def _drop(self, pipe: IO[bytes]) -> None:
        self._selector.unregister(pipe)
        _close_quietly(pipe)

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._drop(key.fileobj)  # type: ignore[arg-type]
        self._selector.close()

    def data(self, name: str) -> bytes:
        return b"".join(self._chunks[name])


def _close_quietly(pipe: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        pipe.close()


class _Drain:
    """Read a pipe to its end in a thread, so that no stage blocks on a full pipe buffer."""

    __slots__ = ("_chunks", "_pipe", "_thread")

    def __init__(self, pipe: IO[bytes] | None) -> None:
        self._chunks: list[bytes] = []
        self._pipe = pipe
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        if self._pipe is None:
            return
        # os.read returns what is there, so a killed command's partial output is kept.  The thread
        # holds the file object, so its descriptor stays open (and cannot be reused) while it reads.
        fd = self._pipe.fileno()
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                self._chunks.append(chunk)
        with contextlib.suppress(OSError):
            self._pipe.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def data(self) -> bytes:
        """What was read so far (everything, once the writer closed its end)."""
        return b"".join(self._chunks)


def _checked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise TypeError(f"argv must be a list of arguments, not the string {argv!r}")
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty: name the program to run")
    return args


def _start(
    args: tuple[str, ...],
    *,
    cwd: str | Path | None,
    env: Mapping[str, str] | None,
    stdin: int | IO[bytes],
    stdout: int,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        if cwd is not None and e.filename is not None and str(e.filename) == str(cwd):
            raise CommandFailed(
                f"cannot run {shlex.join(args)}: working directory {cwd} does not exist; create it or "
                "pass another one",
                argv=args,
                returncode=EXIT_NOT_FOUND,
            ) from e
        raise CommandFailed(_missing_message(args[0], env), argv=args, returncode=EXIT_NOT_FOUND) from e
    except PermissionError as e:
        raise CommandFailed(
            f"cannot run {shlex.join(args)}: {args[0]} is not executable ({e.strerror}); fix its permissions "
            "(chmod +x) or put the right program first on PATH",
            argv=args,
            returncode=126,
        ) from e


def _missing_message(program: str, env: Mapping[str, str] | None) -> str:
    name = os.path.basename(program)
    hint = _INSTALL_HINTS.get(name, "install the package that provides it")
    if os.sep in program:
        return f"program {program} not found: {hint}, or fix the path"
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return f"program {name!r} not found on PATH ({path}): {hint}, or add its directory to PATH"


def _kill_groups(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM the process groups these processes lead; SIGKILL what is left of them after ``grace``."""
    # start_new_session=True: each child's pid is its session and process group id.
    groups = [p for p in procs if _signal_group(p.pid, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        for p in groups:
            p.poll()  # reap the leader, or its zombie keeps the group alive
        groups = [p for p in groups if _group_alive(p.pid)]
        if groups:
            time.sleep(0.02)
    for p in groups:
        log.debug("process group %d outlived SIGTERM by %gs; sending SIGKILL", p.pid, grace)
        _signal_group(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies waiting to be reaped by init do not count."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: trust kill(2)
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when no process of that group is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials (setuid); its group still exists
        return True
    return True


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _pipe_status(p1: subprocess.Popen[bytes], p2: subprocess.Popen[bytes]) -> int:
    rc1 = p1.returncode if p1.returncode is not None else -signal.SIGKILL
    rc2 = p2.returncode if p2.returncode is not None else -signal.SIGKILL
    return rc2 if rc2 != 0 else rc1


def _result(argv: tuple[str, ...], rc: int | None, out: bytes, err: bytes, start: float) -> CommandResult:
    return CommandResult(
        argv=argv,
        returncode=rc if rc is not None else -signal.SIGKILL,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        duration=time.monotonic() - start,
    )


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def _exit_error(
    shown: str,
    argv: tuple[str, ...],
    result: CommandResult,
    *,
    stage: str | None = None,
    stage_stderr: bytes | None = None,
) -> CommandFailed:
    who = f"{shown}: {stage}" if stage else shown
    stderr = stage_stderr.decode("utf-8", "replace") if stage_stderr is not None else result.stderr
    quoted = _last_lines(stderr, MESSAGE_TAIL_LINES) or _last_lines(result.stdout, MESSAGE_TAIL_LINES)
    message = f"{who} {_describe_exit(result.returncode)}; fix what it reports and run again"
    message += f"\n{quoted}" if quoted else " (it wrote nothing)"
    return CommandFailed(message, argv=argv, returncode=result.returncode, output_tail=result.tail())


def _timeout_error(shown: str, argv: tuple[str, ...], result: CommandResult, timeout: float) -> CommandFailed:
    message = (
        f"{shown} ran past its time-out of {timeout:g}s and was killed with its process group; "
        "find out why it hangs or raise the time-out"
    )
    quoted = _last_lines(_join_streams(result.stdout, result.stderr), MESSAGE_TAIL_LINES)
    if quoted:
        message += f"\n{quoted}"
    return CommandFailed(
        message, argv=argv, returncode=result.returncode, output_tail=result.tail(), timed_out=True
    )


def _overflow_error(
    shown: str, argv: tuple[str, ...], result: CommandResult, stream: str, limit: int
) -> CommandFailed:
    size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
    message = (
        f"{shown} wrote more than {size} to its {stream} (the limit of a command's output) and was killed "
        "with its process group; find out why it writes so much, or raise output_limit for this command"
    )
    return CommandFailed(message, argv=argv, returncode=result.returncode, output_tail=result.tail())


def _join_streams(stdout: str, stderr: str) -> str:
    if stdout and stderr and not stdout.endswith("\n"):
        return stdout + "\n" + stderr
    return stdout + stderr


def _last_lines(text: str, n: int) -> str:
    if n <= 0:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-n:])
