"""The history (tag) database and the reflog, both SQLite as cvmfs writes them."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

HISTORY_DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,  "
    "CONSTRAINT pk_branch PRIMARY KEY (branch),   FOREIGN KEY (parent) REFERENCES branches (branch),   "
    "CHECK ((branch <> '') OR (parent IS NULL)),   CHECK ((branch = '') OR (parent IS NOT NULL)))",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER,   timestamp INTEGER, channel INTEGER, "
    "description TEXT, size INTEGER,   branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name),   "
    "FOREIGN KEY (branch) REFERENCES branches (branch))",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER,   CONSTRAINT pk_hash PRIMARY KEY (hash))",
)
REFLOG_DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, CONSTRAINT pk_refs PRIMARY KEY (hash))",
)
REF_CATALOG, REF_CERTIFICATE, REF_HISTORY, REF_METAINFO = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Tag:
    name: str
    hash: str
    revision: int
    timestamp: int
    description: str
    size: int


def _with_db(data: bytes | None, tmp_dir: Path, ddl: tuple[str, ...], fn: object) -> bytes:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="db.", suffix=".sqlite")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data or b"")
    try:
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            if not data:
                for stmt in ddl:
                    db.execute(stmt)
            fn(db)  # type: ignore[operator]
            db.commit()
        finally:
            db.close()
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


def auto_tag_name(existing: set[str], when: dt.datetime) -> str:
    """``generic-YYYY-MM-DDThh:mm:ssZ``; ``generic_1-…`` and so on when taken (as cvmfs does)."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    name = f"generic-{stamp}"
    i = 0
    while name in existing:
        i += 1
        name = f"generic_{i}-{stamp}"
    return name


def add_publish_tags(
    data: bytes | None, fqrn: str, root_hash: str, root_size: int, revision: int, when: dt.datetime,
    previous_history: str | None, tmp_dir: Path,
) -> bytes:  # fmt: skip
    """Add the automatic tag and move ``trunk``/``trunk-previous``, as every cvmfs publish does."""
    ts = int(when.timestamp())

    def update(db: sqlite3.Connection) -> None:
        if not data:
            db.executemany(
                "INSERT INTO properties VALUES (?, ?)",
                [("schema", "1.0"), ("schema_revision", "3"), ("fqrn", fqrn)],
            )
            db.execute("INSERT INTO branches VALUES ('', NULL, 0)")
        if previous_history:
            db.execute(
                "INSERT OR REPLACE INTO properties VALUES ('previous_revision', ?)", (previous_history,)
            )
        names = {r[0] for r in db.execute("SELECT name FROM tags")}
        trunk = db.execute("SELECT hash, revision, timestamp, size FROM tags WHERE name = 'trunk'").fetchone()
        db.execute(
            "INSERT INTO tags VALUES (?, ?, ?, ?, 0, '', ?, '')",
            (auto_tag_name(names, when), root_hash, revision, ts, root_size),
        )
        if trunk:
            db.execute(
                "INSERT OR REPLACE INTO tags "
                "VALUES ('trunk-previous', ?, ?, ?, 0, 'default undo target', ?, '')",
                (trunk[0], trunk[1], trunk[2], trunk[3]),
            )
        db.execute(
            "INSERT OR REPLACE INTO tags VALUES ('trunk', ?, ?, ?, 0, 'current HEAD', ?, '')",
            (root_hash, revision, ts, root_size),
        )

    return _with_db(data, tmp_dir, HISTORY_DDL, update)


def add_reflog_refs(
    data: bytes | None, fqrn: str, refs: list[tuple[str, int]], when: dt.datetime, tmp_dir: Path
) -> bytes:
    ts = int(when.timestamp())

    def update(db: sqlite3.Connection) -> None:
        if not data:
            db.executemany(
                "INSERT INTO properties VALUES (?, ?)",
                [("schema", "1.0"), ("schema_revision", "0"), ("fqrn", fqrn)],
            )
        db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?, ?)", [(h, t, ts) for h, t in refs])

    return _with_db(data, tmp_dir, REFLOG_DDL, update)


def read_tags(data: bytes, tmp_dir: Path) -> list[Tag]:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="db.", suffix=".sqlite")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        db = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT name, hash, revision, timestamp, description, size FROM tags"
            ).fetchall()
        finally:
            db.close()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return sorted((Tag(*r) for r in rows), key=lambda t: (t.revision, t.name))
