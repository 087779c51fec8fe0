"""The history (tag) database and the reflog, both SQLite as cvmfs writes them."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .sqlitedb import query_db, write_db

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
# a new database of each kind: its tables, schema revision and first rows (cvmfs's own values)
_NEW_HISTORY = (HISTORY_DDL, "3", ("INSERT INTO branches VALUES ('', NULL, 0)",))
_NEW_REFLOG = (REFLOG_DDL, "0", ())


@dataclass(frozen=True, slots=True)
class Tag:
    """A row of the history database's ``tags`` table."""

    name: str
    hash: str  # root catalog hash of the tagged revision
    revision: int
    timestamp: int
    channel: int
    description: str
    size: int
    branch: str


TAG_COLUMNS = "name, hash, revision, timestamp, channel, description, size, branch"


def tags_in(db: sqlite3.Connection) -> list[Tag]:
    """Every row of an open history database's ``tags`` table, in the database's order (NULLs as 0
    or ""); sqlite3.DatabaseError when there is no such table."""
    rows = db.execute(f"SELECT {TAG_COLUMNS} FROM tags").fetchall()
    return [
        Tag(str(n), str(h), int(r or 0), int(t or 0), int(c or 0), str(d or ""), int(s or 0), str(b or ""))
        for n, h, r, t, c, d, s, b in rows
    ]


def _with_db(
    data: bytes | None,
    tmp_dir: Path,
    new: tuple[tuple[str, ...], str, tuple[str, ...]],
    fqrn: str,
    fn: Callable[[sqlite3.Connection], None],
) -> bytes:
    """``data`` after ``fn``; without data, a new database first: ``new`` is its (tables, schema
    revision, first rows), and its properties name the schema and the repository."""

    def fill(db: sqlite3.Connection) -> None:
        if not data:
            ddl, schema_revision, first_rows = new
            for stmt in ddl:
                db.execute(stmt)
            db.executemany(
                "INSERT INTO properties VALUES (?, ?)",
                [("schema", "1.0"), ("schema_revision", schema_revision), ("fqrn", fqrn)],
            )
            for stmt in first_rows:
                db.execute(stmt)
        fn(db)

    return write_db(data or b"", tmp_dir, "db.", fill)


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

    return _with_db(data, tmp_dir, _NEW_HISTORY, fqrn, update)


def add_reflog_refs(
    data: bytes | None, fqrn: str, refs: list[tuple[str, int]], when: dt.datetime, tmp_dir: Path
) -> bytes:
    ts = int(when.timestamp())

    def update(db: sqlite3.Connection) -> None:
        db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?, ?)", [(h, t, ts) for h, t in refs])

    return _with_db(data, tmp_dir, _NEW_REFLOG, fqrn, update)


def read_tags(data: bytes, tmp_dir: Path) -> list[Tag]:
    """The tags of history database bytes, by revision then name."""
    return sorted(query_db(data, tmp_dir, "db.", tags_in), key=lambda t: (t.revision, t.name))
