"""Content-addressed storage: zlib-compressed objects named by the SHA-1 of the compressed bytes.

Objects live at ``data/XX/<rest><suffix>``.  An object gets its name only once it is complete
(an unnamed file linked into place, or a temporary one renamed), so a reader never sees half an
object.  Files above the chunking minimum are cut with cvmfs's xor32 rolling checksum and stored
as ``P`` objects.  Compression and hashing run in a thread pool (zlib and hashlib release the GIL
on large buffers), so all cores work.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# numpy's BLAS never runs here (only elementwise integer operations), yet OpenBLAS starts a thread
# per core at import that spins for a while: about 0.1 s of a core stolen from each ingest.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:  # optional: chunk_boundaries vectorises its rolling checksum with it
    import numpy as np
except ImportError:  # pragma: no cover - the pure loop is used instead
    np = None  # type: ignore[assignment]

from ..errors import RepositoryError
from .common import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, SUFFIX_PARTIAL, object_path

ZLIB_LEVEL = 6  # zlib's Z_DEFAULT_COMPRESSION, what cvmfs uses


def compress(data: bytes | memoryview) -> bytes:
    return zlib.compress(data, ZLIB_LEVEL)


def content_hash(compressed: bytes) -> str:
    return hashlib.sha1(compressed).hexdigest()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a chunked file: an uncompressed byte range and its ``…P`` object."""

    offset: int
    size: int
    hash: str


@dataclass(frozen=True, slots=True)
class StoredFile:
    """How one regular file's content was stored: one object, or chunks (hash None)."""

    size: int
    hash: str | None
    chunks: tuple[Chunk, ...] = ()


def chunk_boundaries_pure(
    data: bytes, minimum: int = CHUNK_MIN, average: int = CHUNK_AVG, maximum: int = CHUNK_MAX
) -> list[int]:
    """End offsets of the chunks of ``data`` by cvmfs's xor32 rule; ``[len(data)]`` means one piece.

    The rolling value over the last 32 bytes is ``x = (x << 1) ^ byte`` (32 bits);
    a cut follows the byte where ``|int32(x) - 0x7FFFFFFF| < 0xFFFFFFFF // average``;
    no cut before ``minimum`` bytes, a forced cut at ``maximum``.  This byte loop is the
    reference; :func:`chunk_boundaries` gives the same answer faster.
    """
    n = len(data)
    if n <= minimum:
        return [n]
    threshold = 0xFFFFFFFF // average

    def cut_after(start: int, limit: int) -> int:
        x = 0
        for i in range(start + minimum - 32, limit):
            x = ((x << 1) ^ data[i]) & 0xFFFFFFFF
            if i + 1 >= start + minimum:
                signed = x - 0x100000000 if x & 0x80000000 else x
                if abs(signed - 0x7FFFFFFF) < threshold:
                    return i + 1
        return limit

    return _cuts(n, minimum, maximum, cut_after)


def _cuts(n: int, minimum: int, maximum: int, cut_after: Callable[[int, int], int]) -> list[int]:
    """The end offsets of the chunks of ``n`` bytes: from each chunk's start, ``cut_after(start,
    limit)`` says where the chunk ends (``limit``, ``maximum`` bytes on or the end of the data, when
    no byte qualifies); the rest makes one last chunk once no more than ``minimum`` bytes remain."""
    cuts: list[int] = []
    start = 0
    while n - start > minimum:
        cut = cut_after(start, min(start + maximum, n))
        if cut >= n:
            break
        cuts.append(cut)
        start = cut
    cuts.append(n)
    return cuts


_XOR32_BLOCK = 64 * 1024  # bytes per vectorised block: its uint32 arrays stay in the CPU's cache


def _xor32_candidates(data: bytes | bytearray | memoryview, threshold: int, begin: int = 0) -> list[int]:
    """Every index ``i >= begin`` where the full 32-byte xor32 value ends a chunk, ascending.

    The value at ``i`` is ``XOR over k < 32 of (data[i-k] << k)`` (32 bits), built by doubling:
    the span-``2m`` value is the span-``m`` value XOR the span-``m`` value ``m`` bytes earlier
    shifted by ``m``.  The cut test ``|int32(x) - 0x7FFFFFFF| < threshold`` is, for 32-bit
    ``x``, ``0x7FFFFFFF - threshold < x <= 0x7FFFFFFF`` read unsigned.  Blocks are small and
    worked in place so that the arrays stay in cache.
    """
    lo = max(0, 0x7FFFFFFF - threshold) + 1  # x - lo (wrapping) < width  <=>  lo <= x <= 0x7FFFFFFF
    offset, width = np.uint32(lo), np.uint32(0x7FFFFFFF - lo + 1)
    buf = np.frombuffer(data, dtype=np.uint8)
    x = np.empty(_XOR32_BLOCK + 31, dtype=np.uint32)
    shifted = np.empty(_XOR32_BLOCK + 31, dtype=np.uint32)
    found: list[int] = []
    for block_start in range(begin, len(buf), _XOR32_BLOCK):
        first = max(0, block_start - 31)  # 31 bytes of history before the block
        segment = buf[first : block_start + _XOR32_BLOCK]
        n = len(segment)
        xv = x[:n]
        xv[:] = segment
        span = 1
        while span < 32:
            np.left_shift(xv[: n - span], span, out=shifted[: n - span])
            np.bitwise_xor(xv[span:], shifted[: n - span], out=xv[span:])  # shifted is a copy: no aliasing
            span *= 2
        np.subtract(xv, offset, out=xv)
        hits = np.flatnonzero(xv < width) + first
        found.extend(hits[hits >= block_start].tolist())
    return found


def chunk_boundaries(
    data: bytes, minimum: int = CHUNK_MIN, average: int = CHUNK_AVG, maximum: int = CHUNK_MAX
) -> list[int]:
    """What :func:`chunk_boundaries_pure` returns, vectorised with numpy when it is installed.

    Every position the rule tests lies at least 31 bytes past the chunk's scan start, so its
    rolling value covers a full 32-byte window and does not depend on where the chunk began:
    the candidates are found once over all of ``data``, and each chunk takes the first one in
    its range.  Parameters the shortcut does not cover (``minimum`` under 32, ``maximum``
    under ``minimum``, ``average`` under 2) use the byte loop.
    """
    n = len(data)
    if n <= minimum:
        return [n]
    if np is None or minimum < 32 or maximum < minimum or average < 2:
        return chunk_boundaries_pure(data, minimum, average, maximum)
    candidates = _xor32_candidates(data, 0xFFFFFFFF // average)

    def cut_after(start: int, limit: int) -> int:
        k = bisect.bisect_left(candidates, start + minimum - 1)
        return candidates[k] + 1 if k < len(candidates) and candidates[k] < limit else limit

    return _cuts(n, minimum, maximum, cut_after)


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` and cgroup cpusets included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def first_cut(
    data: bytes | bytearray | memoryview, minimum: int, average: int, maximum: int, final: bool
) -> int | None:
    """Where the chunk that starts at ``data[0]`` ends by the xor32 rule, so that a file can be cut
    while it is read; ``len(data)`` when (``final``: ``data`` is the rest of the file) the rest is one
    piece; None while fewer than ``maximum + 1`` bytes are buffered and more will follow.

    Applied chunk after chunk it gives what :func:`chunk_boundaries` gives for the whole file; the
    search starts at ``minimum - 1`` and stops at the first candidate, so every byte is scanned once.
    """
    n = len(data)
    if not final and n <= maximum:
        return None
    if n <= minimum:
        return n
    limit = min(maximum, n)
    threshold = 0xFFFFFFFF // average
    if np is None or minimum < 32 or maximum < minimum or average < 2:
        x = 0
        for i in range(max(0, minimum - 32), limit):
            x = ((x << 1) ^ data[i]) & 0xFFFFFFFF
            if i + 1 >= minimum:
                signed = x - 0x100000000 if x & 0x80000000 else x
                if abs(signed - 0x7FFFFFFF) < threshold:
                    return i + 1
        return limit
    start = minimum - 1
    while start < limit:
        stop = min(limit, start + _CUT_BLOCK)
        hits = _xor32_candidates(memoryview(data)[:stop], threshold, start)
        if hits:
            return hits[0] + 1
        start = stop
    return limit


_CUT_BLOCK = 256 * 1024


class Pieces:
    """A file's bytes as the pieces they were read in, never joined: cuts are searched across them
    and chunks handed on as views.  Offsets count from the file's start; :meth:`drop_before` forgets
    the pieces wholly before an offset (a file read while it is cut holds about one chunk)."""

    def __init__(self, parts: Iterable[bytes] = ()) -> None:
        self._parts: list[memoryview] = []
        self._starts: list[int] = []  # offset of each piece
        self._first = 0  # pieces dropped so far (their offsets stay counted)
        self.size = 0
        for part in parts:
            self.append(part)

    def __len__(self) -> int:
        return self.size

    def append(self, part: bytes | memoryview) -> None:
        if len(part):
            self._parts.append(memoryview(part).cast("B"))
            self._starts.append(self.size)
            self.size += len(part)

    def _index(self, pos: int) -> int:
        """The piece holding offset ``pos`` (which must be held)."""
        return bisect.bisect_right(self._starts, pos, self._first) - 1

    def views(self, a: int, b: int) -> list[memoryview]:
        """Views covering ``[a, b)``, in order (nothing copied)."""
        out = []
        i = self._index(a)
        while a < b:
            start = self._starts[i]
            part = self._parts[i]
            stop = min(b, start + len(part))
            out.append(part[a - start : stop - start])
            a = stop
            i += 1
        return out

    def contiguous(self, a: int, b: int) -> bytes | memoryview:
        """``[a, b)`` as one buffer: a view inside one piece, else a copy of just that range."""
        views = self.views(a, b)
        return views[0] if len(views) == 1 else b"".join(views)

    def piece_span(self, pos: int) -> tuple[int, int]:
        """Start and end offset of the piece holding ``pos``."""
        i = self._index(pos)
        return self._starts[i], self._starts[i] + len(self._parts[i])

    def drop_before(self, pos: int) -> None:
        parts, i = self._parts, self._first
        while i < len(parts) and self._starts[i] + len(parts[i]) <= pos:
            parts[i] = memoryview(b"")  # released; its start stays for the offsets after it
            i += 1
        self._first = i


def first_cut_in(
    pieces: Pieces, begin: int, minimum: int, average: int, maximum: int, final: bool
) -> int | None:
    """:func:`first_cut` of the bytes of ``pieces`` from offset ``begin`` on, without joining them:
    each search window lies inside one piece (a window that would need the end of the piece before
    for its 31 bytes of history is kept short and copied)."""
    n = len(pieces) - begin
    if not final and n <= maximum:
        return None
    if n <= minimum:
        return n
    limit = min(maximum, n)
    if np is None or minimum < 32 or maximum < minimum or average < 2:
        return first_cut(pieces.contiguous(begin, begin + limit), minimum, average, maximum, True)
    threshold = 0xFFFFFFFF // average
    start = minimum - 1  # relative to begin; the rule looks 31 bytes back from each position
    while start < limit:
        at = begin + start
        piece_start, piece_end = pieces.piece_span(at)
        if at - 31 < piece_start:  # history in the piece before: a short window, copied
            stop = min(limit, start + 4096)
        else:
            stop = min(limit, start + _CUT_BLOCK, piece_end - begin)
        window = pieces.contiguous(at - 31, begin + stop)
        hits = _xor32_candidates(window, threshold, 31)
        if hits:
            return start - 31 + hits[0] + 1
        start = stop
    return limit


def _umask() -> int:
    """The process's umask, read without changing it (Linux); 0o777 when it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777


@contextlib.contextmanager
def _removed_on_failure(tmp: str) -> Iterator[None]:
    """Remove the temporary file ``tmp`` when the block fails (interrupts included), then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _link_open_file(fd: int, dest: str) -> None:
    """Give the open file ``fd`` the name ``dest``: ``linkat`` of ``/proc/self/fd/<fd>`` following
    that link.  (``os.link`` calls plain ``link``, which does not follow it, unless a directory fd is
    given: ``fd`` itself serves, the kernel ignores it for an absolute path.)"""
    os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=fd, follow_symlinks=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ObjectStore:
    """The ``data/`` tree of one repository directory."""

    def __init__(self, root: Path, workers: int | None = None) -> None:
        self.root = root
        self.workers = workers or usable_cores()
        self._root = str(root)
        self._created: list[str] | None = None
        self._fix_mode = _umask() & 0o644 != 0
        self.chunk_sizes = (CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)  # min, average, max
        self.new_objects = 0  # objects this store instance added (not already present)
        self._count_lock = threading.Lock()
        self._unnamed: bool | None = None  # O_TMPFILE + linkat work here (probed on first write)

    @property
    def txn_dir(self) -> Path:
        return self.root / "data" / "txn"

    def ensure_layout(self) -> None:
        for i in range(256):
            (self.root / "data" / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self.txn_dir.mkdir(parents=True, exist_ok=True)

    def path(self, hex_hash: str, suffix: str = "") -> Path:
        return self.root / object_path(hex_hash, suffix)

    def has(self, hex_hash: str, suffix: str = "") -> bool:
        return self.path(hex_hash, suffix).exists()

    def put_compressed(self, compressed: bytes, suffix: str = "") -> str:
        """Store one compressed object under its SHA-1 (nothing is written when it exists)."""
        h = content_hash(compressed)
        if os.path.exists(self._dest(h, suffix)):
            return h

        def write(fd: int) -> str:
            _write_all(fd, compressed)
            return h

        return self._new_object(f"{self._root}/data/{h[:2]}", write, suffix)

    def _dest(self, hex_hash: str, suffix: str) -> str:
        return f"{self._root}/data/{hex_hash[:2]}/{hex_hash[2:]}{suffix}"

    def _new_object(self, directory: str, write: Callable[[int], str], suffix: str) -> str:
        """Write one object through ``write(fd)``, which returns its hash, and give the file its name
        only once all its bytes are written, so that a reader, or a crash, never meets half an object
        under its name.  Where the file system allows it the file is made without a name in
        ``directory`` (``O_TMPFILE``) and linked into place (``linkat``): one directory entry per
        object, nothing left behind by a crash; elsewhere it is written under a temporary name in
        ``data/txn`` and renamed.  An object that exists already (another writer stored the same
        bytes first) is neither replaced nor counted."""
        if self._unnamed is None:
            self._unnamed = self._probe_unnamed()
        if self._unnamed:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
            try:
                if self._fix_mode:
                    os.fchmod(fd, 0o644)  # objects are world-readable whatever the umask
                h = write(fd)
                dest = self._dest(h, suffix)
                try:
                    _link_open_file(fd, dest)
                except FileExistsError:
                    return h
            finally:
                os.close(fd)
        else:
            tmp = f"{self._root}/data/txn/new.{os.getpid()}.{threading.get_ident()}"
            with _removed_on_failure(tmp):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    if self._fix_mode:
                        os.fchmod(fd, 0o644)
                    h = write(fd)
                finally:
                    os.close(fd)
                dest = self._dest(h, suffix)
                if os.path.exists(dest):
                    os.unlink(tmp)
                    return h
                os.replace(tmp, dest)
        self._count_new(dest)
        return h

    def _probe_unnamed(self) -> bool:
        """Whether this file system and /proc let :meth:`_new_object` link unnamed files into place."""
        if not hasattr(os, "O_TMPFILE"):
            return False
        probe = f"{self._root}/data/txn/probe.{os.getpid()}.{threading.get_ident()}"
        try:
            fd = os.open(f"{self._root}/data/txn", os.O_TMPFILE | os.O_WRONLY, 0o644)
            try:
                _link_open_file(fd, probe)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError:
            return False
        return True

    def _count_new(self, dest: str) -> None:
        """One more object written by this store (and remembered, when a refused ingest may remove it)."""
        with self._count_lock:
            self.new_objects += 1
            if self._created is not None:
                self._created.append(dest)

    def put_stream(self, pieces: Iterable[bytes], suffix: str = "") -> str:
        """Store content that arrives in pieces (a file too large to hold), compressing and hashing
        as it is written; the same object :meth:`put` makes of the joined pieces."""

        def write(fd: int) -> str:
            comp = zlib.compressobj(ZLIB_LEVEL)
            sha = hashlib.sha1()
            for piece in pieces:
                out = comp.compress(piece)
                sha.update(out)
                _write_all(fd, out)
            out = comp.flush()
            sha.update(out)
            _write_all(fd, out)
            return sha.hexdigest()

        return self._new_object(f"{self._root}/data/txn", write, suffix)

    def adopt(self, created: list[str]) -> None:
        """Count (and record, see :meth:`record_new`) objects another process created in this store."""
        with self._count_lock:
            self.new_objects += len(created)
            if self._created is not None:
                self._created.extend(created)

    def record_new(self) -> None:
        """From now on remember every object this store creates (see :meth:`drop_recorded`)."""
        with self._count_lock:
            self._created = []

    def stop_recording(self) -> list[str]:
        with self._count_lock:
            created, self._created = self._created or [], None
        return created

    def drop_recorded(self) -> int:
        """Delete the objects created since :meth:`record_new` (an aborted transaction's); how many."""
        created = self.stop_recording()
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with self._count_lock:
            self.new_objects -= len(created)
        return len(created)

    def put(self, data: bytes | memoryview, suffix: str = "") -> str:
        return self.put_compressed(compress(data), suffix)

    def put_pieces(self, pieces: Iterable[bytes | memoryview], suffix: str = "") -> str:
        """:meth:`put` of the joined ``pieces``, which are fed to zlib one by one instead (zlib's
        output does not depend on how its input is split: a test holds it)."""
        comp = zlib.compressobj(ZLIB_LEVEL)
        out = [comp.compress(p) for p in pieces]
        out.append(comp.flush())
        return self.put_compressed(out[0] if len(out) == 1 else b"".join(out), suffix)

    def get(self, hex_hash: str, suffix: str = "") -> bytes:
        p = self.path(hex_hash, suffix)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise RepositoryError(f"object {object_path(hex_hash, suffix)} is missing ({e.strerror})") from e
        if content_hash(raw) != hex_hash:
            raise RepositoryError(
                f"object {object_path(hex_hash, suffix)} is corrupt: its SHA-1 does not match its name"
            )
        try:
            return zlib.decompress(raw)
        except zlib.error as e:
            raise RepositoryError(
                f"object {object_path(hex_hash, suffix)} is not valid zlib data ({e})"
            ) from e

    def store_bytes(self, data: bytes, chunking: bool = True) -> StoredFile:
        lo, avg, hi = self.chunk_sizes
        bounds = chunk_boundaries(data, lo, avg, hi) if chunking and len(data) > lo else [len(data)]
        if len(bounds) == 1:
            return StoredFile(len(data), self.put(data))
        chunks = []
        start = 0
        for end in bounds:
            chunks.append(Chunk(start, end - start, self.put(data[start:end], SUFFIX_PARTIAL)))
            start = end
        return StoredFile(len(data), None, tuple(chunks))

    def store_many(self, blobs: Iterable[bytes], chunking: bool = True) -> Iterator[StoredFile]:
        """Store many contents in parallel; results come back in input order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            yield from pool.map(lambda b: self.store_bytes(b, chunking), blobs)
