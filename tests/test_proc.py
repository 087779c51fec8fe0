"""eessi_pipeline.proc runs real processes: exit codes, output, time-outs that kill process groups, pipelines."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from eessi_pipeline.errors import PipelineError
from eessi_pipeline.proc import CommandFailed, CommandResult, pipeline, run, run_echoed


def _pid_gone(pid: int, within: float = 2.0) -> bool:
    """Whether ``pid`` is dead (a zombie waiting for an init that does not reap counts as dead)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _read_pid(path: Path, within: float = 2.0) -> int | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.02)
    return None


# --- run: exit codes and output ----------------------------------------------------------------------------


def test_run_true_returns_zero_result() -> None:
    result = run(["true"], timeout=10)
    assert isinstance(result, CommandResult)
    assert (result.argv, result.returncode, result.stdout, result.stderr) == (("true",), 0, "", "")
    assert result.duration >= 0


def test_run_false_raises_command_failed_with_exit_code() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["false"], timeout=10)
    assert isinstance(info.value, PipelineError)
    assert info.value.argv == ("false",)
    assert info.value.returncode == 1
    assert not info.value.timed_out
    assert "false exited with code 1" in str(info.value)


def test_run_false_unchecked_returns_nonzero_result() -> None:
    assert run(["false"], timeout=10, check=False).returncode == 1


def test_run_exit_3_message_names_command_code_and_output() -> None:
    argv = ["sh", "-c", "echo x; exit 3"]
    with pytest.raises(CommandFailed) as info:
        run(argv, timeout=10)
    message = str(info.value)
    assert shlex.join(argv) in message
    assert "exited with code 3" in message
    assert message.endswith("\nx")  # nothing on stderr: stdout is quoted instead
    assert info.value.returncode == 3
    assert info.value.output_tail == "x"


def test_run_stderr_message_quotes_last_stderr_lines() -> None:
    script = "for i in $(seq 1 50); do echo line$i >&2; done; echo out; exit 2"
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", script], timeout=10)
    message = str(info.value)
    assert "line50" in message
    assert "line31" in message
    assert "line30\n" not in message  # only the last 20 lines
    assert "out" not in message.splitlines()


def test_run_input_bytes_reaches_stdin() -> None:
    assert run(["cat"], timeout=10, input_bytes=b"abc\n").stdout == "abc\n"


def test_run_stdin_file_reaches_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"x" * 1234)
    with data.open("rb") as fh:
        assert run(["wc", "-c"], timeout=10, stdin_file=fh).stdout.strip() == "1234"


def test_run_without_input_stdin_is_empty() -> None:
    assert run(["wc", "-c"], timeout=10).stdout.strip() == "0"


def test_run_cwd_and_env_are_used(tmp_path: Path) -> None:
    result = run(
        ["sh", "-c", 'pwd; echo "$MARK"'], timeout=10, cwd=tmp_path, env={"MARK": "m1", "PATH": os.defpath}
    )
    assert result.stdout.splitlines() == [str(tmp_path.resolve()), "m1"]


def test_run_non_utf8_output_is_replaced_not_raised() -> None:
    assert run(["printf", r"\377ok"], timeout=10).stdout == "\ufffdok"


def test_result_tail_returns_last_lines_of_stdout_then_stderr() -> None:
    result = CommandResult(argv=("x",), returncode=0, stdout="a\nb\nc", stderr="d\ne\n", duration=0.0)
    assert result.tail(3) == "c\nd\ne"
    assert result.tail() == "a\nb\nc\nd\ne"
    assert result.tail(0) == ""


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"argv": "echo hi"}, TypeError),
        ({"argv": []}, ValueError),
        ({"argv": ["cat"], "input_bytes": b"", "stdin_file": open(os.devnull, "rb")}, ValueError),  # noqa: SIM115
    ],
    ids=["string-argv", "empty-argv", "two-stdin-sources"],
)
def test_run_misuse_raises_programming_error(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        run(timeout=10, **kwargs)  # type: ignore[arg-type]


# --- run: programs that cannot start ---------------------------------------------------------------------


def test_run_missing_program_raises_naming_program_and_path() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["no-such-program-eessi"], timeout=10)
    message = str(info.value)
    assert "program 'no-such-program-eessi' not found on PATH" in message
    assert "install the package that provides it" in message
    assert info.value.returncode == 127


def test_run_missing_cvmfs_server_suggests_package(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"cvmfs-server package.*embedded backend"):
        run(["cvmfs_server", "list"], timeout=10, env={"PATH": str(tmp_path)})


def test_run_missing_cwd_raises_naming_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CommandFailed, match=rf"working directory {missing} does not exist"):
        run(["true"], timeout=10, cwd=missing)


def test_run_non_executable_file_raises_permission_hint(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(CommandFailed, match="is not executable") as info:
        run([str(script)], timeout=10)
    assert info.value.returncode == 126


# --- run: time-outs ---------------------------------------------------------------------------------------


def test_run_sleep_past_timeout_kills_group_with_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {shlex.quote(str(pidfile))}; sleep 30"
    start = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", script], timeout=0.5)
    assert time.monotonic() - start < 3
    assert info.value.timed_out
    assert "ran past its time-out of 0.5s" in str(info.value)
    child = _read_pid(pidfile)
    assert child is not None
    assert _pid_gone(child), f"background child {child} survived the time-out"


def test_run_child_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 30 & echo $! > {shlex.quote(str(pidfile))}; echo started; wait"
    start = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", script], timeout=0.3, kill_grace=0.2)
    assert time.monotonic() - start < 3
    assert info.value.returncode == -9  # SIGTERM was ignored: SIGKILL ended it
    assert "started" in info.value.output_tail  # partial output survives the kill
    child = _read_pid(pidfile)
    assert child is not None
    assert _pid_gone(child)


# --- run: output limit -----------------------------------------------------------------------------------


def test_run_output_past_the_limit_kills_the_group_and_names_command_and_limit(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {shlex.quote(str(pidfile))}; exec yes"
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", script], timeout=60, output_limit=1 << 20)
    message = str(info.value)
    assert message.startswith("sh -c ") and "wrote more than 1 MiB to its stdout" in message, message
    assert not info.value.timed_out
    assert info.value.output_tail.endswith("y")  # what it wrote up to the limit is kept
    child = _read_pid(pidfile)
    assert child is not None
    assert _pid_gone(child), f"background child {child} survived the output limit"


def test_run_stderr_has_its_own_limit() -> None:
    with pytest.raises(CommandFailed, match="wrote more than 4096 bytes to its stderr"):
        run(["sh", "-c", "yes >&2"], timeout=60, output_limit=4096)


def test_run_output_up_to_the_limit_and_large_input_pass() -> None:
    data = b"x" * (1 << 20)
    result = run(["cat"], timeout=60, input_bytes=data, output_limit=1 << 20)
    assert result.stdout == data.decode()


def test_run_echoed_echoes_everything_and_keeps_the_tail() -> None:
    echo = io.StringIO()
    script = "yes | head -c 2097152; echo last line"
    result = run_echoed(["sh", "-c", script], timeout=60, echo=echo, output_limit=1 << 20)
    assert len(echo.getvalue()) == (2 << 20) + len("last line\n")
    assert len(result.stdout) <= (1 << 20) + 65536
    assert result.stdout.endswith("y\nlast line\n")


# --- pipeline ---------------------------------------------------------------------------------------------


def test_pipeline_printf_into_wc_counts_bytes() -> None:
    result = pipeline(["printf", "hello"], ["wc", "-c"], timeout=10)
    assert result.stdout.strip() == "5"
    assert result.returncode == 0
    assert result.argv == ("printf", "hello", "|", "wc", "-c")


def test_pipeline_large_stream_and_stderr_do_not_deadlock() -> None:
    first = ["sh", "-c", "head -c 300000 /dev/zero >&2; head -c 3000000 /dev/zero"]
    result = pipeline(first, ["wc", "-c"], timeout=20)
    assert result.stdout.strip() == "3000000"
    assert len(result.stderr) == 300000


def test_pipeline_failing_first_stage_raises_naming_it() -> None:
    with pytest.raises(CommandFailed) as info:
        pipeline(["sh", "-c", "echo corrupt input >&2; exit 4"], ["cat"], timeout=10)
    message = str(info.value)
    assert message.startswith(
        "sh -c 'echo corrupt input >&2; exit 4' | cat: the first stage (sh) exited with code 4; "
    )
    assert "corrupt input" in message
    assert info.value.returncode == 4


def test_pipeline_failing_second_stage_raises_its_code() -> None:
    with pytest.raises(CommandFailed) as info:
        pipeline(["printf", "x"], ["sh", "-c", "cat >/dev/null; echo rejected >&2; exit 5"], timeout=10)
    assert info.value.returncode == 5
    assert ": the second stage (sh) exited with code 5" in str(info.value)
    assert str(info.value).endswith("\nrejected")


def test_pipeline_second_stage_exits_early_first_stage_sigpipe_reports_second() -> None:
    with pytest.raises(CommandFailed) as info:
        pipeline(
            ["sh", "-c", "while :; do echo y; done"], ["sh", "-c", "head -c1 >/dev/null; exit 6"], timeout=10
        )
    assert info.value.returncode == 6


def test_pipeline_timeout_kills_both_groups(tmp_path: Path) -> None:
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    first = ["sh", "-c", f"sleep 30 & echo $! > {shlex.quote(str(p1))}; wait"]
    second = ["sh", "-c", f"sleep 30 & echo $! > {shlex.quote(str(p2))}; cat"]
    start = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        pipeline(first, second, timeout=0.5)
    assert time.monotonic() - start < 3
    assert info.value.timed_out
    pids = [_read_pid(p1), _read_pid(p2)]
    assert None not in pids
    assert all(_pid_gone(pid) for pid in pids if pid is not None)


def test_pipeline_missing_second_program_kills_first_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    class RecordingPopen(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    with pytest.raises(CommandFailed, match="program 'no-such-program-eessi' not found"):
        pipeline(["sleep", "30"], ["no-such-program-eessi"], timeout=10)
    assert len(started) == 1
    assert started[0].returncode is not None
    assert _pid_gone(started[0].pid)
