"""Just enough of an ELF reader to relocate and check a compatibility layer.

Reads the header, the program headers and the dynamic section of 32- and 64-bit,
little- and big-endian files: the program interpreter (``PT_INTERP``), ``DT_NEEDED``,
``DT_SONAME``, ``DT_RUNPATH`` and ``DT_RPATH``.  Pure Python, no subprocess: scanning
the ten thousand files of a layer takes well under a second, where one ``patchelf
--print-*`` per file would take minutes.  Anything malformed yields ``None`` (not an
ELF file we can relocate), never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"

ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_SONAME = 14
DT_RPATH = 15
DT_RUNPATH = 29

#: e_machine values of the CPU families a layer is built for.
MACHINES = {"x86_64": 62, "aarch64": 183, "ppc64le": 21, "riscv64": 243}

_MAX_HEADERS = 4096


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What relocation needs to know about one ELF file."""

    elf_type: int
    machine: int
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None
    runpath: tuple[str, ...]
    rpath: tuple[str, ...]
    dynamic: bool

    @property
    def is_executable_or_library(self) -> bool:
        return self.elf_type in (ET_EXEC, ET_DYN)


def is_elf(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the ELF magic (symlinks are not followed)."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with path.open("rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfInfo | None:
    """Parse ``path``; None when it is not an ELF file or is malformed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return parse_elf(data)


@dataclass(frozen=True, slots=True)
class _Segments:
    elf_type: int
    machine: int
    loads: tuple[tuple[int, int, int], ...]  # (vaddr, offset, filesz)
    interpreter: str | None
    dynamic: tuple[int, int] | None  # (offset, size) of PT_DYNAMIC


def parse_elf(data: bytes) -> ElfInfo | None:
    """Parse ELF bytes; None when they are not a well-formed ELF file."""
    if len(data) < 52 or data[:4] != ELF_MAGIC:
        return None
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        return None
    end = "<" if ei_data == 1 else ">"
    wide = ei_class == 2
    try:
        seg = _program_headers(data, end, wide)
    except struct.error:
        return None
    if seg is None:
        return None
    tags = _dynamic_tags(data, end, wide, seg.dynamic) if seg.dynamic is not None else {}
    strtab_vaddr = tags.get(DT_STRTAB, [None])[-1]
    strtab = _vaddr_to_offset(strtab_vaddr, list(seg.loads)) if strtab_vaddr is not None else None

    def string(index: int | None) -> str | None:
        if index is None or strtab is None:
            return None
        start = strtab + index
        if start >= len(data):
            return None
        stop = data.find(b"\0", start)
        return data[start : stop if stop >= 0 else len(data)].decode("utf-8", "surrogateescape")

    def paths(tag: int) -> tuple[str, ...]:
        text = string(tags.get(tag, [None])[-1])
        return tuple(p for p in text.split(":") if p) if text else ()

    return ElfInfo(
        elf_type=seg.elf_type,
        machine=seg.machine,
        interpreter=seg.interpreter,
        needed=tuple(s for s in (string(n) for n in tags.get(DT_NEEDED, [])) if s),
        soname=string(tags.get(DT_SONAME, [None])[-1]),
        runpath=paths(DT_RUNPATH),
        rpath=paths(DT_RPATH),
        dynamic=seg.dynamic is not None,
    )


def _program_headers(data: bytes, end: str, wide: bool) -> _Segments | None:
    """The ELF header's type and machine and the program headers used here (may raise struct.error)."""
    header = end + ("HHIQQQIHHH" if wide else "HHIIIIIHHH")
    e_type, e_machine, _v, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum = (
        struct.unpack_from(header, data, 16)
    )
    if e_phnum > _MAX_HEADERS or e_phentsize < (56 if wide else 32):
        return None
    loads: list[tuple[int, int, int]] = []
    interp: str | None = None
    dyn: tuple[int, int] | None = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if wide:
            p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                end + "IIQQQQ", data, off
            )
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(end + "IIIII", data, off)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            raw = data[p_offset : p_offset + p_filesz]
            interp = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif p_type == PT_DYNAMIC:
            dyn = (p_offset, p_filesz)
    return _Segments(e_type, e_machine, tuple(loads), interp, dyn)


_WANTED_TAGS = (DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RUNPATH, DT_RPATH)


def _dynamic_tags(data: bytes, end: str, wide: bool, dyn: tuple[int, int]) -> dict[int, list[int]]:
    """The values of the dynamic section's tags this module reads, in order, up to DT_NULL."""
    entry = struct.Struct(end + ("qQ" if wide else "iI"))
    off, size = dyn
    stop = min(off + size, len(data))
    tags: dict[int, list[int]] = {}
    while off + entry.size <= stop:
        tag, val = entry.unpack_from(data, off)
        off += entry.size
        if tag == DT_NULL:
            break
        if tag in _WANTED_TAGS:
            tags.setdefault(tag, []).append(val)
    return tags


def _vaddr_to_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int | None:
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return seg_offset + (vaddr - seg_vaddr)
    return None
