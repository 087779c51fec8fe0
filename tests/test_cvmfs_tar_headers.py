"""The stream's own reading of common tar header blocks gives exactly what tarfile gives: the same
fields for every header it reads itself, and tarfile's own result or error for every other one
(generated headers of every format and member type, then single bytes and whole fields damaged)."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.tarstream import TarballStream, _byte_sum, _Header

ENC, ERR = "utf-8", "surrogateescape"
FIELDS = [s for s in tarfile.TarInfo.__slots__ if s not in ("tarfile", "_sparse_structs", "_link_target")]
TYPES = [
    tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
    tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"V", b"Z",
    tarfile.XHDTYPE, tarfile.XGLTYPE,
]  # fmt: skip
FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]


def _read(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[str, Any]:
    try:
        info = cls.frombuf(buf, ENC, ERR)
    except Exception as e:  # the type and message are what is compared
        return "error", (type(e), str(e))
    return "ok", {f: getattr(info, f, None) for f in FIELDS}


def _same(buf: bytes) -> None:
    assert _read(_Header, buf) == _read(tarfile.TarInfo, buf)


names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=150
) | st.sampled_from(["a/b/", "./x", "dir/", "v7dir/", "p/" * 60 + "leaf", "é/ü"])


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from(TYPES))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 2**21 - 1) | st.integers(2**21, 2**40))
    info.gid = draw(st.integers(0, 2**21 - 1))
    info.size = draw(st.integers(0, 2**33 - 1) | st.integers(2**33, 2**40)) if info.type in (
        tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE
    ) else 0  # fmt: skip
    info.mtime = draw(st.integers(0, 2**33 - 1) | st.integers(-(2**20), -1))
    info.linkname = draw(names) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    fmt = draw(st.sampled_from(FORMATS))
    try:
        raw = info.tobuf(fmt, ENC, ERR)
    except ValueError:  # a value this format cannot hold: GNU then writes base-256
        raw = info.tobuf(tarfile.GNU_FORMAT, ENC, ERR)
    blocks = [raw[i : i + 512] for i in range(0, len(raw), 512)]
    return draw(st.sampled_from(blocks))  # long-name, pax and the member's own header blocks alike


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks())
def test_generated_headers_read_alike(buf: bytes) -> None:
    _same(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks(), st.integers(0, 511), st.integers(0, 255))
def test_headers_with_one_damaged_byte_read_alike(buf: bytes, at: int, value: int) -> None:
    _same(buf[:at] + bytes([value]) + buf[at + 1 :])


FIELD_SPANS = [(100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156), (329, 337), (337, 345)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header_blocks(),
    st.sampled_from(FIELD_SPANS),
    st.lists(st.sampled_from(b"01234567 \x00\t\x1c+-_89\x80\xffx"), min_size=12, max_size=12),
)
def test_headers_with_odd_number_fields_read_alike(buf: bytes, span: tuple[int, int], raw: list[int]) -> None:
    """Number fields as other tars write them (leading spaces, NUL-terminated, space-terminated) and
    as no tar should (digits after a NUL, signs, underscores, control characters, base-256 marks)."""
    a, b = span
    block = buf[:a] + bytes(raw[: b - a]) + buf[b:]
    _same(block)
    # the same block with its checksum made right, so that the number field itself is what is judged
    fixed = block[:148] + b" " * 8 + block[156:]
    chk = f"{sum(fixed):06o}\0 ".encode()
    _same(fixed[:148] + chk + fixed[156:])


@given(st.binary(min_size=512, max_size=512) | st.sampled_from([b"\xff" * 512, b"\0" * 512]))
def test_byte_sum_is_the_sum_of_the_bytes(block: bytes) -> None:
    assert _byte_sum(block) == sum(block)


@pytest.mark.parametrize(
    "buf",
    [b"", b"\0" * 511, b"\0" * 512, b"x" * 512, bytes(range(256)) * 2],
    ids=["empty", "short", "zeros", "text", "bytes"],
)
def test_degenerate_blocks_give_tarfiles_errors(buf: bytes) -> None:
    _same(buf)


def test_a_signed_checksum_header_is_read_by_tarfile_and_accepted() -> None:
    """Some old tars summed signed chars: the fast path's unsigned sum does not match, tarfile's
    signed one does, and the header is read."""
    info = tarfile.TarInfo("caf\udce9")  # a byte >= 0x80 in the name
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT, ENC, ERR))
    buf[148:156] = b" " * 8
    signed = 256 + sum(b - 256 if b > 127 else b for i, b in enumerate(buf) if not 148 <= i < 156)
    buf[148:156] = f"{signed:06o}\0 ".encode()
    _same(bytes(buf))
    assert _Header.frombuf(bytes(buf), ENC, ERR).name == "caf\udce9"


def test_stream_reads_every_member_of_each_format_as_tarfile_does(tmp_path: Any) -> None:
    long_name = "2023.06/" + "/".join(f"directory-{i:03d}" for i in range(10)) + "/file"  # ustar's prefix
    for fmt in FORMATS:
        members = _members(long_name, long_name if fmt != tarfile.USTAR_FORMAT else "2023.06/é")
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=fmt) as tf:
            for info in members:
                data = info.name.encode() * 3 if info.isreg() else b""
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        path = tmp_path / f"t{fmt}.tar"
        path.write_bytes(raw.getvalue())
        with tarfile.open(path) as tf:
            want = [{f: getattr(m, f, None) for f in FIELDS} for m in tf]
        with TarballStream(path) as stream:
            got = [{f: getattr(m, f, None) for f in FIELDS} for m in stream.members()]
            assert stream.finish() == []
        assert got == want, fmt
        assert len(got) == len(members)


def _members(long_name: str, link: str) -> list[tarfile.TarInfo]:
    members = []
    for i, (name, kind) in enumerate(
        [("2023.06", tarfile.DIRTYPE), (long_name, tarfile.REGTYPE), ("2023.06/l", tarfile.SYMTYPE),
         ("2023.06/h", tarfile.LNKTYPE), ("2023.06/d/", tarfile.DIRTYPE), ("2023.06/é", tarfile.REGTYPE)]
    ):  # fmt: skip
        info = tarfile.TarInfo(name)
        info.type, info.mtime, info.mode = kind, 1700000000 + i, 0o755
        info.linkname = link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        members.append(info)
    return members
