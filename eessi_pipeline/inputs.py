"""Files a user hands to a command, read once, bounded, with one-line refusals.

Every refusal names the file, what was expected and the fix: a missing path, a directory, a device
or pipe (``/dev/zero`` is refused before a byte is read), a file over the size limit (at most
``limit + 1`` bytes are ever read), an empty file, or bytes that are not UTF-8 text where text is
expected.  ``EESSI_PIPELINE_INPUT_MAX_BYTES`` raises the default limit (64 MiB) for reports.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import PipelineError

MAX_BYTES_ENV = "EESSI_PIPELINE_INPUT_MAX_BYTES"
DEFAULT_MAX_BYTES = 64 << 20  # pytest JUnit and ReFrame JSON reports of big runs stay well below


class InputError(PipelineError):
    """A file given to a command is missing, of the wrong kind, too large, empty or not text."""


def default_limit() -> int:
    value = os.environ.get(MAX_BYTES_ENV, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else DEFAULT_MAX_BYTES


def check_regular_file(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is an existing regular file (symlinks followed); else :class:`InputError`."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file; {fix}") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror}); {fix}") from e
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a {what}; {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a device, pipe or socket), not a {what}; {fix}")
    return path


def read_bytes(path: Path, what: str, fix: str, limit: int | None = None, allow_empty: bool = False) -> bytes:
    """The bytes of a regular file, at most ``limit`` of them (refused past it)."""
    cap = default_limit() if limit is None else limit
    check_regular_file(path, what, fix)
    try:
        with path.open("rb") as fh:
            data = fh.read(cap + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror}); {fix}") from e
    if len(data) > cap:
        raise InputError(
            f"{path}: larger than {cap} bytes, the limit for a {what}; {fix} (or raise ${MAX_BYTES_ENV})"
        )
    if not data and not allow_empty:
        raise InputError(f"{path}: is empty, not a {what}; {fix}")
    return data


def read_text(path: Path, what: str, fix: str, limit: int | None = None) -> str:
    """The UTF-8 text of a regular file (see :func:`read_bytes`); binary content is refused."""
    data = read_bytes(path, what, fix, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}: a binary file?), "
            f"not a {what}; {fix}"
        ) from e
