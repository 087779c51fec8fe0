"""What the reader reads: the entries and chunks of a repository, a catalog it has opened,
the helpers that turn catalog rows and object bytes into them, and the references of a catalog object
as the replicator needs them (:func:`catalog_references`).

Moved here from :mod:`.reader`, which still exports the public names.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import stat
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import RepositoryError
from .common import (
    FLAG_DIR,
    FLAG_FILE,
    FLAG_FILE_CHUNK,
    FLAG_FILE_EXTERNAL,
    FLAG_FILE_SPECIAL,
    FLAG_LINK,
    FLAG_NESTED_ROOT,
    SUFFIX_CATALOG,
    SUFFIX_PARTIAL,
    object_path,
)
from .objects import Chunk  # one piece of a chunked file: the writer's and the reader's

MANIFEST_NAME = ".cvmfspublished"
WHITELIST_NAME = ".cvmfswhitelist"
REFLOG_NAME = ".cvmfsreflog"
SIGNED_FILE_MAX_BYTES = 1 << 20  # .cvmfspublished and .cvmfswhitelist are a few hundred bytes

HASH_RE = re.compile(r"^([0-9a-f]{40})(-rmd160|-shake128)?$")
ALGO_TAGS = {0: "", 1: "-rmd160", 2: "-shake128"}  # flags bits 8-10: (shash algorithm - 1)
_COMPRESSION_NONE = 1  # flags bits 11-13


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the repository tree as a catalog row describes it."""

    path: str  # absolute inside the repository; "/" for the root
    name: str  # basename; "" for the root
    mode: int  # full st_mode
    mtime: int
    size: int
    flags: int
    hash: str | None  # hex content hash (with algorithm tag) or None
    symlink: str
    uid: int
    gid: int
    linkcount: int  # low 32 bits of ``hardlinks``
    chunks: tuple[Chunk, ...] = ()
    hardlink_group: int = 0  # high 32 bits of ``hardlinks``

    @property
    def is_symlink(self) -> bool:
        return bool(self.flags & FLAG_LINK) or stat.S_ISLNK(self.mode)

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & FLAG_DIR) and not self.is_symlink

    @property
    def is_special(self) -> bool:
        return bool(self.flags & FLAG_FILE_SPECIAL)

    @property
    def is_file(self) -> bool:
        """A regular file (symlinks carry the File flag too: flags 12)."""
        return bool(self.flags & FLAG_FILE) and not self.is_symlink and not self.is_special

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & FLAG_FILE_CHUNK)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & FLAG_FILE_EXTERNAL)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & FLAG_NESTED_ROOT)

    @property
    def compressed(self) -> bool:
        return (self.flags >> 11) & 0x7 != _COMPRESSION_NONE

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


@dataclass(frozen=True, slots=True)
class NestedRef:
    path: str
    hash: str
    size: int


@dataclass(frozen=True, slots=True)
class LoadedCatalog:
    hash: str
    prefix: str  # "" for the root catalog, the mountpoint ("/a/b") for a nested one
    conn: sqlite3.Connection
    size: int  # uncompressed bytes
    nested: tuple[NestedRef, ...]
    select: str  # SELECT … FROM catalog, with NULL for columns an older schema lacks

    @property
    def label(self) -> str:
        where = object_path(self.hash, SUFFIX_CATALOG)
        return f"root catalog ({where})" if not self.prefix else f"catalog of {self.prefix} ({where})"


ROW_COLUMNS = (
    "md5path_1", "md5path_2", "hardlinks", "hash", "size", "mode", "mtime", "flags", "name", "symlink",
    "uid", "gid",
)  # fmt: skip
NAME_COLUMN = ROW_COLUMNS.index("name")


def wire_cap(size: int | None, compressed: bool) -> int | None:
    """The most bytes an object of ``size`` uncompressed bytes can take on the wire (None: unknown).

    zlib adds at most 5 bytes per 16 KiB stored block and 6 of header and trailer; the margin is wider.
    """
    if size is None:
        return None
    return size + size // 1000 + 1024 if compressed else size


def norm_path(path: str) -> str:
    """Repository path as CVMFS hashes it: "" for the root, else "/a/b"."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise RepositoryError(f"{path}: '..' is not allowed in a repository path")
    return "".join("/" + p for p in parts)


def decode_text(raw: bytes) -> str:
    """Names are bytes on the server; keep undecodable ones round-trippable (as md5path encodes them)."""
    return raw.decode("utf-8", "surrogateescape")


def display_path(path: str) -> str:
    return path or "/"


def content_digest(data: bytes, tag: str) -> str:
    if tag == "":
        return hashlib.sha1(data).hexdigest()
    if tag == "-shake128":
        return hashlib.shake_128(data).hexdigest(20) + tag
    try:
        return hashlib.new("ripemd160", data).hexdigest() + tag
    except ValueError as e:
        raise RepositoryError(f"this Python's OpenSSL has no RIPEMD-160; cannot check {tag} objects") from e


@dataclass(frozen=True, slots=True)
class CatalogReferences:
    """What one catalog points at, as a replicator needs it (nothing of the tree itself)."""

    nested: tuple[tuple[str, str], ...]  # (mountpoint, hash) of each nested catalog; not bind mountpoints
    previous_revision: str | None  # the catalog this one replaced; None when absent or all zeros
    objects: frozenset[tuple[str, str]]  # (hash, suffix): whole files "" and chunks "P"; no external files


def catalog_references(raw: bytes, hex_hash: str) -> CatalogReferences:
    """Read the references of the catalog object ``raw`` (its compressed bytes, hash already checked)."""
    relpath = object_path(hex_hash, SUFFIX_CATALOG)
    try:
        data = zlib.decompress(raw)
    except zlib.error as e:
        raise RepositoryError(f"{relpath}: not a valid zlib stream ({e})") from e
    with tempfile.TemporaryDirectory(prefix="eessi-cvmfs-catalog-") as tmp:
        path = Path(tmp) / "catalog.sqlite"
        path.write_bytes(data)
        try:
            conn = sqlite3.connect(path.as_uri() + "?mode=ro&immutable=1", uri=True)
        except sqlite3.Error as e:
            raise RepositoryError(f"{relpath}: not an SQLite database ({e})") from e
        try:
            conn.text_factory = decode_text
            nested = tuple(
                (str(p), str(h))
                for p, h in conn.execute("SELECT path, sha1 FROM nested_catalogs ORDER BY path")
            )
            row = conn.execute("SELECT value FROM properties WHERE key = 'previous_revision'").fetchone()
            rows = conn.execute("SELECT hash, flags FROM catalog WHERE hash IS NOT NULL").fetchall()
            rows_p = conn.execute(
                "SELECT chunks.hash, catalog.flags FROM chunks JOIN catalog "
                "ON chunks.md5path_1 = catalog.md5path_1 AND chunks.md5path_2 = catalog.md5path_2"
            ).fetchall()
        except sqlite3.DatabaseError as e:
            raise RepositoryError(f"{relpath}: unreadable; not a CVMFS catalog ({e})") from e
        finally:
            conn.close()
    objects: set[tuple[str, str]] = set()
    for suffix, found in (("", rows), (SUFFIX_PARTIAL, rows_p)):
        for blob, flags in found:
            flags = int(flags or 0)
            if blob and not flags & FLAG_FILE_EXTERNAL:
                objects.add((bytes(blob).hex() + ALGO_TAGS.get((flags >> 8) & 0x7, ""), suffix))
    previous = str(row[0]) if row is not None and row[0] else None
    if previous is not None and not previous.strip("0"):
        previous = None
    for h in [h for _, h in nested] + ([previous] if previous else []):
        if not HASH_RE.match(h):
            raise RepositoryError(f"{relpath}: references {h!r}, which is not a CVMFS content hash")
    return CatalogReferences(nested, previous, frozenset(objects))
