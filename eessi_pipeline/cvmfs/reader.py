"""Read and verify any CVMFS repository, the real ``cvmfs_server``'s or ours.

A repository is reached through a :class:`Source` (a local repository directory,
``/srv/cvmfs/<name>``, or its HTTP URL ``http://host/cvmfs/<name>``).  The reader
parses ``.cvmfspublished`` and ``.cvmfswhitelist``, fetches content-addressed objects
(checking that the SHA-1 of the downloaded, compressed bytes equals the object's name
before inflating them), opens the SQLite catalogs read-only from a private temporary
directory, and follows nested catalogs.  :meth:`RepositoryReader.verify` checks the whole
chain of trust and every object, catalog and statistics counter, and names the first
broken thing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
import stat
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ..errors import RepositoryError
from .common import (
    FLAG_DIR,
    FLAG_FILE,
    FLAG_FILE_CHUNK,
    FLAG_FILE_EXTERNAL,
    FLAG_FILE_SPECIAL,
    FLAG_LINK,
    FLAG_NESTED_MOUNTPOINT,
    FLAG_NESTED_ROOT,
    STATISTICS_COUNTERS,
    SUFFIX_CATALOG,
    SUFFIX_CERTIFICATE,
    SUFFIX_HISTORY,
    SUFFIX_METAINFO,
    SUFFIX_PARTIAL,
    md5path,
    object_path,
)
from .http import HttpFetchError, HttpLimits, http_get
from .manifest import Manifest, SignedText, parse_manifest
from .verify import certificate_fingerprint, verify_manifest_signature, verify_whitelist_signature
from .whitelist import Whitelist, parse_whitelist

MANIFEST_NAME = ".cvmfspublished"
WHITELIST_NAME = ".cvmfswhitelist"
REFLOG_NAME = ".cvmfsreflog"
HTTP_TIMEOUT_S = 10.0
SIGNED_FILE_MAX_BYTES = 1 << 20  # .cvmfspublished and .cvmfswhitelist are a few hundred bytes

_HASH_RE = re.compile(r"^([0-9a-f]{40})(-rmd160|-shake128)?$")
_ALGO_TAGS = {0: "", 1: "-rmd160", 2: "-shake128"}  # flags bits 8-10: (shash algorithm - 1)
_COMPRESSION_NONE = 1  # flags bits 11-13


# --------------------------------------------------------------------------- sources


class Source(Protocol):
    """Where a repository's files come from; ``relpath`` is relative to the repository root."""

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; RepositoryError naming the path or URL when it is missing.

        ``max_bytes``: refuse more than this (the object's size when known; else a configured cap).
        """
        ...


@dataclass(frozen=True, slots=True)
class DirSource:
    """A repository directory on disk (``/srv/cvmfs/<name>``)."""

    root: Path

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        path = self.root / relpath
        try:
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise RepositoryError(f"{path}: larger than the {max_bytes} bytes expected of it")
            return path.read_bytes()
        except FileNotFoundError as e:
            raise RepositoryError(f"{path}: missing from the repository at {self.root}") from e
        except OSError as e:
            raise RepositoryError(f"{path}: cannot be read ({e.strerror or e})") from e

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True, slots=True)
class HttpSource:
    """A repository served over HTTP; ``base_url`` like ``http://127.0.0.1:8080/cvmfs/<name>``.

    ``proxy`` (``http://squid:3128``) sends every request through that forward proxy. Every request
    is bounded by ``limits`` (:mod:`eessi_pipeline.cvmfs.http`: read timeout, deadline, size cap);
    ``timeout`` is the per-read timeout.
    """

    base_url: str
    timeout: float = HTTP_TIMEOUT_S
    proxy: str | None = None
    limits: HttpLimits | None = None  # None: from the environment

    def url(self, relpath: str) -> str:
        return f"{self.base_url.rstrip('/')}/{relpath}"

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        url = self.url(relpath)
        limits = self.limits or HttpLimits.with_read_timeout(self.timeout)
        via = f" via proxy {self.proxy}" if self.proxy else ""
        try:
            return http_get(url, limits, max_bytes=max_bytes, proxy=self.proxy,
                            headers={"User-Agent": "eessi-pipeline-cvmfs-reader"})  # fmt: skip
        except HttpFetchError as e:
            if e.status == 404:
                raise RepositoryError(f"{url}: missing from the repository (HTTP 404{via})") from e
            raise RepositoryError(f"{e}{via}") from e

    def __str__(self) -> str:
        return self.base_url


def open_source(path_or_url: str | Path) -> Source:
    """An :class:`HttpSource` for ``http://``/``https://`` URLs, else a :class:`DirSource`."""
    text = str(path_or_url)
    if text.startswith(("http://", "https://")):
        return HttpSource(text)
    return DirSource(Path(path_or_url))


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a chunked file: an uncompressed byte range and its ``…P`` object."""

    offset: int
    size: int
    hash: str


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


@dataclass(frozen=True, slots=True)
class VerifyReport:
    revision: int
    catalogs: int  # catalogs checked (root and every nested one)
    objects: int  # distinct data objects (whole files and chunks) fetched and checked
    entries: int  # distinct paths of the tree, the root included
    warnings: tuple[str, ...] = ()  # findings that do not make the revision unusable


@dataclass(frozen=True, slots=True)
class _NestedRef:
    path: str
    hash: str
    size: int


@dataclass(frozen=True, slots=True)
class _Catalog:
    hash: str
    prefix: str  # "" for the root catalog, the mountpoint ("/a/b") for a nested one
    conn: sqlite3.Connection
    size: int  # uncompressed bytes
    nested: tuple[_NestedRef, ...]
    select: str  # SELECT … FROM catalog, with NULL for columns an older schema lacks

    @property
    def label(self) -> str:
        where = object_path(self.hash, SUFFIX_CATALOG)
        return f"root catalog ({where})" if not self.prefix else f"catalog of {self.prefix} ({where})"


_ROW_COLUMNS = (
    "md5path_1", "md5path_2", "hardlinks", "hash", "size", "mode", "mtime", "flags", "name", "symlink",
    "uid", "gid",
)  # fmt: skip
_NAME_COLUMN = _ROW_COLUMNS.index("name")
_SELF_CHECKED = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks", "file_size", "chunked_size",
    "external", "external_file_size",
)  # fmt: skip
_COUNTER_NAMES = tuple(c.removeprefix("self_") for c in STATISTICS_COUNTERS if c.startswith("self_"))


def _wire_cap(size: int | None, compressed: bool) -> int | None:
    """The most bytes an object of ``size`` uncompressed bytes can take on the wire (None: unknown).

    zlib adds at most 5 bytes per 16 KiB stored block and 6 of header and trailer; the margin is wider.
    """
    if size is None:
        return None
    return size + size // 1000 + 1024 if compressed else size


def _norm(path: str) -> str:
    """Repository path as CVMFS hashes it: "" for the root, else "/a/b"."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise RepositoryError(f"{path}: '..' is not allowed in a repository path")
    return "".join("/" + p for p in parts)


def _decode_text(raw: bytes) -> str:
    """Names are bytes on the server; keep undecodable ones round-trippable (as md5path encodes them)."""
    return raw.decode("utf-8", "surrogateescape")


def _display(path: str) -> str:
    return path or "/"


def _digest(data: bytes, tag: str) -> str:
    if tag == "":
        return hashlib.sha1(data).hexdigest()
    if tag == "-shake128":
        return hashlib.shake_128(data).hexdigest(20) + tag
    try:
        return hashlib.new("ripemd160", data).hexdigest() + tag
    except ValueError as e:
        raise RepositoryError(f"this Python's OpenSSL has no RIPEMD-160; cannot check {tag} objects") from e


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
        self._catalogs: dict[str, _Catalog] = {}
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
        m = _HASH_RE.match(hex_hash)
        if not m:
            raise RepositoryError(f"{hex_hash!r}{suffix}: not a CVMFS content hash (40 hex digits)")
        relpath = object_path(hex_hash, suffix)
        raw = self.source.fetch(relpath, max_bytes=_wire_cap(size, compressed))
        actual = _digest(raw, m.group(2) or "")
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
            conn.text_factory = _decode_text
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise RepositoryError(f"{name}: not an SQLite database ({e})") from e
        return conn

    def _load_catalog(self, hex_hash: str, prefix: str, expected_size: int | None = None) -> _Catalog:
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
            cols = ", ".join(c if c in have else "NULL" for c in _ROW_COLUMNS)
            nested = tuple(
                _NestedRef(str(p), str(h), int(s or 0))
                for p, h, s in conn.execute("SELECT path, sha1, size FROM nested_catalogs ORDER BY path")
            )
        except sqlite3.DatabaseError as e:
            conn.close()
            raise RepositoryError(f"{where} ({relpath}): unreadable ({e})") from e
        except RepositoryError:
            conn.close()
            raise
        cat = _Catalog(hex_hash, prefix, conn, len(data), nested, f"SELECT {cols} FROM catalog")
        self._catalogs[hex_hash] = cat
        return cat

    def root_catalog(self) -> _Catalog:
        m = self.manifest
        return self._load_catalog(m.root_catalog, "", m.root_catalog_size or None)

    def _catalog_for(self, path: str) -> _Catalog:
        """The catalog that holds ``path`` (normalised): descend through nested mountpoints."""
        cat = self.root_catalog()
        while True:
            for ref in cat.nested:
                if path == ref.path or path.startswith(ref.path + "/"):
                    cat = self._load_catalog(ref.hash, ref.path, ref.size)
                    break
            else:
                return cat

    # ----- entries

    def _entry(self, cat: _Catalog, path: str, row: Any) -> Entry:
        _m1, _m2, hardlinks, blob, size, mode, mtime, flags, name, symlink, uid, gid = row
        flags = int(flags or 0)
        tag = _ALGO_TAGS.get((flags >> 8) & 0x7, "")
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
            path=_display(path),
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
        p = _norm(path)
        cat = self._catalog_for(p)
        row = cat.conn.execute(f"{cat.select} WHERE md5path_1=? AND md5path_2=?", md5path(p)).fetchone()
        return None if row is None else self._entry(cat, p, row)

    def _require(self, path: str) -> Entry:
        entry = self.lookup(path)
        if entry is None:
            raise RepositoryError(f"{_display(_norm(path))}: no such path in repository {self.manifest.name}")
        return entry

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory, sorted by name; a nested catalog's root replaces its mountpoint."""
        p = _norm(path)
        entry = self._require(p)
        if not entry.is_dir:
            raise RepositoryError(f"{entry.path}: not a directory")
        cat = self._catalog_for(p)
        out: list[Entry] = []
        for row in cat.conn.execute(f"{cat.select} WHERE parent_1=? AND parent_2=?", md5path(p)):
            child_path = f"{p}/{row[_NAME_COLUMN]}"
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
            rows = db.execute(
                "SELECT name, hash, revision, timestamp, channel, description, size, branch FROM tags"
            ).fetchall()
        except sqlite3.DatabaseError as e:
            where = object_path(self.manifest.history or "", SUFFIX_HISTORY)
            raise RepositoryError(f"history database ({where}): no readable 'tags' table ({e})") from e
        tags = [
            Tag(
                str(n), str(h), int(r or 0), int(t or 0), int(c or 0), str(d or ""), int(s or 0), str(b or "")
            )
            for n, h, r, t, c, d, s, b in rows
        ]
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

    # ----- verification

    def check_signatures(self) -> None:
        """The manifest ensemble: whitelist (signature, name, expiry, fingerprint) and manifest signature."""
        m, wl = self.manifest, self.whitelist
        if self.master_public_key_pem is not None:
            verify_whitelist_signature(self.whitelist_signed, self.master_public_key_pem)
        if wl.name != m.name:
            raise RepositoryError(
                f"{WHITELIST_NAME}: names repository {wl.name!r}, but {MANIFEST_NAME} N is {m.name!r}"
            )
        now = self.now or dt.datetime.now(dt.UTC)
        if wl.expired(now):
            raise RepositoryError(
                f"{WHITELIST_NAME}: expired at {wl.expires:%Y-%m-%d %H:%M:%S} UTC (now {now:%Y-%m-%d %H:%M} "
                "UTC); re-sign it with the master key (cvmfs_server resign)"
            )
        if not m.certificate:
            raise RepositoryError(
                f"{MANIFEST_NAME}: no X key, so no certificate to verify the signature with"
            )
        cert_pem = self.fetch_object(m.certificate, SUFFIX_CERTIFICATE)
        fpr = certificate_fingerprint(cert_pem)
        if fpr not in {f.upper() for f in wl.fingerprints}:
            raise RepositoryError(
                f"{object_path(m.certificate, SUFFIX_CERTIFICATE)}: certificate fingerprint {fpr} is not "
                f"listed in {WHITELIST_NAME}"
            )
        verify_manifest_signature(self.manifest_signed, cert_pem)

    def verify(self) -> VerifyReport:
        """Check everything; RepositoryError names the first broken thing."""
        self.check_signatures()
        m = self.manifest
        root = self.root_catalog()
        props = _properties(root)
        if "root_prefix" in props:
            raise RepositoryError(f"{root.label}: has a root_prefix property; it is a nested catalog")
        if props.get("revision") != str(m.revision):
            raise RepositoryError(
                f"{root.label}: revision property is {props.get('revision')!r}, "
                f"but {MANIFEST_NAME} S is {m.revision}"
            )
        top = self.lookup("")
        if top is None or not top.is_dir:
            raise RepositoryError(f"{root.label}: no root directory entry")

        catalogs = self._verify_catalogs(root)
        objects, entries = self._verify_tree(catalogs)

        warnings: list[str] = []
        if m.reflog:
            data = self.source.fetch(REFLOG_NAME)
            actual = hashlib.sha1(data).hexdigest()
            if actual != m.reflog:
                # The reflog is renamed into place just before the manifest, so a publish
                # interrupted between the two leaves it one step ahead.  That is harmless (clients
                # never read it) as long as it still records this revision's objects; the next
                # publish repairs it.  A reflog that lost them is an error.
                missing = _reflog_missing(data, m)
                if missing:
                    raise RepositoryError(
                        f"{REFLOG_NAME}: SHA-1 is {actual}, but {MANIFEST_NAME} Y is {m.reflog}, and it "
                        f"{missing}"
                    )
                warnings.append(
                    f"{REFLOG_NAME}: SHA-1 is {actual}, not {MANIFEST_NAME} Y ({m.reflog}); it still records "
                    "this revision (an interrupted publish leaves it so; the next publish repairs it)"
                )
        if m.history:
            self.tags()
        if m.metainfo:
            self.fetch_object(m.metainfo, SUFFIX_METAINFO)
        return VerifyReport(
            revision=m.revision,
            catalogs=len(catalogs),
            objects=objects,
            entries=entries,
            warnings=tuple(warnings),
        )

    def _verify_catalogs(self, root: _Catalog) -> list[_Catalog]:
        """Every catalog, parents before children: nested links and self_* counters first, then the
        subtree_* sums (so a child's own wrong counter is named before its parent's sum)."""
        done: list[tuple[_Catalog, list[_Catalog]]] = []
        queue = [root]
        while queue:
            cat = queue.pop(0)
            children = [self._verify_nested_link(cat, ref) for ref in cat.nested]
            _check_self_statistics(cat)
            done.append((cat, children))
            queue.extend(children)
        for cat, children in done:
            _check_subtree_statistics(cat, children)
        return [cat for cat, _ in done]

    def _verify_nested_link(self, parent: _Catalog, ref: _NestedRef) -> _Catalog:
        if ref.path != _norm(ref.path) or not ref.path:
            raise RepositoryError(
                f"{parent.label}: nested_catalogs path {ref.path!r} is not an absolute path"
            )
        if not (ref.path.startswith(parent.prefix + "/")):
            raise RepositoryError(
                f"{parent.label}: nested catalog {ref.path} is not below {parent.prefix or '/'}"
            )
        row = parent.conn.execute(
            "SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?", md5path(ref.path)
        ).fetchone()
        if row is None or not int(row[0]) & FLAG_NESTED_MOUNTPOINT:
            raise RepositoryError(
                f"{parent.label}: lists nested catalog {ref.path}, but has no mountpoint entry (flag 2) there"
            )
        child = self._load_catalog(ref.hash, ref.path, ref.size)
        prefix = _properties(child).get("root_prefix")
        if prefix != ref.path:
            raise RepositoryError(f"{child.label}: root_prefix property is {prefix!r}, not {ref.path!r}")
        row = child.conn.execute(
            "SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?", md5path(ref.path)
        ).fetchone()
        if row is None or not int(row[0]) & FLAG_NESTED_ROOT:
            raise RepositoryError(f"{child.label}: no nested-root entry (flags 33) for {ref.path}")
        marker = f"{ref.path}/.cvmfscatalog"
        row = child.conn.execute(
            "SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?", md5path(marker)
        ).fetchone()
        if row is None or int(row[0]) & (FLAG_DIR | FLAG_LINK):
            raise RepositoryError(
                f"{child.label}: nested catalog without marker: no regular file {marker} (the real "
                "cvmfs_server keeps one in every nested catalog and `cvmfs_swissknife check` reports its "
                "absence); republish the directory with a .cvmfscatalog file in it"
            )
        return child

    def _verify_tree(self, catalogs: list[_Catalog]) -> tuple[int, int]:
        """Walk the tree (entry consistency), then fetch every distinct data object."""
        wanted: dict[
            tuple[str, str], tuple[int, bool, str]
        ] = {}  # (hash, suffix) -> (size, compressed, path)
        count = 0
        for e in self.walk():
            count += 1
            _check_entry_type(e)
            if e.flags & FLAG_NESTED_MOUNTPOINT:  # walk() replaced every mountpoint listed in nested_catalogs
                raise RepositoryError(
                    f"{e.path}: flagged as a nested catalog mountpoint, but no nested_catalogs row names it"
                )
            if not e.is_file or e.is_external:
                continue
            if e.chunks:
                if sum(c.size for c in e.chunks) != e.size:
                    raise RepositoryError(
                        f"{e.path}: chunk sizes add up to {sum(c.size for c in e.chunks)}, "
                        f"the file has {e.size} bytes"
                    )
                for c in e.chunks:
                    self._want(wanted, (c.hash, SUFFIX_PARTIAL), (c.size, e.compressed, e.path))
            elif e.hash is not None:
                self._want(wanted, (e.hash, ""), (e.size, e.compressed, e.path))
            else:
                raise RepositoryError(f"{e.path}: a regular file with neither a content hash nor chunks")
        rows = sum(int(c.conn.execute("SELECT count(*) FROM catalog").fetchone()[0]) for c in catalogs)
        expected_rows = count + len(catalogs) - 1  # each mountpoint appears in parent and child
        if rows != expected_rows:
            raise RepositoryError(
                f"catalogs of {self.manifest.name}: {rows - expected_rows} catalog row(s) are not reachable "
                "from the root (wrong parent hash, or entries left in a parent below a nested mountpoint)"
            )
        for (h, suffix), (size, compressed, path) in wanted.items():
            data = self.fetch_object(h, suffix, compressed)
            if len(data) != size:
                raise RepositoryError(
                    f"{object_path(h, suffix)}: inflates to {len(data)} bytes, but {path} says {size}"
                )
        return len(wanted), count

    @staticmethod
    def _want(
        wanted: dict[tuple[str, str], tuple[int, bool, str]],
        key: tuple[str, str],
        value: tuple[int, bool, str],
    ) -> None:
        seen = wanted.setdefault(key, value)
        if seen[:2] != value[:2]:
            raise RepositoryError(
                f"{object_path(*key)}: {seen[2]} and {value[2]} share it but disagree on size or compression"
            )


def _properties(cat: _Catalog) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in cat.conn.execute("SELECT key, value FROM properties")}
    except sqlite3.DatabaseError as e:
        raise RepositoryError(f"{cat.label}: no readable 'properties' table ({e})") from e


def _statistics(cat: _Catalog) -> dict[str, int]:
    try:
        stats = {str(k): int(v) for k, v in cat.conn.execute("SELECT counter, value FROM statistics")}
    except sqlite3.DatabaseError as e:
        raise RepositoryError(f"{cat.label}: no readable 'statistics' table ({e})") from e
    missing = [c for c in STATISTICS_COUNTERS if c not in stats]
    if missing:
        raise RepositoryError(f"{cat.label}: statistics counter(s) missing: {', '.join(missing)}")
    return stats


def _count_self(cat: _Catalog) -> dict[str, int]:
    """What the catalog's own rows say, counted as cvmfs's DeltaCounters does (by st_mode)."""
    n = dict.fromkeys(_COUNTER_NAMES, 0)
    for mode, flags, size in cat.conn.execute("SELECT mode, flags, size FROM catalog"):
        mode, flags, size = int(mode or 0), int(flags or 0), int(size or 0)
        if stat.S_ISREG(mode):
            n["regular"] += 1
            n["file_size"] += size
            if flags & FLAG_FILE_CHUNK:
                n["chunked"] += 1
                n["chunked_size"] += size
            if flags & FLAG_FILE_EXTERNAL:
                n["external"] += 1
                n["external_file_size"] += size
        elif stat.S_ISLNK(mode):
            n["symlink"] += 1
        elif stat.S_ISDIR(mode):
            n["dir"] += 1
        else:
            n["special"] += 1
    n["chunks"] = int(cat.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
    n["nested"] = len(cat.nested)
    return n


def _check_self_statistics(cat: _Catalog) -> None:
    stats = _statistics(cat)
    counted = _count_self(cat)
    for name in _SELF_CHECKED:
        if stats[f"self_{name}"] != counted[name]:
            raise RepositoryError(
                f"{cat.label}: statistics counter self_{name} is {stats[f'self_{name}']}, "
                f"but the catalog's rows give {counted[name]}"
            )


def _check_subtree_statistics(cat: _Catalog, children: list[_Catalog]) -> None:
    stats = _statistics(cat)
    child_stats = [_statistics(c) for c in children]
    for name in _COUNTER_NAMES:
        total = sum(s[f"self_{name}"] + s[f"subtree_{name}"] for s in child_stats)
        if stats[f"subtree_{name}"] != total:
            raise RepositoryError(
                f"{cat.label}: statistics counter subtree_{name} is {stats[f'subtree_{name}']}, but its "
                f"nested catalogs sum to {total}"
            )


def _check_entry_type(e: Entry) -> None:
    kinds = {
        "directory": (stat.S_ISDIR(e.mode), bool(e.flags & FLAG_DIR)),
        "symlink": (stat.S_ISLNK(e.mode), bool(e.flags & FLAG_LINK)),
        "regular file": (stat.S_ISREG(e.mode), e.is_file),
    }
    for kind, (by_mode, by_flags) in kinds.items():
        if by_mode != by_flags:
            raise RepositoryError(
                f"{e.path}: mode {e.mode:o} and flags {e.flags} disagree on whether it is a {kind}"
            )


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
            conn.text_factory = _decode_text
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
                objects.add((bytes(blob).hex() + _ALGO_TAGS.get((flags >> 8) & 0x7, ""), suffix))
    previous = str(row[0]) if row is not None and row[0] else None
    if previous is not None and not previous.strip("0"):
        previous = None
    for h in [h for _, h in nested] + ([previous] if previous else []):
        if not _HASH_RE.match(h):
            raise RepositoryError(f"{relpath}: references {h!r}, which is not a CVMFS content hash")
    return CatalogReferences(nested, previous, frozenset(objects))


__all__ = [
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


def _reflog_missing(data: bytes, m: Manifest) -> str:
    """Why a reflog cannot serve revision ``m`` ("" when it records its catalog, certificate, history)."""
    with tempfile.TemporaryDirectory(prefix="eessi-reflog-") as tmp:
        path = Path(tmp) / "reflog.sqlite"
        path.write_bytes(data)
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                refs = {row[0] for row in db.execute("SELECT hash FROM refs")}
            finally:
                db.close()
        except sqlite3.Error as e:
            return f"is not a readable reflog database ({e})"
    wanted = {"root catalog": m.root_catalog, "certificate": m.certificate, "history": m.history}
    lost = [f"{what} {h}" for what, h in wanted.items() if h and h not in refs]
    return f"does not record the {', '.join(lost)}" if lost else ""
