"""One read of a tarball: the file is opened once, its format is decided from its first bytes
(and must agree with its name), the raw bytes are hashed (SHA-256, what the gate records) while a
thread decompresses them, and tar headers are parsed from that single stream.

The checker (:mod:`.tarcheck`) and the ingest (:mod:`.ingest`) both read through
:class:`TarballStream`, so what one judges is byte for byte what the other publishes.

Memory: the decompressing thread hands over blocks of at most :data:`BLOCK` bytes through a
queue of :data:`QUEUE_BLOCKS` entries, so at most ``QUEUE_BLOCKS * BLOCK`` decompressed bytes
wait between the two threads, whatever the size of the archive or of any member.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import queue
import struct
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ..errors import TarballRejected

_inflate: Any
try:  # ISA-L's inflate: the same bytes as zlib's in about half the time (and without the GIL)
    _inflate = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - zlib's own is used instead
    _inflate = zlib

BLOCK = 1 << 20  # bytes per decompressed block
# Compressed bytes per read: a quarter of BLOCK inflates to about one block (text and binaries), so
# the inflater rarely stops at BLOCK and copies the input it did not use; 20 % less time than 1 MiB.
RAW_READ = 1 << 18
QUEUE_BLOCKS = 8  # decompressed blocks in flight between the threads
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
# tarfile's header errors (not in typeshed): no more bytes; a zero block or a bad checksum.
_END_OF_DATA: tuple[type[Exception], ...] = tuple(
    getattr(tarfile, n) for n in ("EmptyHeaderError", "TruncatedHeaderError")
)
_SKIPPABLE: tuple[type[Exception], ...] = tuple(
    getattr(tarfile, n) for n in ("EOFHeaderError", "InvalidHeaderError")
)

#: Name endings and the format each promises.
NAME_FORMATS = ((".tar.gz", "gzip"), (".tgz", "gzip"), (".tar.zst", "zstd"), (".tar", "tar"))
_EXTENSION_OF = {"gzip": ".tar.gz", "zstd": ".tar.zst", "tar": ".tar", "bzip2": ".tar.bz2", "xz": ".tar.xz"}


def format_from_name(name: str) -> str | None:
    return next((fmt for ext, fmt in NAME_FORMATS if name.endswith(ext)), None)


def format_from_magic(head: bytes) -> str:
    """What the first bytes of a file say it is: gzip, zstd, bzip2, xz, tar (ustar magic) or unknown."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    return "unknown"


class StreamError(Exception):
    """The archive's bytes could not be read or decompressed (the message says why)."""


@dataclass(frozen=True, slots=True)
class StreamProblem:
    """A structural problem of the archive; ``member`` None for the archive as a whole."""

    member: str | None
    reason: str


_FAST_TYPES = frozenset(
    {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE}
)


# A ustar/GNU header block: name, mode, uid, gid, size, mtime, chksum, type, linkname, magic+version,
# uname, gname, devmajor, devminor, prefix (GNU keeps other fields in the prefix's space: only types
# whose prefix tarfile ignores or joins the same way take the fast path).
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")


def _octal(field: bytes) -> int:
    """An octal number field: digits, then spaces or NULs.  ``int`` raises ValueError for anything else
    (base-256, text after a NUL, …), and then tarfile reads the header; where ``int`` succeeds the
    value is the one :func:`tarfile.nti` gives (it cuts at the first NUL and strips whitespace)."""
    return int(field.rstrip(b" \0") or b"0", 8)


def _byte_sum(block: bytes) -> int:
    """The sum of a 512-byte block's bytes, by zlib's Adler-32 of each half: its low 16 bits are one
    plus the sum of the bytes mod 65521, and 256 bytes sum to at most 65280, so no half wraps."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _text(field: bytes, encoding: str, errors: str) -> str:
    """A NUL-terminated text field, as :func:`tarfile.nts` reads it."""
    return field.partition(b"\0")[0].decode(encoding, errors)


class _Header(tarfile.TarInfo):
    """A member header.  :meth:`frombuf` reads the common headers (regular files, directories, links,
    GNU long names, pax headers: what GNU tar writes) itself, checking the checksum with two Adler-32s
    (:func:`_byte_sum`) instead of tarfile's two 504-field unpacks; any other header, and any header
    with something unusual (a base-256 number, a checksum that only matches signed, a zero block), is
    read by tarfile's own ``frombuf``, so every result and every error is tarfile's (a test compares
    the two on generated headers).  Everything after the header block (long names, pax records,
    offsets) is tarfile's code.  Pax headers matter: Python's tarfile writes one before every member
    whose name is longer than 100 bytes, which is most members of a software tarball.
    """

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        buf = bytes(buf)  # no copy for bytes, what the stream reads
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] not in _FAST_TYPES:
            return super().frombuf(buf, encoding, errors)
        name, mode, uid, gid, size, mtime, chk, kind, link, uname, gname, major, minor, prefix = (
            _HEADER.unpack(buf)
        )
        try:
            chksum = _octal(chk)
            if chksum != 256 + _byte_sum(buf) - sum(chk):  # the checksum field counts as 8 spaces
                raise ValueError("checksum")
            numbers = (_octal(mode), _octal(uid), _octal(gid), _octal(size), _octal(mtime))
            devices = (_octal(major), _octal(minor))
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime = numbers
        obj.devmajor, obj.devminor = devices
        obj.chksum = chksum
        obj.type = kind
        obj.linkname = _text(link, encoding, errors)
        obj.uname = _text(uname, encoding, errors)
        obj.gname = _text(gname, encoding, errors)
        text = _text(name, encoding, errors)
        if kind == tarfile.AREGTYPE and text.endswith("/"):  # old V7 tar's directories
            obj.type = kind = tarfile.DIRTYPE
        if kind == tarfile.DIRTYPE:
            text = text.rstrip("/")
        if prefix[0] and kind not in tarfile.GNU_TYPES:  # ustar's split long name
            long_prefix = _text(prefix, encoding, errors)
            if long_prefix:
                text = long_prefix + "/" + text
        obj.name = text
        return obj


class _Shim:
    """The attributes :meth:`tarfile.TarInfo.fromtarfile` reads from a TarFile."""

    def __init__(self, fileobj: _Reader) -> None:
        self.fileobj = fileobj
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.offset = 0
        self.pax_headers: dict[str, str] = {}


def _payload(block: bytes) -> int:
    """The length of ``block`` without its trailing zero bytes (copying only a tail that is zero)."""
    if block[-1]:
        return len(block)
    tail = block[-4096:].rstrip(b"\0")
    if tail:
        return len(block) - min(4096, len(block)) + len(tail)
    return len(block.rstrip(b"\0"))


class _Reader:
    """Forward-only reads over the decompressed blocks; remembers where its last non-zero byte was."""

    def __init__(self, blocks: queue.Queue[bytes | BaseException | None], stop: threading.Event) -> None:
        self._blocks = blocks
        self._stop = stop
        self._buf = b""
        self._at = 0
        self.pos = 0
        self.last_nonzero_end = 0
        self.eof = False

    def _fill(self) -> bool:
        while not self.eof:
            item = self._blocks.get()
            if item is None:
                self.eof = True
                return False
            if isinstance(item, BaseException):
                self.eof = True
                raise StreamError(f"{type(item).__name__}: {item}") from item
            if not item:
                continue
            payload = _payload(item)
            if payload:
                self.last_nonzero_end = self.pos + (len(self._buf) - self._at) + payload
            self._buf = self._buf[self._at :] + item if self._at < len(self._buf) else item
            self._at = 0
            return True
        return False

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            raise ValueError("read() needs a size on a stream")
        avail = len(self._buf) - self._at
        if avail >= size:
            out = self._buf[self._at : self._at + size]
            self._at += size
            self.pos += size
            return out
        parts = [self._buf[self._at :]] if avail else []
        need = size - avail
        self._buf, self._at = b"", 0
        while need > 0 and self._fill():
            take = min(need, len(self._buf))
            parts.append(self._buf[:take] if take < len(self._buf) else self._buf)
            self._at = take
            need -= take
        out = b"".join(parts)
        self.pos += len(out)
        return out

    def read_parts(self, size: int) -> list[bytes]:
        """The next ``size`` bytes (fewer at the end) in the pieces they arrived in: a whole block is
        handed on as it is, not copied into one large string."""
        parts = []
        need = size
        while need > 0:
            avail = len(self._buf) - self._at
            if not avail:
                self._buf, self._at = b"", 0
                if not self._fill():
                    break
                continue
            take = min(need, avail)
            whole = self._at == 0 and take == len(self._buf)
            parts.append(self._buf if whole else self._buf[self._at : self._at + take])
            self._at += take
            need -= take
        self.pos += size - need
        return parts

    def skip(self, size: int) -> int:
        done = 0
        while done < size:
            got = len(self.read(min(size - done, BLOCK)))
            if not got:
                break
            done += got
        return done

    def tell(self) -> int:
        return self.pos


class TarballStream:
    """A tarball opened once: format by magic, SHA-256 of the raw bytes, decompression in a thread.

    Use as a context manager; :meth:`members` yields each member's header with the stream at its
    data (read it with :meth:`read_data`, or leave it: it is skipped), :meth:`finish` reads to the
    end and returns the archive's structural problems.  :attr:`sha256` is final after :meth:`finish`.
    """

    def __init__(self, path: Path, shown: str | None = None) -> None:
        self.path = path
        self.shown = shown or path.name
        self._hash = hashlib.sha256()
        self.raw_bytes = 0
        self._stop = threading.Event()
        self._blocks: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_BLOCKS)
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise TarballRejected(f"{self.shown}: cannot be read ({e.strerror}); check the path") from e
        try:
            head = self._read_head()
            self.format = self._decide(head)
            self._zstd = self._zstd_module() if self.format == "zstd" else None
        except BaseException:
            os.close(self._fd)
            raise
        self.reader = _Reader(self._blocks, self._stop)
        self._shim = _Shim(self.reader)
        self.member_end = 0  # where the next header is expected
        self._last_end = 0  # where the last member's data blocks end
        self._data_left = 0
        self._data_at = 0
        self.count = 0
        self.problems: list[StreamProblem] = []
        self._thread = threading.Thread(target=self._pump, args=(head,), name="tar-decompress", daemon=True)
        self._thread.start()

    # -- opening -----------------------------------------------------------------------------

    def _read_head(self) -> bytes:
        parts = []
        size = 0
        while size < 512:
            chunk = os.read(self._fd, BLOCK)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        head = b"".join(parts)
        self._hash.update(head)
        self.raw_bytes = len(head)
        return head

    def _decide(self, head: bytes) -> str:
        named = format_from_name(self.path.name)
        found = format_from_magic(head)
        if named is None:
            raise TarballRejected(
                f"{self.shown}: the name does not say how it is packed; name it .tar.gz, .tar.zst or .tar "
                f"(its bytes are {found})"
            )
        if found == "unknown":
            raise TarballRejected(
                f"{self.shown}: cannot be read as a {named} archive: its first {min(len(head), 512)} bytes "
                "match no known format (gzip, zstd, bzip2, xz, tar); check the upload and re-create it"
            )
        if found != named:
            fix = f"rename it to end in {_EXTENSION_OF[found]}" if found in _EXTENSION_OF else "re-create it"
            raise TarballRejected(
                f"{self.shown}: the name says {named} but its bytes are {found}; {fix}, "
                "and re-run its tests so the gate record matches"
            )
        return found

    def _zstd_module(self) -> Any:
        try:
            return importlib.import_module("zstandard")
        except ImportError:
            raise TarballRejected(
                f"{self.shown}: is zstd-compressed but the 'zstandard' Python module is not installed; "
                "install zstandard or recompress the tarball with gzip (.tar.gz)"
            ) from None

    # -- the decompressing thread -------------------------------------------------------------

    def _raw(self, head: bytes) -> Iterator[bytes]:
        if head:
            yield head
        while not self._stop.is_set():
            chunk = os.read(self._fd, RAW_READ)
            if not chunk:
                return
            self._hash.update(chunk)
            self.raw_bytes += len(chunk)
            yield chunk

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, head: bytes) -> None:
        try:
            source = self._raw(head)
            blocks = (
                _gunzip(source) if self.format == "gzip"
                else _unzstd(self._zstd, source) if self.format == "zstd"
                else source
            )  # fmt: skip
            for block in blocks:
                if not self._put(block):
                    return
            self._put(None)
        except BaseException as e:  # handed to the reading thread, which raises it
            self._put(e)

    # -- members --------------------------------------------------------------------------------

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Every member header in archive order; blocks skipped before a header (zeros, a corrupt
        header, a second archive) are reported, as another tar reader could stop there."""
        reader, shim = self.reader, self._shim
        while True:
            if reader.pos != self.member_end:  # what the caller left of the previous member's data
                reader.skip(self.member_end - reader.pos)
            try:
                info = _Header.fromtarfile(shim)  # type: ignore[arg-type]  # duck-typed TarFile
            except _END_OF_DATA:
                return
            except _SKIPPABLE:
                self.member_end = reader.pos  # a zero or corrupt block: look at the next one
                continue
            except tarfile.HeaderError as e:
                raise StreamError(f"{type(e).__name__}: {e}") from e
            skipped = info.offset - self._last_end
            if skipped and not shim.pax_headers:
                self.problems.append(
                    StreamProblem(
                        info.name,
                        f"{skipped} bytes before this member were skipped (an early end-of-archive marker, "
                        "a corrupt header or concatenated archives)",
                    )
                )
            self.count += 1
            self.member_end = self._last_end = shim.offset
            self._data_left = info.size if info.isreg() and not info.issparse() else 0
            self._data_at = info.offset_data
            yield info

    @property
    def data_left(self) -> int:
        """Bytes of the current member's data not read yet."""
        return self._data_left

    def read_data(self, size: int = BLOCK) -> bytes:
        """The next up to ``size`` bytes of the current member's data (b"" at its end), in one piece
        (:meth:`read_data_parts` joined; a read inside one block is not copied again)."""
        return b"".join(self.read_data_parts(size))

    def read_data_parts(self, size: int | None = None) -> list[bytes]:
        """The next ``size`` bytes (default: all that is left) of the current member's data, in
        pieces (see :meth:`_Reader.read_parts`)."""
        n = self._data_left if size is None else min(size, self._data_left)
        if n <= 0:
            return []
        if self.reader.pos != self._data_at:
            raise StreamError("internal: member data read out of order")
        parts = self.reader.read_parts(n)
        if sum(map(len, parts)) != n:
            raise StreamError("unexpected end of data inside a member: the tarball is truncated")
        self._data_left -= n
        self._data_at += n
        return parts

    def finish(self) -> list[StreamProblem]:
        """Read to the end of the file (checking gzip CRCs, hashing every byte); the trailer's problems."""
        reader = self.reader
        while reader._fill():
            reader.pos += len(reader._buf) - reader._at
            reader._buf, reader._at = b"", 0
        self._thread.join()
        problems = list(self.problems)
        if self._shim.pax_headers:
            keys = ", ".join(sorted(self._shim.pax_headers))
            problems.append(
                StreamProblem(None, f"global pax header ({keys}): tar readers disagree on how it applies")
            )
        if self.count:
            if reader.last_nonzero_end > self._last_end:
                problems.append(
                    StreamProblem(
                        None,
                        f"{reader.last_nonzero_end - self._last_end} bytes of non-zero data after the last "
                        "member that no header describes",
                    )
                )
            elif reader.pos - self._last_end < END_OF_ARCHIVE:
                problems.append(
                    StreamProblem(
                        None, "no end-of-archive marker after the last member: the tarball is truncated"
                    )
                )
        return problems

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            while True:  # unblock a pump waiting on a full queue
                try:
                    self._blocks.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
        os.close(self._fd)

    def __enter__(self) -> TarballStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gunzip(source: Iterator[bytes], inflate: Any = _inflate) -> Iterator[bytes]:
    """gzip members one after another (the inflater checks each CRC and length); zero padding between
    and after members is skipped, as gzip does.  ``inflate``: a module with zlib's ``decompressobj``."""
    d = inflate.decompressobj(31)
    fed = False  # the current member has had input
    finished_one = False
    for raw in source:
        data = raw
        while data:
            if not fed and finished_one:
                data = data.lstrip(b"\0")
                if not data:
                    break
            fed = True
            out = d.decompress(data, BLOCK)
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                d = inflate.decompressobj(31)
                fed, finished_one = False, True
            else:
                data = d.unconsumed_tail
    if fed:
        tail = d.flush()
        if tail:
            yield tail
        if not d.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")


def _unzstd(module: Any, source: Iterator[bytes]) -> Iterator[bytes]:
    class _Raw:
        def __init__(self) -> None:
            self._left = b""

        def read(self, size: int = -1) -> bytes:
            if not self._left:
                self._left = next(source, b"")
            out, self._left = (self._left, b"") if size < 0 else (self._left[:size], self._left[size:])
            return out

    reader = module.ZstdDecompressor().stream_reader(_Raw(), read_across_frames=True)
    while True:
        block = reader.read(BLOCK)
        if not block:
            return
        yield block
