"""Transactions of the embedded Stratum 0: catalog edits held in memory, then a commit that writes
catalogs bottom-up, history, meta-info, the reflog and the signed manifest last (see
:mod:`.repository` for the life cycle and :mod:`.ingest` for the tarball overlay)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import functools
import hashlib
import json
import logging
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import RepositoryError
from ..fileio import atomic_write
from .catalog import DIR_SIZE, CatalogDoc, Node, add_subtree, read_catalog, self_statistics, write_catalog
from .common import SUFFIX_CATALOG, SUFFIX_CERTIFICATE, SUFFIX_HISTORY, SUFFIX_METAINFO, parent_path
from .history import (
    REF_CATALOG,
    REF_CERTIFICATE,
    REF_HISTORY,
    REF_METAINFO,
    add_publish_tags,
    add_reflog_refs,
)
from .keys import sign_manifest_hash
from .manifest import Manifest, assemble_signed
from .objects import ObjectStore
from .paths import RepoPaths
from .tarcheck import CATALOG_MARKER

log = logging.getLogger(__name__)

DIRTAB_PATH = "/.cvmfsdirtab"

#: Test hook: called with a step name at each point of a publish (fault-injection tests kill there).
StepHook = Callable[[str], None]


class RepoHandle(Protocol):
    """What a transaction needs of its repository (``Repository`` is one; this module imports none)."""

    @property
    def paths(self) -> RepoPaths: ...

    @property
    def store(self) -> ObjectStore: ...


@dataclass(frozen=True, slots=True)
class PublishResult:
    name: str
    revision: int
    root_catalog: str
    catalogs_written: int
    objects_written: int
    files_added: int
    paths_deleted: int
    sha256: str = ""  # of the tarball's bytes as ingested (empty for a publish without a tarball)


@functools.lru_cache(maxsize=1024)
def _dirtab_components(pattern: str) -> tuple[str | re.Pattern[str], ...]:
    """A ``.cvmfsdirtab`` line as one matcher per path component: the text itself where it has no
    wildcard, else its compiled shell pattern (what :func:`fnmatch.fnmatchcase` compiles)."""
    return tuple(
        re.compile(fnmatch.translate(c)) if any(w in c for w in "*?[") else c
        for c in pattern.strip().rstrip("/").split("/")
    )


def dirtab_match(pattern: str, path: str) -> bool:
    """Component-wise shell-wildcard match of a ``.cvmfsdirtab`` line against a repository path."""
    want = _dirtab_components(pattern)
    have = path.split("/")
    if len(want) != len(have):
        return False
    for h, w in zip(have, want, strict=True):
        if h != w if isinstance(w, str) else w.match(h) is None:
            return False
    return True


def _within(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + "/")


@dataclass
class Transaction:
    """Changes to a repository held in memory until :meth:`commit` publishes them."""

    repo: RepoHandle
    base: Manifest | None
    now: dt.datetime
    hook: StepHook | None = None
    docs: dict[str, CatalogDoc] = field(default_factory=dict)
    loaded_hash: dict[str, str] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    files_added: int = 0
    paths_deleted: int = 0
    objects_at_start: int = -1
    implicit_dirs: set[str] = field(default_factory=set)
    restructured: set[str] = field(default_factory=set)  # catalogs whose set of nested catalogs changed
    new_dirs: set[str] = field(default_factory=set)
    published: bool = False  # the manifest of this transaction is in place
    # catalog_for's answers by path; forgotten whenever a nested catalog is made or removed
    _catalog_of: dict[str, CatalogDoc] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.objects_at_start = self.repo.store.new_objects

    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    @property
    def tmp(self) -> Path:
        self.repo.paths.tmp.mkdir(parents=True, exist_ok=True)
        return self.repo.paths.tmp

    # -- catalog navigation ----------------------------------------------------------------

    def _load(self, root: str, hex_hash: str) -> CatalogDoc:
        doc = read_catalog(self.repo.store.get(hex_hash, SUFFIX_CATALOG), self.tmp)
        self.docs[root] = doc
        self.loaded_hash[root] = hex_hash
        return doc

    def root_doc(self) -> CatalogDoc:
        if "" not in self.docs:
            if self.base is None:
                self.docs[""] = CatalogDoc(root="")
                self.dirty.add("")
            else:
                self._load("", self.base.root_catalog)
        return self.docs[""]

    def catalog_for(self, path: str) -> CatalogDoc:
        """The catalog that holds ``path`` (for a mountpoint: the nested catalog itself).

        A path lies in its parent directory's catalog unless it is a mountpoint listed there; the
        answer for each directory is remembered, so that a tarball's thousands of entries in one
        directory cost one lookup each, however many nested catalogs the repository has.
        """
        cache = self._catalog_of
        doc = cache.get(path)
        if doc is not None:
            return doc
        unknown: list[str] = []  # path and its ancestors without an answer yet, deepest first
        p = path
        while p and p not in cache:
            unknown.append(p)
            p = parent_path(p)
        doc = cache.get(p) or self.root_doc()
        cache[p] = doc
        for q in reversed(unknown):
            if q in doc.nested:
                doc = self.docs.get(q) or self._load(q, doc.nested[q][0])
            cache[q] = doc
        return doc

    def get(self, path: str) -> Node | None:
        return self.catalog_for(path).entries.get(path)

    def _touch(self, doc: CatalogDoc) -> None:
        self.dirty.add(doc.root)

    # -- edits ------------------------------------------------------------------------------

    def ensure_dir(self, path: str) -> None:
        """Make ``path`` and its missing parents directories (iteratively: depth never recurses)."""
        missing: list[str] = []
        while path:
            node = self.get(path)
            if node is not None:
                if not node.is_dir:
                    raise RepositoryError(
                        f"{path} is a {_kind(node)} in the repository, but a directory is needed there"
                    )
                break
            missing.append(path)
            path = parent_path(path)
        for p in reversed(missing):
            doc = self.catalog_for(p)
            doc.entries[p] = Node(
                name=p.rsplit("/", 1)[1],
                mode=stat.S_IFDIR | 0o755,
                mtime=int(self.now.timestamp()),
                size=DIR_SIZE,
            )
            self.implicit_dirs.add(p)
            self.new_dirs.add(p)
            self._touch(doc)

    def put(self, path: str, node: Node) -> None:
        self.ensure_dir(parent_path(path))
        existing = self.get(path)
        if existing is not None and not (existing.is_dir and node.is_dir):
            self.remove(path)
        doc = self.catalog_for(path)
        if existing is not None and existing.is_dir and node.is_dir:
            # An existing directory keeps its attributes (as cvmfs_server ingest does), unless this
            # transaction created it as a missing parent a moment ago.
            if path in self.implicit_dirs:
                existing.mode, existing.mtime = node.mode, node.mtime
                existing.uid, existing.gid = node.uid, node.gid
                self.implicit_dirs.discard(path)
        else:
            doc.entries[path] = node
            if node.is_dir:
                self.new_dirs.add(path)
        self._touch(doc)

    def remove(self, path: str, must_exist: bool = False) -> None:
        if path in ("", "/"):
            raise RepositoryError("refusing to delete the repository root")
        doc = self.catalog_for(path)
        if path not in doc.entries:
            if must_exist:
                raise RepositoryError(
                    f"cannot delete {path}: no such path in the repository; nothing was changed"
                )
            return
        self._catalog_of.clear()
        if doc.root == path:  # a nested catalog's mountpoint: drop the whole catalog
            parent = self.catalog_for(parent_path(path))
            parent.nested.pop(path, None)
            self.restructured.add(parent.root)
            parent.entries.pop(path, None)
            self._forget_docs_under(path)
            self._touch(parent)
        else:
            for p in [p for p in doc.entries if _within(p, path)]:
                del doc.entries[p]
            for mp in [mp for mp in doc.nested if _within(mp, path)]:
                del doc.nested[mp]
                self.restructured.add(doc.root)
                self._forget_docs_under(mp)
            self._touch(doc)
        self._catalog_of.clear()  # nested catalogs below path are gone
        self.paths_deleted += 1

    def _forget_docs_under(self, path: str) -> None:
        for root in [r for r in self.docs if r and _within(r, path)]:
            del self.docs[root]
            self.loaded_hash.pop(root, None)
            self.dirty.discard(root)

    def make_nested(self, path: str) -> None:
        """Make ``path`` (an existing directory) the root of a nested catalog."""
        parent = self.catalog_for(path)
        if parent.root == path:
            return
        node = parent.entries.get(path)
        if node is None or not node.is_dir:
            raise RepositoryError(f"cannot make a nested catalog at {path}: it is not a directory")
        child = CatalogDoc(root=path)
        self._catalog_of.clear()
        below = path + "/"
        for p in [p for p in parent.entries if p == path or p.startswith(below)]:
            child.entries[p] = parent.entries[p] if p != path else dataclasses.replace(node)
            if p != path:
                del parent.entries[p]
        for mp in [mp for mp in parent.nested if _within(mp, path)]:
            child.nested[mp] = parent.nested.pop(mp)
            self.restructured.add(parent.root)  # its subtree counters must be summed afresh
        node.nested_mountpoint = True
        child.entries[path].nested_mountpoint = True
        parent.nested[path] = ("", 0)  # filled in at commit
        self.docs[path] = child
        marker = f"{path}/{CATALOG_MARKER}"
        if (
            marker not in child.entries
        ):  # the real server keeps an empty .cvmfscatalog in every nested catalog
            empty = self.repo.store.put(b"")
            child.entries[marker] = Node(
                CATALOG_MARKER,
                stat.S_IFREG | 0o644,
                int(self.now.timestamp()),
                0,
                node.uid,
                node.gid,
                hash=empty,
            )
        self._touch(parent)
        self._touch(child)

    def read_file(self, path: str) -> bytes | None:
        node = self.get(path)
        if node is None or not node.is_regular:
            return None
        if node.hash:
            return self.repo.store.get(node.hash)
        return b"".join(self.repo.store.get(c.hash, "P") for c in node.chunks)

    def apply_dirtab(self, patterns: Sequence[str] | None = None) -> list[str]:
        """Nest every directory added in this transaction that a dirtab pattern matches.

        Patterns are absolute paths whose components may use shell wildcards (one component
        each); a leading ``!`` excludes.  Without ``patterns`` the repository's own
        ``/.cvmfsdirtab`` is used (no file: nothing to do).  Returns the new mountpoints.
        """
        if patterns is None:
            raw = self.read_file(DIRTAB_PATH)
            if raw is None:
                return []
            patterns = raw.decode("utf-8", "replace").splitlines()
        include = [p.strip() for p in patterns if p.strip() and not p.strip().startswith(("#", "!"))]
        exclude = [p.strip()[1:] for p in patterns if p.strip().startswith("!")]
        made = []
        depths = {len(_dirtab_components(p)) for p in include}  # a path of another depth matches none
        candidates = [p for p in self.new_dirs if p.count("/") + 1 in depths]
        for path in sorted(candidates, key=lambda p: (p.count("/"), p)):
            node = self.get(path)
            if node is None or not node.is_dir:
                continue
            if (
                any(dirtab_match(p, path) for p in include)
                and not any(dirtab_match(p, path) for p in exclude)
                and self.catalog_for(path).root != path
            ):
                self.make_nested(path)
                made.append(path)
        return made

    # -- commit ---------------------------------------------------------------------------

    def _fix_linkcounts(self, doc: CatalogDoc) -> None:
        subdirs: dict[str, int] = {}
        for p, n in doc.entries.items():
            if n.is_dir and p != doc.root:
                subdirs[parent_path(p)] = subdirs.get(parent_path(p), 0) + 1
        for p, n in doc.entries.items():
            if n.is_dir and (p == doc.root or p not in doc.nested):  # mountpoints mirror their catalog
                n.linkcount = 2 + subdirs.get(p, 0)
                n.size = DIR_SIZE

    def _stats_of(self, root: str, hex_hash: str, written: dict[str, dict[str, int]]) -> dict[str, int]:
        if root in written:
            return written[root]
        doc = self.docs.get(root) or self._load(root, hex_hash)
        return doc.statistics

    def commit(self) -> PublishResult:
        """Write dirty catalogs bottom-up, then history, reflog, and the signed manifest last."""
        store = self.repo.store
        paths = self.repo.paths
        ts = int(self.now.timestamp())
        # A changed catalog changes its hash, so every catalog above it changes too; the root catalog
        # is rewritten even when nothing changed (a new revision, as an empty cvmfs_server publish).
        self.root_doc()
        self.dirty.add("")
        for root in list(self.dirty):
            r = root
            while r:
                r = self.catalog_for(parent_path(r)).root
                self.dirty.add(r)
        written: dict[str, dict[str, int]] = {}
        catalogs_written = 0
        for root in sorted(self.dirty, key=lambda r: (-r.count("/"), r)):
            doc = self.docs[root]
            if root not in doc.entries:
                raise RepositoryError(f"internal error: catalog {root or '/'} lost its root entry")
            self._fix_linkcounts(doc)
            stats = self_statistics(doc)
            if root in self.loaded_hash and root not in self.restructured and doc.statistics:
                # Same nested catalogs as before: start from the subtree totals the catalog had and
                # apply what its rewritten children changed, without opening the unchanged ones.
                for counter in stats:
                    if counter.startswith("subtree_"):
                        stats[counter] = int(doc.statistics.get(counter, 0))
                for mp in doc.nested:
                    if mp in written:
                        _apply_child_change(stats, self.docs[mp].statistics, written[mp])
            else:
                for mp, (h, _size) in doc.nested.items():
                    add_subtree(stats, self._stats_of(mp, h, written))
            revision = int(doc.properties.get("revision", "0")) + 1
            if root == "":
                revision = (self.base.revision if self.base else 0) + 1
            props = dict(doc.properties)
            props.update({"revision": str(revision), "last_modified": str(ts)})
            # The catalog this one replaces; cvmfs writes 40 zeros for a new catalog.
            props["previous_revision"] = self.loaded_hash.get(root, "0" * 40)
            doc.properties = props
            data = write_catalog(doc, stats, self.tmp)
            h = store.put(data, SUFFIX_CATALOG)
            written[root] = stats
            catalogs_written += 1
            self._step(f"catalog {root or '/'}")
            if root:
                parent = self.catalog_for(parent_path(root))
                parent.nested[root] = (h, len(data))
                mirror = parent.entries[root]
                child_root = doc.entries[root]
                mirror.mode, mirror.mtime, mirror.linkcount = (
                    child_root.mode,
                    child_root.mtime,
                    child_root.linkcount,
                )
                mirror.uid, mirror.gid, mirror.nested_mountpoint = child_root.uid, child_root.gid, True
            else:
                root_hash, root_size = h, len(data)
        self._step("catalogs written")
        when = self.now
        revision = (self.base.revision if self.base else 0) + 1
        old_history = (
            store.get(self.base.history, SUFFIX_HISTORY) if self.base and self.base.history else None
        )
        history = add_publish_tags(
            old_history, paths.name, root_hash, root_size, revision, when,
            self.base.history if self.base else None, self.tmp,
        )  # fmt: skip
        history_hash = store.put(history, SUFFIX_HISTORY)
        cert_pem = paths.keys.certificate.read_bytes()
        cert_hash = store.put(cert_pem, SUFFIX_CERTIFICATE)
        meta_hash = store.put(_metainfo(paths.name), SUFFIX_METAINFO)
        self._step("history written")
        old_reflog = paths.reflog.read_bytes() if paths.reflog.exists() else None
        reflog = add_reflog_refs(
            old_reflog,
            paths.name,
            [
                (root_hash, REF_CATALOG),
                (cert_hash, REF_CERTIFICATE),
                (history_hash, REF_HISTORY),
                (meta_hash, REF_METAINFO),
            ],
            when,
            self.tmp,
        )
        manifest = Manifest(
            root_catalog=root_hash,
            root_catalog_size=root_size,
            revision=revision,
            name=paths.name,
            certificate=cert_hash,
            history=history_hash,
            timestamp=ts,
            metainfo=meta_hash,
            reflog=hashlib.sha1(reflog).hexdigest(),
        )
        body = manifest.body()
        signature = sign_manifest_hash(paths.keys.key, hashlib.sha1(body).hexdigest())
        signed = assemble_signed(body, signature)
        objects_written = store.new_objects - self.objects_at_start
        self._step("objects written")
        # The reflog must change with the manifest; keep the old one so an interrupted
        # publish can be repaired (Repository.repair_interrupted).
        if old_reflog is not None:
            atomic_write(paths.reflog_backup, old_reflog)
        atomic_write(paths.reflog, reflog)
        self._step("reflog written")
        atomic_write(paths.manifest, signed)
        self.published = True
        paths.reflog_backup.unlink(missing_ok=True)
        self._step("manifest written")
        log.info("published %s revision %d (%d catalogs)", paths.name, revision, catalogs_written)
        return PublishResult(
            paths.name,
            revision,
            root_hash,
            catalogs_written,
            objects_written,
            self.files_added,
            self.paths_deleted,
        )


def _apply_child_change(stats: dict[str, int], old: dict[str, int], new: dict[str, int]) -> None:
    """Move a parent's subtree counters by (new - old) of one child's self+subtree totals."""
    for counter in stats:
        if counter.startswith("subtree_"):
            base = counter[len("subtree_") :]
            before = int(old.get(f"self_{base}", 0)) + int(old.get(counter, 0))
            after = int(new.get(f"self_{base}", 0)) + int(new.get(counter, 0))
            stats[counter] += after - before


def _kind(node: Node) -> str:
    return "directory" if node.is_dir else "symlink" if node.is_symlink else "file"


def _metainfo(name: str) -> bytes:
    doc = {
        "administrator": "eessi-pipeline",
        "email": "root@localhost",
        "organisation": "eessi-pipeline",
        "description": f"{name}: an EESSI-style software stack published by eessi-pipeline",
        "url": "",
        "recommended-stratum0": f"http://127.0.0.1/cvmfs/{name}",
        "recommended-stratum1s": [],
        "custom": {},
    }
    return (json.dumps(doc, indent=2) + "\n").encode()
