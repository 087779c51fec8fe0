"""How commands print for machines: one JSON form, and file contents as raw bytes."""

from __future__ import annotations

import json
from typing import Any, TextIO


def emit_json(data: Any, out: TextIO) -> None:
    """``data`` as indented JSON with sorted keys, one document per call."""
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_bytes(out: TextIO, data: bytes) -> None:
    """File content to ``out``: raw bytes to a real stream, text (errors replaced) to a StringIO."""
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode("utf-8", "replace"))
