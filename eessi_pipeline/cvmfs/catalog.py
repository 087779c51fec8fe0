"""File catalogs: SQLite databases in cvmfs's schema 2.5, revision 7.

A :class:`CatalogDoc` holds the entries of one catalog (its root entry plus
everything below it that is not in a nested catalog) keyed by full repository
path.  :func:`write_catalog` turns it into the SQLite bytes cvmfs expects, with
all tables, the md5path split, the hardlinks field, flags and the 24
statistics rows; :func:`read_catalog` loads one back for the next transaction.
"""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    CATALOG_SCHEMA,
    CATALOG_SCHEMA_REVISION,
    DEFAULT_TTL,
    FLAG_DIR,
    FLAG_FILE,
    FLAG_FILE_CHUNK,
    FLAG_FILE_SPECIAL,
    FLAG_LINK,
    FLAG_NESTED_MOUNTPOINT,
    FLAG_NESTED_ROOT,
    STATISTICS_COUNTERS,
    md5path,
    parent_path,
)
from .objects import Chunk
from .sqlitedb import query_db, write_db

DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, "
    "hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, "
    "flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,  "
    "CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  hash BLOB,  "
    "CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  "
    "FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2))",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter))",
)

DIR_SIZE = 4096


@dataclass(slots=True)
class Node:
    """One directory entry while a transaction builds catalogs (mutable on purpose)."""

    name: str
    mode: int
    mtime: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    hash: str | None = None
    chunks: tuple[Chunk, ...] = ()
    symlink: str = ""
    linkcount: int = 1
    xattr: bytes | None = None
    nested_mountpoint: bool = False  # a nested catalog starts here (parent's view)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(slots=True)
class CatalogDoc:
    root: str  # "" for the root catalog, else the mountpoint path
    entries: dict[str, Node] = field(default_factory=dict)
    nested: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (hash, uncompressed size)
    properties: dict[str, str] = field(default_factory=dict)
    statistics: dict[str, int] = field(default_factory=dict)  # as read back; recomputed on write


def entry_flags(node: Node, is_catalog_root: bool) -> int:
    if node.is_dir:
        if is_catalog_root and node.nested_mountpoint:
            return FLAG_DIR | FLAG_NESTED_ROOT
        if node.nested_mountpoint:
            return FLAG_DIR | FLAG_NESTED_MOUNTPOINT
        return FLAG_DIR
    if node.is_symlink:
        return FLAG_FILE | FLAG_LINK
    if node.is_regular:
        return FLAG_FILE | (FLAG_FILE_CHUNK if node.chunks else 0)
    return FLAG_FILE | FLAG_FILE_SPECIAL


def self_statistics(doc: CatalogDoc) -> dict[str, int]:
    """``self_*`` counters of one catalog (the mountpoint counts in parent and child)."""
    s = dict.fromkeys(STATISTICS_COUNTERS, 0)
    for node in doc.entries.values():
        if node.is_dir:
            s["self_dir"] += 1
        elif node.is_symlink:
            s["self_symlink"] += 1
        elif node.is_regular:
            s["self_regular"] += 1
            s["self_file_size"] += node.size
            if node.chunks:
                s["self_chunked"] += 1
                s["self_chunked_size"] += node.size
                s["self_chunks"] += len(node.chunks)
        else:
            s["self_special"] += 1
        if node.xattr:
            s["self_xattr"] += 1
    s["self_nested"] = len(doc.nested)
    return s


def add_subtree(stats: dict[str, int], child: dict[str, int]) -> None:
    """Add a nested catalog's self+subtree counters to ``stats``' subtree counters."""
    for counter in STATISTICS_COUNTERS:
        if counter.startswith("subtree_"):
            base = counter[len("subtree_") :]
            stats[counter] += child.get(f"self_{base}", 0) + child.get(counter, 0)


def write_catalog(doc: CatalogDoc, stats: dict[str, int], tmp_dir: Path) -> bytes:
    """Serialise ``doc`` into SQLite bytes (uncompressed)."""

    def fill(db: sqlite3.Connection) -> None:
        for ddl in DDL:
            db.execute(ddl)
        props = {"schema": CATALOG_SCHEMA, "schema_revision": str(CATALOG_SCHEMA_REVISION)}
        if doc.root:
            props["root_prefix"] = doc.root
        else:
            props.setdefault("TTL", str(DEFAULT_TTL))
        props.update(doc.properties)
        db.executemany("INSERT INTO properties (key, value) VALUES (?, ?)", sorted(props.items()))
        rows = []
        chunk_rows = []
        parents: dict[str, tuple[int, int]] = {}  # a directory's entries share its hash
        for path in sorted(doc.entries):
            node = doc.entries[path]
            a, b = md5path(path)
            if path == "":
                pa, pb = 0, 0
            else:
                parent = parent_path(path)
                if parent not in parents:
                    parents[parent] = md5path(parent)
                pa, pb = parents[parent]
            flags = entry_flags(node, path == doc.root and doc.root != "")
            digest = bytes.fromhex(node.hash) if node.hash else None
            rows.append(
                (a, b, pa, pb, node.linkcount, digest, node.size, node.mode, node.mtime, None, flags,
                 node.name, node.symlink, node.uid, node.gid, node.xattr)
            )  # fmt: skip
            for c in node.chunks:
                chunk_rows.append((a, b, c.offset, c.size, bytes.fromhex(c.hash)))
        db.executemany("INSERT INTO catalog VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", chunk_rows)
        db.executemany(
            "INSERT INTO nested_catalogs VALUES (?, ?, ?)",
            [(p, h, s) for p, (h, s) in sorted(doc.nested.items())],
        )
        db.executemany("INSERT INTO statistics VALUES (?, ?)", sorted(stats.items()))

    return write_db(b"", tmp_dir, "catalog.", fill)


_Tables = tuple[
    dict[str, str],
    list[Any],
    dict[tuple[int, int], list[Chunk]],
    dict[str, tuple[str, int]],
    dict[str, int],
]


def _catalog_tables(db: sqlite3.Connection) -> _Tables:
    """Properties, entry rows, chunks by entry, nested catalogs and statistics of an open catalog."""
    props = dict(db.execute("SELECT key, value FROM properties").fetchall())
    rows = db.execute(
        "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime, flags, "
        "name, symlink, uid, gid, xattr FROM catalog"
    ).fetchall()
    chunks: dict[tuple[int, int], list[Chunk]] = {}
    for a, b, off, size, h in db.execute("SELECT md5path_1, md5path_2, offset, size, hash FROM chunks"):
        chunks.setdefault((a, b), []).append(Chunk(off, size, bytes(h).hex()))
    nested = {p: (h, int(s)) for p, h, s in db.execute("SELECT path, sha1, size FROM nested_catalogs")}
    statistics = dict(db.execute("SELECT counter, value FROM statistics").fetchall())
    return props, rows, chunks, nested, statistics


def read_catalog(data: bytes, tmp_dir: Path) -> CatalogDoc:
    """Load catalog bytes back into a :class:`CatalogDoc` (full paths rebuilt from parent links)."""
    props, rows, chunks, nested, statistics = query_db(data, tmp_dir, "catalog.", _catalog_tables)
    root = props.get("root_prefix", "")
    by_key = {(r[0], r[1]): r for r in rows}
    paths: dict[tuple[int, int], str] = {}

    def full_path(key: tuple[int, int]) -> str:
        if key in paths:
            return paths[key]
        r = by_key[key]
        at_root = (r[2], r[3]) == (0, 0) or key == md5path(root)
        p: str = root if at_root else full_path((r[2], r[3])) + "/" + str(r[10])
        paths[key] = p
        return p

    doc = CatalogDoc(root=root, nested=nested, statistics=statistics)
    doc.properties = {k: v for k, v in props.items() if k not in ("schema", "schema_revision", "root_prefix")}
    for key, r in by_key.items():
        flags = r[9]
        node = Node(
            name=r[10], mode=r[7], mtime=r[8], size=r[6], uid=r[12], gid=r[13],
            hash=bytes(r[5]).hex() if r[5] else None,
            chunks=tuple(sorted(chunks.get(key, []), key=lambda c: c.offset)),
            symlink=r[11] or "", linkcount=r[4] & 0xFFFFFFFF, xattr=r[14],
            nested_mountpoint=bool(flags & (FLAG_NESTED_MOUNTPOINT | FLAG_NESTED_ROOT)),
        )  # fmt: skip
        doc.entries[full_path(key)] = node
    return doc
