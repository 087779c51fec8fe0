"""Verify a whole repository: the chain of trust (whitelist, certificate, manifest signature), every
catalog (nested links, statistics counters, the tree's consistency) and every object, naming the first
broken thing.  :meth:`.reader.RepositoryReader.verify` runs :func:`verify`.

Moved here from :mod:`.reader`, which still exports :class:`VerifyReport`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import RepositoryError
from .common import (
    FLAG_DIR,
    FLAG_FILE_CHUNK,
    FLAG_FILE_EXTERNAL,
    FLAG_LINK,
    FLAG_NESTED_MOUNTPOINT,
    FLAG_NESTED_ROOT,
    STATISTICS_COUNTERS,
    SUFFIX_CERTIFICATE,
    SUFFIX_METAINFO,
    SUFFIX_PARTIAL,
    md5path,
    object_path,
)
from .manifest import Manifest, SignedText
from .readmodel import MANIFEST_NAME, REFLOG_NAME, WHITELIST_NAME, Entry, LoadedCatalog, NestedRef, norm_path
from .sources import Source
from .verify import certificate_fingerprint, verify_manifest_signature, verify_whitelist_signature
from .whitelist import Whitelist


class RepositoryReader(Protocol):
    """What verification needs of a reader (``reader.RepositoryReader`` is one; this module imports
    none of it, so the two do not import each other)."""

    source: Source
    manifest: Manifest
    manifest_signed: SignedText
    whitelist: Whitelist
    whitelist_signed: SignedText
    master_public_key_pem: bytes | None
    now: dt.datetime | None

    def fetch_object(
        self, hex_hash: str, suffix: str = "", compressed: bool = True, size: int | None = None
    ) -> bytes: ...

    def load_catalog(self, hex_hash: str, prefix: str, expected_size: int | None = None) -> LoadedCatalog: ...

    def root_catalog(self) -> LoadedCatalog: ...

    def lookup(self, path: str) -> Entry | None: ...

    def tags(self) -> list[Any]: ...

    def walk(self) -> Iterator[Entry]: ...


__all__ = ["VerifyReport", "check_signatures", "verify"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    revision: int
    catalogs: int  # catalogs checked (root and every nested one)
    objects: int  # distinct data objects (whole files and chunks) fetched and checked
    entries: int  # distinct paths of the tree, the root included
    warnings: tuple[str, ...] = ()  # findings that do not make the revision unusable


_SELF_CHECKED = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks", "file_size", "chunked_size",
    "external", "external_file_size",
)  # fmt: skip
_COUNTER_NAMES = tuple(c.removeprefix("self_") for c in STATISTICS_COUNTERS if c.startswith("self_"))


def check_signatures(reader: RepositoryReader) -> None:
    """The manifest ensemble: whitelist (signature, name, expiry, fingerprint) and manifest signature."""
    m, wl = reader.manifest, reader.whitelist
    if reader.master_public_key_pem is not None:
        verify_whitelist_signature(reader.whitelist_signed, reader.master_public_key_pem)
    if wl.name != m.name:
        raise RepositoryError(
            f"{WHITELIST_NAME}: names repository {wl.name!r}, but {MANIFEST_NAME} N is {m.name!r}"
        )
    now = reader.now or dt.datetime.now(dt.UTC)
    if wl.expired(now):
        raise RepositoryError(
            f"{WHITELIST_NAME}: expired at {wl.expires:%Y-%m-%d %H:%M:%S} UTC (now {now:%Y-%m-%d %H:%M} "
            "UTC); re-sign it with the master key (cvmfs_server resign)"
        )
    if not m.certificate:
        raise RepositoryError(f"{MANIFEST_NAME}: no X key, so no certificate to verify the signature with")
    cert_pem = reader.fetch_object(m.certificate, SUFFIX_CERTIFICATE)
    fpr = certificate_fingerprint(cert_pem)
    if fpr not in {f.upper() for f in wl.fingerprints}:
        raise RepositoryError(
            f"{object_path(m.certificate, SUFFIX_CERTIFICATE)}: certificate fingerprint {fpr} is not "
            f"listed in {WHITELIST_NAME}"
        )
    verify_manifest_signature(reader.manifest_signed, cert_pem)


def verify(reader: RepositoryReader) -> VerifyReport:
    """Check everything; RepositoryError names the first broken thing."""
    check_signatures(reader)
    m = reader.manifest
    root = reader.root_catalog()
    props = _properties(root)
    if "root_prefix" in props:
        raise RepositoryError(f"{root.label}: has a root_prefix property; it is a nested catalog")
    if props.get("revision") != str(m.revision):
        raise RepositoryError(
            f"{root.label}: revision property is {props.get('revision')!r}, "
            f"but {MANIFEST_NAME} S is {m.revision}"
        )
    top = reader.lookup("")
    if top is None or not top.is_dir:
        raise RepositoryError(f"{root.label}: no root directory entry")

    catalogs = _verify_catalogs(reader, root)
    objects, entries = _verify_tree(reader, catalogs)

    warnings: list[str] = []
    if m.reflog:
        data = reader.source.fetch(REFLOG_NAME)
        actual = hashlib.sha1(data).hexdigest()
        if actual != m.reflog:
            # The reflog is renamed into place just before the manifest, so a publish
            # interrupted between the two leaves it one step ahead.  That is harmless (clients
            # never read it) as long as it still records this revision's objects; the next
            # publish repairs it.  A reflog that lost them is an error.
            missing = _reflog_missing(data, m)
            if missing:
                raise RepositoryError(
                    f"{REFLOG_NAME}: SHA-1 is {actual}, but {MANIFEST_NAME} Y is {m.reflog}, and it {missing}"
                )
            warnings.append(
                f"{REFLOG_NAME}: SHA-1 is {actual}, not {MANIFEST_NAME} Y ({m.reflog}); it still records "
                "this revision (an interrupted publish leaves it so; the next publish repairs it)"
            )
    if m.history:
        reader.tags()
    if m.metainfo:
        reader.fetch_object(m.metainfo, SUFFIX_METAINFO)
    return VerifyReport(
        revision=m.revision,
        catalogs=len(catalogs),
        objects=objects,
        entries=entries,
        warnings=tuple(warnings),
    )


def _verify_catalogs(reader: RepositoryReader, root: LoadedCatalog) -> list[LoadedCatalog]:
    """Every catalog, parents before children: nested links and self_* counters first, then the
    subtree_* sums (so a child's own wrong counter is named before its parent's sum)."""
    done: list[tuple[LoadedCatalog, list[LoadedCatalog]]] = []
    queue = [root]
    while queue:
        cat = queue.pop(0)
        children = [_verify_nested_link(reader, cat, ref) for ref in cat.nested]
        _check_self_statistics(cat)
        done.append((cat, children))
        queue.extend(children)
    for cat, children in done:
        _check_subtree_statistics(cat, children)
    return [cat for cat, _ in done]


def _verify_nested_link(reader: RepositoryReader, parent: LoadedCatalog, ref: NestedRef) -> LoadedCatalog:
    if ref.path != norm_path(ref.path) or not ref.path:
        raise RepositoryError(f"{parent.label}: nested_catalogs path {ref.path!r} is not an absolute path")
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
    child = reader.load_catalog(ref.hash, ref.path, ref.size)
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


def _verify_tree(reader: RepositoryReader, catalogs: list[LoadedCatalog]) -> tuple[int, int]:
    """Walk the tree (entry consistency), then fetch every distinct data object."""
    wanted: dict[tuple[str, str], tuple[int, bool, str]] = {}  # (hash, suffix) -> (size, compressed, path)
    count = 0
    for e in reader.walk():
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
                _want(wanted, (c.hash, SUFFIX_PARTIAL), (c.size, e.compressed, e.path))
        elif e.hash is not None:
            _want(wanted, (e.hash, ""), (e.size, e.compressed, e.path))
        else:
            raise RepositoryError(f"{e.path}: a regular file with neither a content hash nor chunks")
    rows = sum(int(c.conn.execute("SELECT count(*) FROM catalog").fetchone()[0]) for c in catalogs)
    expected_rows = count + len(catalogs) - 1  # each mountpoint appears in parent and child
    if rows != expected_rows:
        raise RepositoryError(
            f"catalogs of {reader.manifest.name}: {rows - expected_rows} catalog row(s) are not reachable "
            "from the root (wrong parent hash, or entries left in a parent below a nested mountpoint)"
        )
    for (h, suffix), (size, compressed, path) in wanted.items():
        data = reader.fetch_object(h, suffix, compressed)
        if len(data) != size:
            raise RepositoryError(
                f"{object_path(h, suffix)}: inflates to {len(data)} bytes, but {path} says {size}"
            )
    return len(wanted), count


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


def _properties(cat: LoadedCatalog) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in cat.conn.execute("SELECT key, value FROM properties")}
    except sqlite3.DatabaseError as e:
        raise RepositoryError(f"{cat.label}: no readable 'properties' table ({e})") from e


def _statistics(cat: LoadedCatalog) -> dict[str, int]:
    try:
        stats = {str(k): int(v) for k, v in cat.conn.execute("SELECT counter, value FROM statistics")}
    except sqlite3.DatabaseError as e:
        raise RepositoryError(f"{cat.label}: no readable 'statistics' table ({e})") from e
    missing = [c for c in STATISTICS_COUNTERS if c not in stats]
    if missing:
        raise RepositoryError(f"{cat.label}: statistics counter(s) missing: {', '.join(missing)}")
    return stats


def _count_self(cat: LoadedCatalog) -> dict[str, int]:
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


def _check_self_statistics(cat: LoadedCatalog) -> None:
    stats = _statistics(cat)
    counted = _count_self(cat)
    for name in _SELF_CHECKED:
        if stats[f"self_{name}"] != counted[name]:
            raise RepositoryError(
                f"{cat.label}: statistics counter self_{name} is {stats[f'self_{name}']}, "
                f"but the catalog's rows give {counted[name]}"
            )


def _check_subtree_statistics(cat: LoadedCatalog, children: list[LoadedCatalog]) -> None:
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
