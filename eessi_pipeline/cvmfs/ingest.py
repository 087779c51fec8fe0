"""Streaming ingest: one pass over a tarball checks, hashes and stores what it publishes.

The tarball is read once through :class:`.tarstream.TarballStream` (one ``open``; format from the
magic bytes; SHA-256 of the raw bytes; decompression in its own thread).  Each member header is
judged as it arrives — always by :func:`.tarcheck.basic_member_problems`, and with a
:class:`.tarcheck.CheckContext` by every EESSI rule of :mod:`.tarcheck` too — and its data flows
to a thread pool that compresses (zlib), hashes (SHA-1) and writes objects; zlib, hashlib and file
writes release the GIL, so the pool uses every core while this thread parses the next header.
Small files travel in batches (to worker processes, see :mod:`.objpool`); large files are cut into
chunks while they are read (:func:`.objects.first_cut_in`, over the pieces as they arrived: never
joined).  Finished results become catalog entries in archive order.

Memory is bounded by constants, not by the tarball: :data:`IN_FLIGHT_BYTES` (or
:data:`IN_FLIGHT_PER_WORKER` per worker, if more) of member data handed to workers and not yet
stored (plus their compressed output), one chunk being assembled (at most
the chunk maximum plus one :data:`.tarstream.BLOCK`), and the stream's queue
(``QUEUE_BLOCKS * BLOCK``).  What grows with the tarball is one catalog entry per member.

Symlinks are judged after the last member, by where they lead: each target is walked component by
component through the links of this tarball and of the repository's tree, and must end inside the
allowed area (the version directory with a check context, else the repository).  Any problem —
a member, a symlink, a SHA-256 other than the gate's — raises before the transaction commits.
"""

from __future__ import annotations

import functools
import gc
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RepositoryError, TarballRejected
from .catalog import DIR_SIZE, Node
from .common import SUFFIX_PARTIAL, parent_path
from .objects import Chunk, ObjectStore, Pieces, StoredFile, first_cut_in
from .objpool import BatchPool
from .tarcheck import (
    CATALOG_MARKER,
    COMPAT_HOST_FILES,
    CheckContext,
    Problem,
    TarballProblems,
    _Scanner,
    basic_member_problems,
    normalise_member_name,
    printable,
)
from .tarstream import BLOCK, StreamError, TarballStream

if TYPE_CHECKING:
    import tarfile

    from .transaction import Transaction

SMALL_FILE = 64 * 1024  # files up to this size travel to the workers in batches
BATCH_BYTES = 1 << 20  # a batch is handed over at this many bytes...
BATCH_FILES = 128  # ...or this many files
IN_FLIGHT_BYTES = 64 << 20  # member bytes handed to workers and not stored yet...
IN_FLIGHT_PER_WORKER = 8 << 20  # ...or this much per worker where that is more (9 or more cores)
WHOLE_MAX = 32 << 20  # unchunked files up to this size are one worker job; larger ones are streamed
#: Links followed before a walk gives up as a loop.  Linux follows at most 40 (ELOOP), so a chain that
#: needs more never resolves for anyone: it is harmless, and an escape within this many is refused.
MAX_SYMLINK_HOPS = 256
PROCESS_POOL_MIN = 8 << 20  # tarballs of this size or more store small files in worker processes
XATTR_PREFIX = "SCHILY.xattr."


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """How to overlay one tarball: at ``base`` ("/versions" or ""), with or without chunking, with the
    EESSI checks of ``check`` on the same stream, refusing bytes whose SHA-256 is not ``expected_sha256``."""

    base: str
    chunking: bool = True
    check: CheckContext | None = None
    expected_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class StreamResult:
    sha256: str
    members: int
    files: int
    bytes: int
    top_dir: str | None


def pack_xattrs(tarball: Path, member: tarfile.TarInfo) -> bytes | None:
    """A member's extended attributes (pax ``SCHILY.xattr.*``) in cvmfs's catalog blob: version 1,
    count, then per attribute a key length, a value length, key and value (one byte each for the lengths)."""
    if not member.pax_headers:
        return None
    attrs = sorted(
        (k[len(XATTR_PREFIX) :].encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for k, v in member.pax_headers.items()
        if k.startswith(XATTR_PREFIX)
    )
    if not attrs:
        return None
    too_long = [k.decode("utf-8", "replace") for k, v in attrs if len(k) > 255 or len(v) > 255]
    if too_long or len(attrs) > 255:
        raise RepositoryError(
            f"{tarball}: {member.name}: extended attributes {too_long or 'count'} exceed what a CVMFS "
            "catalog stores (255 attributes of at most 255-byte names and values); drop them when packing"
        )
    blob = bytes([1, len(attrs)])
    for k, v in attrs:
        blob += bytes([len(k), len(v)]) + k + v
    return blob


# -- the worker side --------------------------------------------------------------------------------


class _Budget:
    """Bytes handed to workers and not yet stored; the reader waits while the budget is spent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> int:
        n = min(n, self.limit)
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
        return n

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


@dataclass(eq=False)
class _File:
    """A regular file (or hard link) waiting for its objects; becomes a catalog entry when ready."""

    path: str
    info: tarfile.TarInfo
    size: int
    batch: Future[list[str]] | None = None
    index: int = 0
    chunks: list[tuple[int, int, Future[str]]] = field(default_factory=list)
    whole: Future[str] | None = None
    hash: str | None = None  # known at once (a streamed file)
    source: _File | None = None  # a hard link: the file it copies
    stored: StoredFile | None = None
    pending: bool = False  # in a batch not handed to the workers yet

    def ready(self) -> bool:
        if self.source is not None:
            return self.source.stored is not None
        if self.pending:
            return False
        if self.batch is not None:
            return self.batch.done()
        if self.whole is not None:
            return self.whole.done()
        return all(f.done() for _, _, f in self.chunks)

    def result(self) -> StoredFile:
        if self.source is not None:
            assert self.source.stored is not None
            return self.source.stored
        if self.batch is not None:
            return StoredFile(self.size, self.batch.result()[self.index])
        if self.whole is not None:
            return StoredFile(self.size, self.whole.result())
        if self.hash is not None:
            return StoredFile(self.size, self.hash)
        return StoredFile(self.size, None, tuple(Chunk(o, s, f.result()) for o, s, f in self.chunks))


class _Pipeline:
    """Hands file contents to the workers and turns finished files into entries, in archive order."""

    def __init__(self, txn: Transaction, tarball: Path, chunking: bool, processes: bool) -> None:
        self.txn = txn
        self.tarball = tarball
        self.store: ObjectStore = txn.repo.store
        self.chunking = chunking
        self.batches = BatchPool(self.store, self.store.workers) if processes else None
        self.pool = ThreadPoolExecutor(self.store.workers, thread_name_prefix="ingest-object")
        per_worker = IN_FLIGHT_PER_WORKER * self.store.workers  # keep every worker fed on many cores
        self.budget = _Budget(max(IN_FLIGHT_BYTES, per_worker, self.store.chunk_sizes[2]))
        self.waiting: deque[_File] = deque()
        self.batch: list[tuple[_File, bytes]] = []
        self.batch_bytes = 0
        self.files = 0
        self.bytes = 0

    def _submit(self, fn: Callable[[], str], n: int) -> Future[str]:
        taken = self.budget.take(n)
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _f: self.budget.give(taken))
        return fut

    def _flush_batch(self) -> None:
        if not self.batch:
            return
        blobs = [b for _, b in self.batch]
        taken = self.budget.take(self.batch_bytes)
        store = self.store
        fut: Future[list[str]]
        if self.batches is not None:  # no GIL to share: see objpool
            fut = self.batches.submit(blobs, lambda: self.budget.give(taken))
        else:
            fut = self.pool.submit(lambda: [store.put(b) for b in blobs])
            fut.add_done_callback(lambda _f: self.budget.give(taken))
        for i, (f, _) in enumerate(self.batch):
            f.batch, f.index, f.pending = fut, i, False
        self.batch, self.batch_bytes = [], 0

    def add_file(self, path: str, info: tarfile.TarInfo, stream: TarballStream) -> _File:
        f = _File(path, info, info.size)
        self.waiting.append(f)
        self.files += 1
        self.bytes += info.size
        lo = self.store.chunk_sizes[0]
        store = self.store
        if info.size <= SMALL_FILE:
            data = _read_all(stream, info.size)
            f.pending = True
            self.batch.append((f, data))
            self.batch_bytes += len(data)
            if self.batch_bytes >= BATCH_BYTES or len(self.batch) >= BATCH_FILES:
                self._flush_batch()
        elif not self.chunking or info.size <= lo:
            if info.size <= WHOLE_MAX:  # one job, fed to zlib piece by piece: never joined
                parts = stream.read_data_parts()
                f.whole = self._submit(functools.partial(store.put_pieces, parts), info.size)
            else:
                f.hash = store.put_stream(iter(lambda: stream.read_data(BLOCK), b""))
        else:
            self._add_chunked(f, stream)
        return f

    def _add_chunked(self, f: _File, stream: TarballStream) -> None:
        """Cut a file above the chunk minimum while it is read: its pieces are searched for cuts
        where they lie, and each chunk goes to a worker as views of them (no copy).  A file up to the
        chunk maximum is read at once (its first cut needs all of it anyway); a larger one a block at
        a time, holding about one chunk."""
        lo, avg, hi = self.store.chunk_sizes
        pieces = Pieces()
        begin = 0
        while True:
            for part in stream.read_data_parts(None if f.size <= hi else BLOCK):
                pieces.append(part)
            final = stream.data_left == 0
            while (cut := first_cut_in(pieces, begin, lo, avg, hi, final)) is not None:
                end = begin + cut
                last = final and end >= len(pieces)
                views = pieces.views(begin, end)
                if last and not f.chunks:
                    f.whole = self._submit(functools.partial(self.store.put_pieces, views), end)
                elif end > begin:
                    job = functools.partial(self.store.put_pieces, views, SUFFIX_PARTIAL)
                    f.chunks.append((begin, end - begin, self._submit(job, end - begin)))
                begin = end
                if last:
                    break
            pieces.drop_before(begin)
            if final:
                return

    def add_link(self, path: str, info: tarfile.TarInfo, source: _File) -> None:
        self.waiting.append(_File(path, info, source.size, source=source))
        self.files += 1

    def collect(self, wait: bool = False) -> None:
        """Turn finished files into catalog entries (all of them with ``wait``)."""
        if wait:
            self._flush_batch()
        while self.waiting and (wait or self.waiting[0].ready()):
            f = self.waiting.popleft()
            if f.source is None and not f.ready():
                for fut in [f.batch, f.whole, *(c[2] for c in f.chunks)]:
                    if fut is not None:
                        fut.result()
            f.stored = f.result()
            m = f.info
            mode = stat.S_IFREG | (m.mode & 0o7777)
            node = Node(
                f.path.rsplit("/", 1)[-1], mode, int(m.mtime), f.size, m.uid, m.gid,
                hash=f.stored.hash, chunks=f.stored.chunks, xattr=pack_xattrs(self.tarball, m),
            )  # fmt: skip
            self.txn.put(f.path, node)
            self.txn.files_added += 1

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.batches is not None:
            self.batches.close()


def _read_all(stream: TarballStream, size: int) -> bytes:
    data = stream.read_data(size)
    if len(data) != size:
        raise StreamError("internal: short member read")
    return data


# -- the reading side -------------------------------------------------------------------------------


class _Members:
    """What :func:`overlay_stream` keeps while it reads: the judge of each member, the problems found,
    and what the members that passed leave for after the read (hard-link targets, symlinks, nested
    catalog markers)."""

    def __init__(self, txn: Transaction, base: str, check: CheckContext | None, pipeline: _Pipeline) -> None:
        self.txn = txn
        self.base = base
        self.pipeline = pipeline
        self.scanner = _Scanner(check) if check is not None else None
        self.problems: list[Problem] = []
        self.regular: dict[str, _File] = {}  # hard-link targets: earlier regular files without problems
        self.symlinks: list[tuple[str, str, list[str]]] = []
        self.nested_at: list[str] = []

    def accepts(self, info: tarfile.TarInfo) -> bool:
        """Judge ``info``; True when it is to be stored (neither it nor any member before has a problem)."""
        if self.scanner is not None:
            before = len(self.scanner.problems)
            self.scanner.add(info)
            bad = len(self.scanner.problems) > before
        else:
            reasons = basic_member_problems(info, self.regular.keys())
            self.problems.extend(Problem(info.name, r) for r in reasons)
            bad = bool(reasons)
        return not (bad or self.problems or (self.scanner is not None and self.scanner.problems))

    def store(self, info: tarfile.TarInfo, stream: TarballStream) -> None:
        """Put an accepted member into the transaction (a regular file's data through the pipeline)."""
        txn = self.txn
        rel = normalise_member_name(info.name)
        path = f"{self.base}/{rel}"
        name = rel.rsplit("/", 1)[-1]
        if info.isdir():
            mode = stat.S_IFDIR | (info.mode & 0o7777)
            txn.put(path, Node(name, mode, int(info.mtime), DIR_SIZE, info.uid, info.gid))
        elif info.issym():
            node = Node(name, stat.S_IFLNK | 0o777, int(info.mtime), 0, info.uid, info.gid)
            node.symlink = info.linkname
            txn.put(path, node)
            self.symlinks.append((path, info.linkname, rel.split("/")))
        elif info.islnk():
            self.pipeline.add_link(path, info, self.regular[normalise_member_name(info.linkname)])
        else:
            self.regular[rel] = self.pipeline.add_file(path, info, stream)
            if name == CATALOG_MARKER:
                self.nested_at.append(parent_path(path))
        self.pipeline.collect()

    def note(self, problem: Problem) -> None:
        """A problem of the archive as a whole (found when the read ends)."""
        if self.scanner is not None:
            self.scanner.note(problem)
        else:
            self.problems.append(problem)

    def top(self, shown: str) -> str | None:
        """The tarball's top-level directory (None unchecked); TarballProblems when anything was wrong."""
        top = None
        if self.scanner is not None:
            result = self.scanner.result()
            self.problems.extend(result.problems)
            top = result.top_dir
        if self.problems:
            raise TarballProblems(shown, self.problems)
        return top


def overlay_stream(txn: Transaction, tarball: Path, opts: IngestOptions) -> StreamResult:
    """Overlay the members of ``tarball`` at ``opts.base`` in ``txn`` in one pass (see the module doc)."""
    shown = tarball.name
    base = opts.base
    try:
        processes = txn.repo.store.workers > 1 and tarball.stat().st_size >= PROCESS_POOL_MIN
    except OSError:
        processes = False  # TarballStream says why
    pipeline = _Pipeline(txn, tarball, opts.chunking, processes)
    members = _Members(txn, base, opts.check, pipeline)
    collecting = gc.isenabled()
    gc.disable()  # a header, an entry and a few futures per member, no cycles: nothing to collect
    try:
        with TarballStream(tarball, shown) as stream:
            txn._step("tarball opened")
            for info in stream.members():
                if members.accepts(
                    info
                ):  # else keep reading: every problem is reported, nothing more is stored
                    members.store(info, stream)
            for p in stream.finish():
                members.note(Problem(p.member, p.reason))
            sha256 = stream.sha256
        pipeline.collect(wait=True)
    except StreamError as e:
        kind = tarball.name.rsplit(".tar", 1)[-1].lstrip(".") or "tar"
        raise TarballRejected(
            f"{shown}: cannot be read as a {kind} archive ({e}); check the upload and re-create the tarball"
        ) from e
    finally:
        pipeline.close()
        if collecting:
            gc.enable()
    txn._step("tarball read")
    if opts.expected_sha256 is not None and sha256 != opts.expected_sha256.lower():
        raise TarballRejected(
            f"{shown}: its bytes have SHA-256 {sha256}, not {opts.expected_sha256} as its gate record says; "
            "the file changed after it was tested: nothing was published, stage the tested tarball again"
        )
    top = members.top(shown)
    area = f"{base}/{top}" if top else ""
    link_problems = symlink_problems(txn, members.symlinks, area, opts.check)
    if link_problems:
        raise TarballProblems(shown, link_problems)
    for mp in sorted(set(members.nested_at)):
        txn.make_nested(mp)
    return StreamResult(sha256, stream.count, pipeline.files, pipeline.bytes, top)


# -- symlinks, judged by where they lead --------------------------------------------------------------


class _Escape(Exception):
    pass


def _host_link_allowed(target: str, rel: list[str], check: CheckContext | None) -> bool:
    """A compatibility layer's link to a host file it must take from the host (see tarcheck)."""
    if target not in COMPAT_HOST_FILES or len(rel) < 3 or rel[-2] != "etc":
        return False
    if check is not None:
        return check.name.content_type == "compat" and len(rel) == 6 and rel[1] == "compat"
    return len(rel) >= 5 and rel[-5] == "compat"


def resolve_link(
    txn: Transaction, link_path: str, target: str, check: CheckContext | None = None
) -> str | None:
    """Where the symlink at ``link_path`` leads inside the repository, following every link on the
    way (this transaction's view: the tarball over the published tree); None for a loop, which leads
    nowhere.  Raises _Escape when the walk leaves the repository.

    A chain that ends at a compatibility layer's allowed host link (Debian's
    ``usr/share/zoneinfo/localtime -> ../../../etc/localtime``, where ``etc/localtime`` is the layer's
    link to the host's file) ends at that link: it is as safe as the host link itself."""
    prefix = f"/cvmfs/{txn.repo.paths.name}"
    parts = link_path.split("/")[1:-1]
    todo: list[str] = []
    hops = 0

    def expand(t: str) -> None:
        nonlocal parts
        if t.startswith("/"):
            if t != prefix and not t.startswith(prefix + "/"):
                raise _Escape(f"leads to {printable(t)!r}, outside {prefix}")
            parts = []
            t = t[len(prefix) :]
        todo.extend(reversed([c for c in t.split("/") if c not in ("", ".")]))

    expand(target)
    while todo:
        c = todo.pop()
        if c == "..":
            if not parts:
                raise _Escape("climbs above the repository root")
            parts.pop()
            continue
        parts.append(c)
        node = txn.get("/" + "/".join(parts))
        if node is not None and node.is_symlink:
            if parts[:1] == ["versions"] and _host_link_allowed(node.symlink, parts[1:], check):
                if todo:
                    raise _Escape(f"passes through the host link {'/'.join(parts)}")
                return "/" + "/".join(parts)
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None  # a loop: it leads nowhere
            parts.pop()
            expand(node.symlink)
    return "/" + "/".join(parts)


def symlink_problems(
    txn: Transaction, links: list[tuple[str, str, list[str]]], area: str, check: CheckContext | None
) -> list[Problem]:
    """Each link of the tarball whose resolution leaves ``area`` (a repository path; "" = the whole
    repository).  ``links``: (repository path, target, member path components)."""
    problems = []
    for path, target, rel in links:
        if _host_link_allowed(target, rel, check):
            continue
        member = "/".join(rel)
        try:
            resolved = resolve_link(txn, path, target, check)
        except _Escape as e:
            problems.append(Problem(member, f"symlink target {printable(target)!r} {e}"))
            continue
        if resolved is not None and area and resolved != area and not resolved.startswith(area + "/"):
            problems.append(
                Problem(
                    member,
                    f"symlink target {printable(target)!r} resolves (through the links on its way) to "
                    f"{printable(resolved)!r}, outside {area}",
                )
            )
    return problems
