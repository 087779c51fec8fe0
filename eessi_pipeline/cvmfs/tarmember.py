"""The checks of one tarball member on its own: its name, type, mode and size, where a symlink leads,
and where it lies in the EESSI layout (the decisions are :mod:`.tarcheck`'s documentation).

Moved here from :mod:`.tarcheck`, which still exports every public name of this module.
"""

from __future__ import annotations

import functools
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass

from .tarname import TYPES_WITH_ARCH, VERSION_SUFFIX, TarballName, printable

__all__ = [
    "CATALOG_MARKER",
    "COMPAT_HOST_FILES",
    "DEFAULT_MAX_MEMBER_SIZE",
    "MAX_DEPTH",
    "NAME_MAX",
    "PATH_MAX",
    "CheckContext",
    "Problem",
    "basic_member_problems",
    "check_member",
    "length_problems",
    "normalise_member_name",
]

DEFAULT_MAX_MEMBER_SIZE = 8 * 1024**3
CATALOG_MARKER = ".cvmfscatalog"

#: Host files a ``compat`` tarball may symlink to by absolute path (and nothing else outside /cvmfs).
COMPAT_HOST_FILES = frozenset(
    {"/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/localtime"}
)
# Second-level directories allowed in a tarball of each content type.
_ALLOWED_SECOND_LEVEL = {
    "compat": frozenset({"compat"}),
    "init": frozenset({"init"}),
    "scripts": frozenset({"scripts"}),
    "software": frozenset({"software", "init", "scripts"}),
}
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SPECIAL_BITS = ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"), (stat.S_ISVTX, "sticky"))


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason to refuse the tarball; ``member`` is None for the archive as a whole."""

    member: str | None
    reason: str

    def line(self, tarball: str) -> str:
        if self.member is None:
            return f"{printable(tarball)}: {self.reason}"
        return f"{printable(tarball)}: {printable(self.member)}: {self.reason}"


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What members are checked against.

    ``top_dir``: the exact top-level directory required (from ``expected_version``); None accepts the
    name's version or ``<version>-<suffix>``.  ``repository``: the only repository absolute symlink
    targets may point into; None accepts any repository name.
    """

    name: TarballName
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE
    top_dir: str | None = None
    repository: str | None = None

    def accepts_top(self, top: str) -> bool:
        if self.top_dir is not None:
            return top == self.top_dir
        version = self.name.version
        if top == version:
            return True
        return top.startswith(version + "-") and bool(VERSION_SUFFIX.fullmatch(top[len(version) + 1 :]))

    def expected_top(self) -> str:
        return (
            self.top_dir
            if self.top_dir is not None
            else f"{self.name.version}' or '{self.name.version}-<suffix>"
        )


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=16)  # each member's name is split by several checks in a row
def _components(name: str) -> tuple[str, ...]:
    return tuple(c for c in name.split("/") if c not in ("", "."))


def normalise_member_name(name: str) -> str:
    """The member's path as it lands in the repository: ``./``, ``.`` components, doubled, leading and
    trailing ``/`` removed (``..`` is kept; it is refused separately)."""
    return "/".join(_components(name))


_KINDS: tuple[tuple[Callable[[tarfile.TarInfo], bool], str], ...] = (
    (tarfile.TarInfo.isreg, "regular file"),
    (tarfile.TarInfo.isdir, "directory"),
    (tarfile.TarInfo.issym, "symlink"),
    (tarfile.TarInfo.islnk, "hard link"),
    (tarfile.TarInfo.ischr, "character device"),
    (tarfile.TarInfo.isblk, "block device"),
    (tarfile.TarInfo.isfifo, "fifo"),
)


def _kind(info: tarfile.TarInfo) -> str:
    """What the member is, in words (for messages)."""
    return next((kind for test, kind in _KINDS if test(info)), f"member of unsupported type {info.type!r}")


def _text_problems(what: str, text: str) -> list[str]:
    problems = []
    if not _is_utf8(text):
        problems.append(f"{what} is not valid UTF-8")
    if _CONTROL.search(text):
        problems.append(f"{what} contains a control character")
    return problems


def _layout_problems(info: tarfile.TarInfo, parts: Sequence[str], ctx: CheckContext) -> list[str]:
    name = ctx.name
    top = parts[0]
    if not ctx.accepts_top(top):
        return [f"top-level directory {top!r} is not the version directory '{ctx.expected_top()}'"]
    if len(parts) == 1:
        return (
            [] if info.isdir() else [f"{top!r} is the version directory but this member is a {_kind(info)}"]
        )
    second = parts[1]
    allowed = _ALLOWED_SECOND_LEVEL[name.content_type]
    if second not in allowed:
        return [
            f"second-level directory {second!r} does not match the content type {name.content_type!r} "
            f"(expected {' or '.join(repr(f'{top}/{a}') for a in sorted(allowed))})"
        ]
    depth = 4 if second in TYPES_WITH_ARCH else 2
    problems = []
    if second in TYPES_WITH_ARCH:
        for level, (label, wanted) in enumerate((("os", name.os), ("arch", name.arch)), start=2):
            if len(parts) > level and parts[level] != wanted:
                problems.append(
                    f"{label} directory {parts[level]!r} does not match the name's {label} {wanted!r} "
                    f"(expected {top}/{second}/{name.os}/{name.arch}/…)"
                )
    if len(parts) <= depth and not info.isdir():
        problems.append(f"{'/'.join(parts)!r} is a layout directory but this member is a {_kind(info)}")
    return problems


def _allowed_host_link(target: str, parts: Sequence[str], ctx: CheckContext) -> bool:
    """A compat layer's link to one of :data:`COMPAT_HOST_FILES`, lying directly in the layer's etc."""
    if ctx.name.content_type != "compat" or target not in COMPAT_HOST_FILES:
        return False
    # parts: <version>, compat, <os>, <arch>, etc, <name>
    return len(parts) == 6 and parts[1] == "compat" and parts[4] == "etc"


def _symlink_problems(info: tarfile.TarInfo, parts: Sequence[str], ctx: CheckContext) -> list[str]:
    target = info.linkname
    if not target:
        return ["symlink has an empty target"]
    problems = _text_problems(f"symlink target {printable(target)!r}", target)
    if not parts:
        return problems
    top = parts[0]
    if target.startswith("/"):
        resolved = posixpath.normpath(target)
        fields = resolved.split("/")  # ['', 'cvmfs', <repo>, 'versions', <top>, ...]
        inside = (
            len(fields) >= 5
            and fields[:2] == ["", "cvmfs"]
            and bool(_REPO_NAME.fullmatch(fields[2]))
            and (ctx.repository is None or fields[2] == ctx.repository)
            and fields[3:5] == ["versions", top]
        )
        if not inside and _allowed_host_link(target, parts, ctx):
            return problems
        if not inside:
            repo = ctx.repository or "<repo>"
            problems.append(
                f"absolute symlink target {printable(target)!r} is outside /cvmfs/{repo}/versions/{top}/"
            )
        return problems
    resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if len(parts) > 1 else target)
    if resolved.split("/")[0] != top:
        problems.append(
            f"symlink target {printable(target)!r} resolves to {printable(resolved)!r}, "
            f"outside the version directory {top!r}"
        )
    return problems


NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4096  # bytes in a path, its terminating NUL included (Linux PATH_MAX)
MAX_DEPTH = 256  # path components: deeper trees are refused before anything recurses over them


def length_problems(what: str, text: str) -> list[str]:
    """A path (member name or link target) longer than Linux allows, or deeper than :data:`MAX_DEPTH`."""
    raw = text.encode("utf-8", "surrogateescape")
    problems = []
    if len(raw) >= PATH_MAX:
        problems.append(f"{what} is {len(raw)} bytes long; paths are limited to {PATH_MAX - 1} (PATH_MAX)")
    longest = max(map(len, raw.split(b"/")))
    if longest > NAME_MAX:
        problems.append(
            f"{what} has a {longest}-byte component; names are limited to {NAME_MAX} bytes (NAME_MAX)"
        )
    depth = len(_components(text))
    if depth > MAX_DEPTH:
        problems.append(f"{what} is {depth} levels deep; at most {MAX_DEPTH} are accepted")
    return problems


# A name of which every component starts with a letter, digit or one of a few safe signs and goes on
# with those or dots: relative, printable ASCII, no '.', '..' or empty component, no .cvmfscatalog.
_PLAIN_NAME = re.compile(r"[\w+@%,=~-][\w.+@%,=~-]*(?:/[\w+@%,=~-][\w.+@%,=~-]*)*/?", re.ASCII)
_PLAIN_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE})


def _plain(info: tarfile.TarInfo) -> bool:
    """A regular file or directory with a plain name of sane length and depth and no special mode
    bits: :func:`basic_member_problems` has nothing to say about it (a test holds the two together)."""
    name = info.name
    return (
        info.type in _PLAIN_TYPES
        and info.sparse is None
        and not info.mode & 0o7000
        and len(name) < PATH_MAX
        and name.count("/") < MAX_DEPTH
        and _PLAIN_NAME.fullmatch(name) is not None
        and max(map(len, name.split("/"))) <= NAME_MAX
    )


def basic_member_problems(info: tarfile.TarInfo, earlier_files: Set[str] = frozenset()) -> list[str]:
    """What every ingest refuses, whatever the tarball is called: bad names (absolute, ``..``, empty,
    not UTF-8, control characters, too long or deep), devices, fifos, sparse and unknown member
    types, setuid/setgid/sticky bits, symlinks with an empty, unreadable or over-long target, hard
    links to anything but an earlier regular file, and a ``.cvmfscatalog`` that is no regular file."""
    if _plain(info):  # most members of a software tarball: nothing to refuse, nothing to look at
        return []
    return _member_problems(info, earlier_files)


def _member_problems(info: tarfile.TarInfo, earlier_files: Set[str]) -> list[str]:
    problems = _text_problems("name", info.name)
    problems.extend(length_problems("name", info.name))
    parts = _components(info.name)
    if info.name.startswith("/"):
        problems.append("absolute path (member names must be relative to the versions directory)")
    if ".." in info.name.split("/"):
        problems.append("path has a '..' component")
    if not parts:
        problems.append("empty name (the archive root itself)")
    if info.issym():
        if not info.linkname:
            problems.append("symlink has an empty target")
        else:
            shown = f"symlink target {printable(info.linkname)!r}"
            problems.extend(_text_problems(shown, info.linkname))
            problems.extend(length_problems(shown, info.linkname))
    elif info.islnk():
        problems.extend(_text_problems(f"hard link target {printable(info.linkname)!r}", info.linkname))
        if normalise_member_name(info.linkname) not in earlier_files or info.linkname.startswith("/"):
            target = printable(info.linkname)
            problems.append(f"hard link target {target!r} is not an earlier regular file of this tarball")
    elif info.ischr() or info.isblk() or info.isfifo():
        problems.append(f"{_kind(info)} (device files and fifos are not allowed)")
    elif info.issparse():
        problems.append("sparse file (not supported: pack it without --sparse)")
    elif not (info.isreg() or info.isdir()):
        problems.append(f"unsupported member type {info.type!r}")
    special = [label for bit, label in _SPECIAL_BITS if info.mode & bit]
    if special:
        problems.append(f"mode {info.mode:04o} sets {'/'.join(special)}")
    if parts and parts[-1] == CATALOG_MARKER and not info.isreg():
        problems.append(f"{CATALOG_MARKER!r} is a {_kind(info)}, not a regular file")
    return problems


def check_member(
    info: tarfile.TarInfo, ctx: CheckContext, earlier_files: Set[str] = frozenset()
) -> list[str]:
    """Every problem of one member on its own (duplicates and mixed top-level directories need the whole
    archive: see :func:`scan_members`).  ``earlier_files``: normalised names of the regular files before it
    that had no problem, the only allowed hard-link targets."""
    problems = basic_member_problems(info, earlier_files)
    parts = _components(info.name)
    if parts and ".." not in parts and not info.name.startswith("/"):
        problems.extend(_layout_problems(info, parts, ctx))
    if info.issym() and info.linkname:
        problems.extend(p for p in _symlink_problems(info, parts, ctx) if p not in problems)
    if info.size > ctx.max_member_size:
        problems.append(f"size {info.size} exceeds the limit of {ctx.max_member_size} bytes")
    return problems
