"""Read and verify any CVMFS repository, the real ``cvmfs_server``'s or ours.

A repository is reached through a :class:`Source` (a local repository directory,
``/srv/cvmfs/<name>``, or its HTTP URL ``http://host/cvmfs/<name>``).  The reader
parses ``.cvmfspublished`` and ``.cvmfswhitelist``, fetches content-addressed objects
(checking that the SHA-1 of the downloaded, compressed bytes equals the object's name
before inflating them), opens the SQLite catalogs read-only from a private temporary
directory, and follows nested catalogs.  :meth:`RepositoryReader.verify` checks the whole
chain of trust and every object, catalog and statistics counter, and names the first
broken thing.

The reader's parts live beside it: :mod:`.sources` (directory and HTTP sources), :mod:`.readmodel`
(entries, chunks, tags, opened catalogs, :func:`catalog_references`) and :mod:`.readverify` (the
verification); every name they had here is still exported here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import RepositoryError
from . import readverify
from .common import (
    FLAG_FILE_CHUNK,
    FLAG_NESTED_MOUNTPOINT,
    SUFFIX_CATALOG,
    SUFFIX_HISTORY,
    SUFFIX_PARTIAL,
    md5path,
    object_path,
)
from .history import Tag, tags_in
from .http import HttpLimits
from .manifest import Manifest, SignedText, parse_manifest
from .objects import Chunk
from .readmodel import (
    ALGO_TAGS,
    HASH_RE,
    MANIFEST_NAME,
    NAME_COLUMN,
    REFLOG_NAME,
    ROW_COLUMNS,
    SIGNED_FILE_MAX_BYTES,
    WHITELIST_NAME,
    CatalogReferences,
    Entry,
    LoadedCatalog,
    NestedRef,
    catalog_references,
    content_digest,
    decode_text,
    display_path,
    norm_path,
    wire_cap,
)
from .readverify import VerifyReport
from .sources import HTTP_TIMEOUT_S, DirSource, HttpSource, Source, open_source
from .whitelist import Whitelist, parse_whitelist

__all__ = [
    "HTTP_TIMEOUT_S",
    "MANIFEST_NAME",
    "REFLOG_NAME",
    "SIGNED_FILE_MAX_BYTES",
    "WHITELIST_NAME",
    "CatalogReferences",
    "Chunk",
    "DirSource",
    "Entry",
    "HttpSource",
    "RepositoryReader",
    "Source",
    "Tag",
    "VerifyReport",
    "catalog_references",
    "open_repository",
    "open_source",
    "verify_repository",
]


# --------------------------------------------------------------------------- the reader


class RepositoryReader:
    """Browse and verify one repository.  Use as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        source: Source,
        master_public_key_pem: bytes | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self.source = source
        self.master_public_key_pem = master_public_key_pem
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        self.now = now
        self.manifest: Manifest
        self.manifest_signed: SignedText
        self.manifest, self.manifest_signed = parse_manifest(
            source.fetch(MANIFEST_NAME, SIGNED_FILE_MAX_BYTES)
        )
        self.whitelist: Whitelist
        self.whitelist_signed: SignedText
        self.whitelist, self.whitelist_signed = parse_whitelist(
            source.fetch(WHITELIST_NAME, SIGNED_FILE_MAX_BYTES)
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="eessi-cvmfs-reader-")
        self._catalogs: dict[str, LoadedCatalog] = {}
        self._history: sqlite3.Connection | None = None

    # ----- lifetime

    def close(self) -> None:
        for cat in self._catalogs.values():
            cat.conn.close()
        self._catalogs.clear()
        if self._history is not None:
            self._history.close()
            self._history = None
        self._tmp.cleanup()

    def __enter__(self) -> RepositoryReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- objects

    def fetch_object(
        self, hex_hash: str, suffix: str = "", compressed: bool = True, size: int | None = None
    ) -> bytes:
        """Download ``data/XX/…<suffix>``, check its hash against the name, and inflate it.

        ``size`` (the uncompressed size the catalog gives, when known) caps what is downloaded and
        inflated; without it the configured maximum (``$EESSI_PIPELINE_HTTP_MAX_BYTES``) does.
        """
        m = HASH_RE.match(hex_hash)
        if not m:
            raise RepositoryError(f"{hex_hash!r}{suffix}: not a CVMFS content hash (40 hex digits)")
        relpath = object_path(hex_hash, suffix)
        raw = self.source.fetch(relpath, max_bytes=wire_cap(size, compressed))
        actual = content_digest(raw, m.group(2) or "")
        if actual != hex_hash:
            raise RepositoryError(
                f"{relpath}: content hash is {actual}, not the {hex_hash} of its name; "
                "the object is corrupt or was altered"
            )
        if not compressed:
            return raw
        limit = size if size is not None else HttpLimits.from_env().max_bytes
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(raw, limit + 1)
        except zlib.error as e:
            raise RepositoryError(f"{relpath}: not a valid zlib stream ({e})") from e
        if len(data) > limit or inflater.unconsumed_tail:
            raise RepositoryError(f"{relpath}: inflates to more than the {limit} bytes expected of it")
        if not inflater.eof:
            raise RepositoryError(f"{relpath}: not a valid zlib stream (truncated)")
        return data

    def _open_db(self, data: bytes, name: str) -> sqlite3.Connection:
        path = Path(self._tmp.name) / name
        path.write_bytes(data)
        uri = path.as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
            conn.text_factory = decode_text
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise RepositoryError(f"{name}: not an SQLite database ({e})") from e
        return conn

    def load_catalog(self, hex_hash: str, prefix: str, expected_size: int | None = None) -> LoadedCatalog:
        cached = self._catalogs.get(hex_hash)
        if cached is not None:
            return cached
        relpath = object_path(hex_hash, SUFFIX_CATALOG)
        data = self.fetch_object(hex_hash, SUFFIX_CATALOG, size=expected_size)
        where = f"catalog of {prefix}" if prefix else "root catalog"
        if expected_size is not None and expected_size != len(data):
            holder = "the parent catalog's nested_catalogs row" if prefix else ".cvmfspublished B"
            raise RepositoryError(
                f"{where} ({relpath}): {holder} gives size {expected_size}, "
                f"but the uncompressed catalog has {len(data)} bytes"
            )
        conn = self._open_db(data, f"{hex_hash}{SUFFIX_CATALOG}.sqlite")
        try:
            have = {str(r[1]) for r in conn.execute("PRAGMA table_info(catalog)")}
            if not {"md5path_1", "md5path_2", "parent_1", "parent_2", "name", "flags"} <= have:
                raise RepositoryError(f"{where} ({relpath}): no usable 'catalog' table; not a CVMFS catalog")
            cols = ", ".join(c if c in have else "NULL" for c in ROW_COLUMNS)
            nested = tuple(
                NestedRef(str(p), str(h), int(s or 0))
                for p, h, s in conn.execute("SELECT path, sha1, size FROM nested_catalogs ORDER BY path")
            )
        except sqlite3.DatabaseError as e:
            conn.close()
            raise RepositoryError(f"{where} ({relpath}): unreadable ({e})") from e
        except RepositoryError:
            conn.close()
            raise
        cat = LoadedCatalog(hex_hash, prefix, conn, len(data), nested, f"SELECT {cols} FROM catalog")
        self._catalogs[hex_hash] = cat
        return cat

    def root_catalog(self) -> LoadedCatalog:
        m = self.manifest
        return self.load_catalog(m.root_catalog, "", m.root_catalog_size or None)

    def _catalog_for(self, path: str) -> LoadedCatalog:
        """The catalog that holds ``path`` (normalised): descend through nested mountpoints."""
        cat = self.root_catalog()
        while True:
            for ref in cat.nested:
                if path == ref.path or path.startswith(ref.path + "/"):
                    cat = self.load_catalog(ref.hash, ref.path, ref.size)
                    break
            else:
                return cat

    # ----- entries

    def _entry(self, cat: LoadedCatalog, path: str, row: Any) -> Entry:
        _m1, _m2, hardlinks, blob, size, mode, mtime, flags, name, symlink, uid, gid = row
        flags = int(flags or 0)
        tag = ALGO_TAGS.get((flags >> 8) & 0x7, "")
        chunks: tuple[Chunk, ...] = ()
        if flags & FLAG_FILE_CHUNK:
            chunks = tuple(
                Chunk(int(off), int(sz), bytes(h).hex() + tag)
                for off, sz, h in cat.conn.execute(
                    "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? ORDER BY offset",
                    md5path(path),
                )
            )
        links = int(hardlinks or 0)
        return Entry(
            path=display_path(path),
            name=str(name or ""),
            mode=int(mode or 0),
            mtime=int(mtime or 0),
            size=int(size or 0),
            flags=flags,
            hash=bytes(blob).hex() + tag if blob else None,
            symlink=str(symlink or ""),
            uid=int(uid or 0),
            gid=int(gid or 0),
            linkcount=links & 0xFFFFFFFF,
            chunks=chunks,
            hardlink_group=links >> 32,
        )

    def lookup(self, path: str) -> Entry | None:
        """The entry at ``path`` ("/" or "" is the root); None when it does not exist."""
        p = norm_path(path)
        cat = self._catalog_for(p)
        row = cat.conn.execute(f"{cat.select} WHERE md5path_1=? AND md5path_2=?", md5path(p)).fetchone()
        return None if row is None else self._entry(cat, p, row)

    def _require(self, path: str) -> Entry:
        entry = self.lookup(path)
        if entry is None:
            raise RepositoryError(
                f"{display_path(norm_path(path))}: no such path in repository {self.manifest.name}"
            )
        return entry

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory, sorted by name; a nested catalog's root replaces its mountpoint."""
        p = norm_path(path)
        entry = self._require(p)
        if not entry.is_dir:
            raise RepositoryError(f"{entry.path}: not a directory")
        cat = self._catalog_for(p)
        out: list[Entry] = []
        for row in cat.conn.execute(f"{cat.select} WHERE parent_1=? AND parent_2=?", md5path(p)):
            child_path = f"{p}/{row[NAME_COLUMN]}"
            child = self._entry(cat, child_path, row)
            if child.flags & FLAG_NESTED_MOUNTPOINT:
                nested_root = self.lookup(child_path)
                if nested_root is None:
                    raise RepositoryError(
                        f"{child.path}: nested catalog mountpoint in {cat.label} has no root entry "
                        "in its nested catalog"
                    )
                child = nested_root
            out.append(child)
        out.sort(key=lambda e: e.name)
        return out

    def walk(self) -> Iterator[Entry]:
        """Every entry: the root, then top-down like ``os.walk`` (a directory's sorted entries, then
        each of its subdirectories in turn), across nested catalogs."""
        root = self._require("")
        yield root
        stack = [root]
        while stack:
            directory = stack.pop()
            children = self.listdir(directory.path)
            yield from children
            stack.extend(reversed([c for c in children if c.is_dir]))

    def read_file(self, path: str) -> bytes:
        """The content of a regular file (whole-file object or chunks), checked against its size."""
        entry = self._require(path)
        if not entry.is_file:
            kind = (
                f"a symlink to {entry.symlink!r}"
                if entry.is_symlink
                else ("a directory" if entry.is_dir else "a special file")
            )
            raise RepositoryError(f"{entry.path}: not a regular file ({kind})")
        if entry.is_external:
            raise RepositoryError(f"{entry.path}: an external file; its content is not in this repository")
        if entry.chunks:
            parts: list[bytes] = []
            offset = 0
            for chunk in entry.chunks:
                if chunk.offset != offset:
                    raise RepositoryError(
                        f"{entry.path}: chunk at offset {chunk.offset} leaves a gap or overlap "
                        f"(expected offset {offset})"
                    )
                data = self.fetch_object(chunk.hash, SUFFIX_PARTIAL, entry.compressed, size=chunk.size)
                if len(data) != chunk.size:
                    raise RepositoryError(
                        f"{entry.path}: chunk {object_path(chunk.hash, SUFFIX_PARTIAL)} has {len(data)} "
                        f"bytes, the chunks table says {chunk.size}"
                    )
                parts.append(data)
                offset += chunk.size
            content = b"".join(parts)
        elif entry.hash is not None:
            content = self.fetch_object(entry.hash, "", entry.compressed, size=entry.size)
        else:
            raise RepositoryError(f"{entry.path}: a regular file with neither a content hash nor chunks")
        if len(content) != entry.size:
            raise RepositoryError(
                f"{entry.path}: content has {len(content)} bytes, the catalog says {entry.size}"
            )
        return content

    # ----- history

    def _history_db(self) -> sqlite3.Connection | None:
        h = self.manifest.history
        if not h:
            return None
        if self._history is None:
            self._history = self._open_db(self.fetch_object(h, SUFFIX_HISTORY), f"{h}{SUFFIX_HISTORY}.sqlite")
        return self._history

    def tags(self) -> list[Tag]:
        """The tags of the history database (object H), by revision then name; [] without one."""
        db = self._history_db()
        if db is None:
            return []
        try:
            tags = tags_in(db)
        except sqlite3.DatabaseError as e:
            where = object_path(self.manifest.history or "", SUFFIX_HISTORY)
            raise RepositoryError(f"history database ({where}): no readable 'tags' table ({e})") from e
        tags.sort(key=lambda t: (t.revision, t.timestamp, t.name))
        return tags

    # ----- the expected-tree.json form

    def tree_json(self) -> dict[str, Any]:
        """The tree as ``expected-tree.json`` writes it: every path but the root, in :meth:`walk` order;
        ``path, mode ("0o755"), mtime, type`` plus ``size, sha1, nlink`` for files and ``target`` for
        symlinks."""
        entries: list[dict[str, Any]] = []
        for e in self.walk():
            if e.path == "/":
                continue
            item: dict[str, Any] = {"path": e.path, "mode": oct(e.permissions), "mtime": e.mtime}
            if e.is_symlink:
                item["type"] = "symlink"
                item["target"] = e.symlink
            elif e.is_dir:
                item["type"] = "dir"
            elif e.is_file:
                item["type"] = "file"
                item["size"] = e.size
                item["sha1"] = hashlib.sha1(self.read_file(e.path)).hexdigest()
                item["nlink"] = e.linkcount
            else:
                item["type"] = "special"
            entries.append(item)
        return {"repository": self.manifest.name, "revision": self.manifest.revision, "entries": entries}

    # ----- verification (readverify.py)

    def check_signatures(self) -> None:
        """The manifest ensemble: whitelist (signature, name, expiry, fingerprint) and manifest signature."""
        readverify.check_signatures(self)

    def verify(self) -> VerifyReport:
        """Check everything; RepositoryError names the first broken thing."""
        return readverify.verify(self)


# --------------------------------------------------------------------------- entry points


def open_repository(
    path_or_url: str | Path, master_public_key_pem: bytes | None = None, now: dt.datetime | None = None
) -> RepositoryReader:
    """A reader for a repository directory or URL (remember to close it, or use ``with``)."""
    return RepositoryReader(open_source(path_or_url), master_public_key_pem, now)


def verify_repository(
    path_or_url: str | Path, master_key_pem: bytes | None, now: dt.datetime | None = None
) -> VerifyReport:
    """Verify a repository end to end; RepositoryError names the first broken thing."""
    with open_repository(path_or_url, master_key_pem, now) as reader:
        return reader.verify()
