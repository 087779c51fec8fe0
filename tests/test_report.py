"""The one reporter: ``[<step>] <message>`` lines on the stream the command line chose."""

from __future__ import annotations

import io

import pytest

from eessi_pipeline import report


def test_say_writes_one_line_on_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    report.say("publish", "Stratum 1 at revision 3")
    assert capsys.readouterr().err == "[publish] Stratum 1 at revision 3\n"


def test_the_command_line_chooses_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    chosen = io.StringIO()
    report.use_stream(chosen)
    try:
        report.say("test", "x86_64_generic: -m arch_x86_64_generic")
        assert report.stream() is chosen
    finally:
        report.use_stream(None)
    assert chosen.getvalue() == "[test] x86_64_generic: -m arch_x86_64_generic\n"
    assert capsys.readouterr().err == ""
