"""SQLite databases that travel as bytes (catalogs, the history, the reflog).

Python's sqlite3 works on files, so both helpers go through a temporary file in ``tmp_dir``
that is removed afterwards, whatever happens.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _temp_copy(data: bytes, tmp_dir: Path, prefix: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=prefix, suffix=".sqlite")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return tmp


def write_db(data: bytes, tmp_dir: Path, prefix: str, fill: Callable[[sqlite3.Connection], None]) -> bytes:
    """The bytes of the database ``data`` (b"": a new, empty one) after ``fill`` has run and been
    committed; rollback journal, so that the result is one self-contained file."""
    tmp = _temp_copy(data, tmp_dir, prefix)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            # No fsync: the file is read back at once and stored as an object (renamed into place);
            # a crash before that loses nothing the publish has not yet referenced.
            db.execute("PRAGMA synchronous=OFF")
            fill(db)
            db.commit()
        finally:
            db.close()
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


def query_db(data: bytes, tmp_dir: Path, prefix: str, query: Callable[[sqlite3.Connection], T]) -> T:
    """What ``query`` returns from the database ``data``, opened read-only."""
    tmp = _temp_copy(data, tmp_dir, prefix)
    try:
        db = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
        try:
            return query(db)
        finally:
            db.close()
    finally:
        Path(tmp).unlink(missing_ok=True)
