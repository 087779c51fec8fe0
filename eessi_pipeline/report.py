"""The one reporter: how library code tells the person at the terminal what it is doing.

Library modules never write to ``sys.stderr`` themselves.  A progress line goes through
:func:`say` (``say("publish", "Stratum 1 at revision 7")`` writes ``[publish] Stratum 1 at revision 7``),
and the output of a child program echoed as it runs goes to :func:`stream`.  Both use the stream the
command line chose with :func:`use_stream`, standard error unless it chose another; every line is
flushed at once, so it shows up between the lines of the programs the pipeline runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(slots=True)
class _Target:
    stream: TextIO | None = None  # None: sys.stderr as it is when a line is written


_TARGET = _Target()


def use_stream(stream: TextIO | None) -> None:
    """Send every later progress line to ``stream`` (None: back to standard error)."""
    _TARGET.stream = stream


def stream() -> TextIO:
    """Where progress goes now: the chosen stream, or the current ``sys.stderr``."""
    return _TARGET.stream if _TARGET.stream is not None else sys.stderr


def say(step: str, message: str) -> None:
    """Write ``[<step>] <message>`` as one line and flush it."""
    out = stream()
    out.write(f"[{step}] {message}\n")
    out.flush()
