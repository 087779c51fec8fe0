"""EESSI tarball file names, in one place: :func:`parse_tarball_name` splits one into its parts (the
form and the decisions behind it are in :mod:`.tarcheck`'s documentation, under **Name**), and
:func:`printable` shows any name safely in a one-line message.

Moved here from :mod:`.tarcheck`, which still exports every public name of this module.
:func:`software_tarball`, :func:`compat_tarball` and :func:`init_tarball` write them.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from ..errors import TarballRejected

__all__ = [
    "ARCHES",
    "CONTENT_TYPES",
    "EXTENSIONS",
    "OSES",
    "TYPES_WITH_ARCH",
    "VERSION_SUFFIX",
    "TarballName",
    "parse_tarball_name",
    "printable",
]

CONTENT_TYPES = ("compat", "init", "scripts", "software")
OSES = ("linux", "macos")
ARCHES = ("aarch64", "ppc64le", "riscv64", "x86_64")
EXTENSIONS = (".tar.gz", ".tar.zst", ".tar")  # longest first where one ends another
#: Content types whose names (and trees) carry ``<os>/<arch>``.
TYPES_WITH_ARCH = frozenset({"compat", "software"})
#: What may follow ``<version>-`` in a top-level directory (and in an expected version).
VERSION_SUFFIX = re.compile(r"[0-9A-Za-z._]+")

_NAME_FORM = "eessi-<version>-<type>[-<os>-<arch>][-<more>]-<epoch>.tar.gz|.tar.zst|.tar"
_VERSION_DOTTED = re.compile(r"20[0-9]{2}\.(0[1-9]|1[0-2])")
_VERSION_DATE = re.compile(r"20[0-9]{6}")
_REST_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")
_EPOCH = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class TarballName:
    """The parts of a tarball's file name; ``os``/``arch`` are None for init/scripts names without them."""

    filename: str
    version: str
    content_type: str
    os: str | None
    arch: str | None
    rest: tuple[str, ...]
    timestamp: int
    extension: str


def _name_error(name: str, what: str, expected: str) -> TarballRejected:
    return TarballRejected(
        f"{printable(name)}: {what}; expected {expected} (name form {_NAME_FORM}); "
        "rename or rebuild the tarball"
    )


def _is_version(text: str) -> bool:
    if _VERSION_DOTTED.fullmatch(text):
        return True
    if not _VERSION_DATE.fullmatch(text):
        return False
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _fields(name: str) -> tuple[str, list[str]]:
    """The name's extension and its ``-``-separated fields (``eessi`` first, at least four, none empty)."""
    if not name or "/" in name or any(_is_control(c) for c in name):
        raise _name_error(name, "not a plain file name", "a base name without '/' or control characters")
    extension = next((ext for ext in EXTENSIONS if name.endswith(ext)), None)
    if extension is None:
        raise _name_error(name, "unknown extension", "one of " + ", ".join(EXTENSIONS))
    fields = name[: -len(extension)].split("-")
    if fields[0] != "eessi":
        raise _name_error(name, f"prefix {fields[0]!r} is not 'eessi'", "the name to start with 'eessi-'")
    if len(fields) < 4:
        raise _name_error(name, "too few '-'-separated fields", "at least eessi-<version>-<type>-<epoch>")
    if "" in fields:
        raise _name_error(name, "empty field (a doubled, leading or trailing '-')", "non-empty fields")
    return extension, fields


def _os_arch(name: str, content_type: str, middle: list[str]) -> tuple[str | None, str | None, list[str]]:
    """``(os, arch, rest)`` of the fields between the type and the epoch."""
    if not (content_type in TYPES_WITH_ARCH or (middle and middle[0] in OSES)):
        return None, None, middle
    if not middle:
        raise _name_error(name, f"no os after {content_type!r}", "one of " + ", ".join(OSES))
    if middle[0] not in OSES:
        raise _name_error(name, f"os {middle[0]!r} is unknown", "one of " + ", ".join(OSES))
    if len(middle) < 2:
        raise _name_error(name, f"no arch after os {middle[0]!r}", "one of " + ", ".join(ARCHES))
    if middle[1] not in ARCHES:
        raise _name_error(name, f"arch {middle[1]!r} is unknown", "one of " + ", ".join(ARCHES))
    return middle[0], middle[1], middle[2:]


def parse_tarball_name(name: str) -> TarballName:
    """Split an EESSI tarball file name (a base name, no directory) into its parts.

    Raises TarballRejected naming the file, the bad part and the expected form.
    """
    extension, fields = _fields(name)
    version, content_type, epoch, middle = fields[1], fields[2], fields[-1], fields[3:-1]
    if not _is_version(version):
        raise _name_error(name, f"version {version!r} is invalid", "YYYY.MM (e.g. 2023.06) or YYYYMMDD")
    if content_type not in CONTENT_TYPES:
        raise _name_error(
            name, f"content type {content_type!r} is unknown", "one of " + ", ".join(CONTENT_TYPES)
        )
    os_, arch, middle = _os_arch(name, content_type, middle)
    for part in middle:
        if not _REST_PART.fullmatch(part):
            raise _name_error(name, f"part {part!r} has odd characters", "[A-Za-z0-9][A-Za-z0-9_.]*")
    if not _EPOCH.fullmatch(epoch):
        raise _name_error(
            name, f"timestamp {epoch!r} is not epoch seconds", "decimal digits, e.g. 1700000000"
        )
    return TarballName(
        filename=name,
        version=version,
        content_type=content_type,
        os=os_,
        arch=arch,
        rest=tuple(middle),
        timestamp=int(epoch),
        extension=extension,
    )


# -- names in messages ------------------------------------------------------------------------------------


def _is_control(ch: str) -> bool:
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def printable(text: str) -> str:
    """``text`` for a one-line message: undecodable bytes (surrogates) as ``\\xNN``, control characters and
    backslashes escaped."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif ch == "\\":
            out.append("\\\\")
        elif _is_control(ch):
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


# -- writing names (the parser above reads them) ------------------------------------------------------

NAME_OS = "linux"
EPOCH_PLACEHOLDER = "<epoch seconds>"


def software_tarball(version: str, subdir: str, epoch: int | str) -> str:
    """A software layer's tarball for ``subdir`` (``x86_64/amd/zen3`` or ``…/accel/nvidia/cc90``)."""
    return f"eessi-{version}-software-{NAME_OS}-{subdir.replace('/', '-')}-{epoch}.tar.gz"


def compat_tarball(version: str, family: str, epoch: int | str) -> str:
    return f"eessi-{version}-compat-{NAME_OS}-{family}-{epoch}.tar.gz"


def init_tarball(version: str, epoch: int | str) -> str:
    return f"eessi-{version}-init-{epoch}.tar.gz"
