"""Validate an EESSI-style tarball before anything is written to a repository.

What is checked mirrors EESSI's ``ingest-tarball.sh`` (version, content type, os
and arch, as EESSI names its tarballs)
and adds the member checks that ``cvmfs_server ingest`` and ``tar -x`` need to be
safe: no absolute or ``..`` paths, no links out of the version tree, no device
files, fifos or setuid/setgid/sticky bits, no duplicates, valid UTF-8 names, a
size limit per member, and ``.cvmfscatalog`` markers that are regular files.

The archive is read as a stream (gzip, plain, or zstd when the ``zstandard``
module is installed); no member is ever extracted and nothing is written.

Decisions (the spec leaves them open):

* **Name.** ``eessi-<version>-<type>[-<os>-<arch>][-<more>…]-<epoch>.<ext>``
  with ``<ext>`` one of ``tar.gz``, ``tar.zst``, ``tar``.  ``<version>`` is
  ``20YY.MM`` (month 01-12; EESSI's regex also lets month 00 through) or a real
  date ``20YYMMDD``.  The name never carries a version suffix: like
  ``ingest-tarball.sh`` (which takes field 2 of ``-``), ``eessi-2025.06-001-…``
  is rejected because ``001`` is not a content type.  ``software`` and
  ``compat`` names must carry ``<os>-<arch>``; ``init`` and ``scripts`` names
  may (EESSI's own init tarballs are ``eessi-<version>-init-<epoch>.tar.gz``):
  there, a known os right after the type means an arch must follow, anything
  else is ``rest``.  Every ``rest`` part is ``[A-Za-z0-9][A-Za-z0-9_.]*`` (e.g.
  ``amd``, ``zen4``, ``accel``, ``nvidia``, ``cc90``, a dev.eessi.io project);
  ``<epoch>`` is decimal digits.
* **Top-level directory.** Every member lies under one top-level directory: the
  name's version, or ``<version>-<suffix>`` with ``<suffix>`` of
  ``[0-9A-Za-z._]`` (``ingest-tarball.sh`` strips such a suffix before
  comparing; EESSI_VERSION_OVERRIDE=2025.06-001 uses it).  With
  ``expected_version`` the top-level directory must equal it exactly, and the
  name's version must equal it without its suffix.  A bare ``./`` entry is not
  under the version directory and is rejected.
* **Content type.** The second level must be the name's type.  A ``software``
  tarball may also carry ``<version>/init/…`` and ``<version>/scripts/…``: the
  EESSI bot packs those into software tarballs (which is why
  ``ingest-tarball.sh`` disabled its own content-type check).  ``software`` and
  ``compat`` trees continue ``<os>/<arch>/…`` equal to the name's os and arch.
  Members at the layout levels themselves (``<version>``, ``<version>/<type>``,
  ``…/<os>``, ``…/<os>/<arch>``) must be directories.  The name's ``rest`` (CPU
  subdir, accelerator, project) is not compared with the path, as in
  ``ingest-tarball.sh``.
* **Symlinks.** A relative target is resolved textually against the member's
  directory (``posixpath.normpath``) and must end inside the member's top-level
  version directory (the directory itself included).  An absolute target is
  allowed only into the same version tree of a repository:
  ``/cvmfs/<repo>/versions/<top-level>[/…]`` (``<repo>`` must equal
  ``repository`` when one is given).  The one reviewed exception: a ``compat``
  tarball may link to exactly the host files in :data:`COMPAT_HOST_FILES`
  (``/etc/passwd``, ``/etc/group``, ``/etc/hosts``, ``/etc/resolv.conf``,
  ``/etc/nsswitch.conf``, ``/etc/localtime``), which a compatibility layer must
  take from the host, as EESSI's do.  The target must be one of those paths
  exactly (no ``..``, no other file under ``/etc``), and the link must lie
  directly in the layer's own ``etc`` directory
  (``<version>/compat/<os>/<arch>/etc/<name>``); every other absolute target,
  and any host link in another content type, is rejected.
* **Hard links** must name a regular-file member that came earlier in the
  archive and had no problem itself.
* **Modes.** setuid, setgid and sticky bits are refused on every member,
  directories included (a build tree with setgid directories must be packed
  with ``--mode=g-s`` or similar).
* **Names** with control characters are rejected as well (a newline could
  forge a line of the report).  Messages show names with invalid bytes as
  ``\\xNN`` and control characters escaped (see :func:`printable`).
* **Archive structure.** Other tar readers must not see members that this
  check did not, so these are rejected too: bytes skipped before a member (an
  early end-of-archive marker, a corrupt header, concatenated archives),
  non-zero bytes after the last member, a missing end-of-archive marker (a
  tarball truncated at a member boundary) and global pax headers.  gzip's CRC
  and length are verified; zstd frames are all read.
* **Reporting.** Name errors, a name/``expected_version`` mismatch and an
  unreadable archive raise at once; member problems are all collected and
  raised together as :class:`TarballProblems` (a TarballRejected), whose message
  lists up to :data:`MAX_LISTED_PROBLEMS` of them, one per line (its
  ``problems`` holds all).
"""

from __future__ import annotations

import datetime
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterable, Set
from dataclasses import dataclass
from pathlib import Path

from ..errors import TarballRejected
from .tarstream import StreamError, TarballStream

__all__ = [
    "ARCHES",
    "COMPAT_HOST_FILES",
    "CONTENT_TYPES",
    "DEFAULT_MAX_MEMBER_SIZE",
    "EXTENSIONS",
    "MAX_LISTED_PROBLEMS",
    "OSES",
    "CheckContext",
    "Problem",
    "ScanResult",
    "TarballName",
    "TarballProblems",
    "TarballReport",
    "check_member",
    "check_tarball",
    "normalise_member_name",
    "parse_tarball_name",
    "printable",
    "scan_members",
]

CONTENT_TYPES = ("compat", "init", "scripts", "software")
OSES = ("linux", "macos")
ARCHES = ("aarch64", "ppc64le", "riscv64", "x86_64")
EXTENSIONS = (".tar.gz", ".tar.zst", ".tar")  # longest first where one ends another
DEFAULT_MAX_MEMBER_SIZE = 8 * 1024**3
MAX_LISTED_PROBLEMS = 500
CATALOG_MARKER = ".cvmfscatalog"

_TYPES_WITH_ARCH = frozenset({"compat", "software"})
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
_NAME_FORM = "eessi-<version>-<type>[-<os>-<arch>][-<more>]-<epoch>.tar.gz|.tar.zst|.tar"
_VERSION_DOTTED = re.compile(r"20[0-9]{2}\.(0[1-9]|1[0-2])")
_VERSION_DATE = re.compile(r"20[0-9]{6}")
_VERSION_SUFFIX = re.compile(r"[0-9A-Za-z._]+")
_REST_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")
_EPOCH = re.compile(r"[0-9]+")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SPECIAL_BITS = ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"), (stat.S_ISVTX, "sticky"))


# -- names ----------------------------------------------------------------------------------------------


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


def parse_tarball_name(name: str) -> TarballName:  # noqa: C901 (to split: docs/architecture.md)
    """Split an EESSI tarball file name (a base name, no directory) into its parts.

    Raises TarballRejected naming the file, the bad part and the expected form.
    """
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
    version, content_type, epoch, middle = fields[1], fields[2], fields[-1], fields[3:-1]
    if not _is_version(version):
        raise _name_error(name, f"version {version!r} is invalid", "YYYY.MM (e.g. 2023.06) or YYYYMMDD")
    if content_type not in CONTENT_TYPES:
        raise _name_error(
            name, f"content type {content_type!r} is unknown", "one of " + ", ".join(CONTENT_TYPES)
        )
    os_: str | None = None
    arch: str | None = None
    if content_type in _TYPES_WITH_ARCH or (middle and middle[0] in OSES):
        if not middle:
            raise _name_error(name, f"no os after {content_type!r}", "one of " + ", ".join(OSES))
        if middle[0] not in OSES:
            raise _name_error(name, f"os {middle[0]!r} is unknown", "one of " + ", ".join(OSES))
        if len(middle) < 2:
            raise _name_error(name, f"no arch after os {middle[0]!r}", "one of " + ", ".join(ARCHES))
        if middle[1] not in ARCHES:
            raise _name_error(name, f"arch {middle[1]!r} is unknown", "one of " + ", ".join(ARCHES))
        os_, arch, middle = middle[0], middle[1], middle[2:]
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


# -- members --------------------------------------------------------------------------------------------


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
        return top.startswith(version + "-") and bool(_VERSION_SUFFIX.fullmatch(top[len(version) + 1 :]))

    def expected_top(self) -> str:
        return (
            self.top_dir
            if self.top_dir is not None
            else f"{self.name.version}' or '{self.name.version}-<suffix>"
        )


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


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _components(name: str) -> list[str]:
    return [c for c in name.split("/") if c not in ("", ".")]


def normalise_member_name(name: str) -> str:
    """The member's path as it lands in the repository: ``./``, ``.`` components, doubled, leading and
    trailing ``/`` removed (``..`` is kept; it is refused separately)."""
    return "/".join(_components(name))


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "regular file"
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hard link"
    if info.ischr():
        return "character device"
    if info.isblk():
        return "block device"
    if info.isfifo():
        return "fifo"
    return f"member of unsupported type {info.type!r}"


def _text_problems(what: str, text: str) -> list[str]:
    problems = []
    if not _is_utf8(text):
        problems.append(f"{what} is not valid UTF-8")
    if _CONTROL.search(text):
        problems.append(f"{what} contains a control character")
    return problems


def _layout_problems(info: tarfile.TarInfo, parts: list[str], ctx: CheckContext) -> list[str]:
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
    depth = 4 if second in _TYPES_WITH_ARCH else 2
    problems = []
    if second in _TYPES_WITH_ARCH:
        for level, (label, wanted) in enumerate((("os", name.os), ("arch", name.arch)), start=2):
            if len(parts) > level and parts[level] != wanted:
                problems.append(
                    f"{label} directory {parts[level]!r} does not match the name's {label} {wanted!r} "
                    f"(expected {top}/{second}/{name.os}/{name.arch}/…)"
                )
    if len(parts) <= depth and not info.isdir():
        problems.append(f"{'/'.join(parts)!r} is a layout directory but this member is a {_kind(info)}")
    return problems


def _allowed_host_link(target: str, parts: list[str], ctx: CheckContext) -> bool:
    """A compat layer's link to one of :data:`COMPAT_HOST_FILES`, lying directly in the layer's etc."""
    if ctx.name.content_type != "compat" or target not in COMPAT_HOST_FILES:
        return False
    # parts: <version>, compat, <os>, <arch>, etc, <name>
    return len(parts) == 6 and parts[1] == "compat" and parts[4] == "etc"


def _symlink_problems(info: tarfile.TarInfo, parts: list[str], ctx: CheckContext) -> list[str]:
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
    longest = max((len(c) for c in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        problems.append(
            f"{what} has a {longest}-byte component; names are limited to {NAME_MAX} bytes (NAME_MAX)"
        )
    depth = len(_components(text))
    if depth > MAX_DEPTH:
        problems.append(f"{what} is {depth} levels deep; at most {MAX_DEPTH} are accepted")
    return problems


def basic_member_problems(info: tarfile.TarInfo, earlier_files: Set[str] = frozenset()) -> list[str]:
    """What every ingest refuses, whatever the tarball is called: bad names (absolute, ``..``, empty,
    not UTF-8, control characters, too long or deep), devices, fifos, sparse and unknown member
    types, setuid/setgid/sticky bits, symlinks with an empty, unreadable or over-long target, hard
    links to anything but an earlier regular file, and a ``.cvmfscatalog`` that is no regular file."""
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
    if parts and ".." not in info.name.split("/") and not info.name.startswith("/"):
        problems.extend(_layout_problems(info, parts, ctx))
    if info.issym() and info.linkname:
        problems.extend(p for p in _symlink_problems(info, parts, ctx) if p not in problems)
    if info.size > ctx.max_member_size:
        problems.append(f"size {info.size} exceeds the limit of {ctx.max_member_size} bytes")
    return problems


# -- whole archives -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Problems and totals of a sequence of members."""

    problems: tuple[Problem, ...]
    member_count: int
    total_size: int  # declared sizes of regular files
    top_level_paths: tuple[str, ...]  # distinct first components, sorted
    content_roots: tuple[str, ...]  # distinct <top>/<type>[/<os>/<arch>] prefixes, sorted
    has_cvmfscatalog: bool
    top_dir: str | None  # the first accepted top-level directory


class _Scanner:
    """Accumulates the per-archive state (seen names, earlier regular files, the top-level directory)."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self.problems: list[Problem] = []
        self.seen: set[str] = set()
        self.files: set[str] = set()
        self.tops: set[str] = set()
        self.roots: set[str] = set()
        self.top: str | None = None
        self.count = 0
        self.size = 0
        self.catalog = False

    def add(self, info: tarfile.TarInfo) -> None:
        self.count += 1
        reasons = check_member(info, self.ctx, self.files)
        key = normalise_member_name(info.name)
        parts = key.split("/") if key else []
        if key in self.seen:
            reasons.append("duplicate of an earlier member (after normalising './' and '/')")
        self.seen.add(key)
        if parts:
            self.tops.add(parts[0])
            if self.ctx.accepts_top(parts[0]):
                if self.top is None:
                    self.top = parts[0]
                elif parts[0] != self.top:
                    reasons.append(
                        f"top-level directory {parts[0]!r} differs from {self.top!r} of earlier members"
                    )
            depth = 4 if len(parts) > 1 and parts[1] in _TYPES_WITH_ARCH else 2
            if len(parts) >= depth:
                self.roots.add("/".join(parts[:depth]))
        if info.isreg():
            self.size += info.size
            if not reasons:
                self.files.add(key)
                self.catalog = self.catalog or parts[-1] == CATALOG_MARKER
        self.problems.extend(Problem(info.name, r) for r in reasons)

    def note(self, problem: Problem) -> None:
        self.problems.append(problem)

    def result(self) -> ScanResult:
        problems = list(self.problems)
        if self.count == 0:
            problems.append(Problem(None, "the tarball has no members"))
        return ScanResult(
            problems=tuple(problems),
            member_count=self.count,
            total_size=self.size,
            top_level_paths=tuple(sorted(self.tops)),
            content_roots=tuple(sorted(self.roots)),
            has_cvmfscatalog=self.catalog,
            top_dir=self.top,
        )


def scan_members(members: Iterable[tarfile.TarInfo], ctx: CheckContext) -> ScanResult:
    """Check members in archive order and collect every problem (pure: nothing is read or written)."""
    scanner = _Scanner(ctx)
    for info in members:
        scanner.add(info)
    return scanner.result()


@dataclass(frozen=True, slots=True)
class TarballReport:
    """A tarball that passed every check."""

    path: Path
    name: TarballName
    top_dir: str  # the one top-level directory: the version, possibly with a suffix
    member_count: int
    total_size: int
    top_level_paths: tuple[str, ...]
    content_roots: tuple[str, ...]
    has_cvmfscatalog: bool


class TarballProblems(TarballRejected):
    """A tarball was refused for member problems; ``problems`` holds every one of them."""

    def __init__(self, tarball: str, problems: Iterable[Problem]) -> None:
        self.tarball = tarball
        self.problems = tuple(problems)
        lines = [p.line(tarball) for p in self.problems[:MAX_LISTED_PROBLEMS]]
        hidden = len(self.problems) - len(lines)
        if hidden:
            lines.append(f"{printable(tarball)}: … and {hidden} more problems")
        head = (
            f"{printable(tarball)}: rejected with {len(self.problems)} problem(s), nothing was written; "
            "fix the build that made it and upload a new tarball:"
        )
        super().__init__("\n".join([head, *lines]))


def check_tarball(
    path: Path,
    *,
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
    expected_version: str | None = None,
    repository: str | None = None,
) -> TarballReport:
    """Validate ``path`` without extracting it; return its report or raise TarballRejected.

    Name errors, a version other than ``expected_version`` and an unreadable archive raise at once; member
    problems are all collected and raised together as :class:`TarballProblems`.
    """
    name = parse_tarball_name(path.name)
    shown = printable(path.name)
    if expected_version is not None:
        base, _, suffix = expected_version.partition("-")
        if base != name.version or (suffix and not _VERSION_SUFFIX.fullmatch(suffix)):
            raise TarballRejected(
                f"{shown}: version {name.version!r} in the name does not match the expected version "
                f"{expected_version!r}; build the tarball for {expected_version} or publish it to its own "
                "version"
            )
    ctx = CheckContext(
        name=name, max_member_size=max_member_size, top_dir=expected_version, repository=repository
    )
    scanner = _Scanner(ctx)
    try:
        with TarballStream(path, shown) as stream:
            for info in stream.members():
                scanner.add(info)
            for problem in stream.finish():
                scanner.note(Problem(problem.member, problem.reason))
    except StreamError as e:
        raise TarballRejected(
            f"{shown}: cannot be read as a {name.extension.lstrip('.')} archive ({e}); "
            "check the upload and re-create the tarball"
        ) from e.__cause__
    result = scanner.result()
    if result.problems:
        raise TarballProblems(path.name, result.problems)
    assert result.top_dir is not None  # at least one member, each under the accepted top-level directory
    return TarballReport(
        path=path,
        name=name,
        top_dir=result.top_dir,
        member_count=result.member_count,
        total_size=result.total_size,
        top_level_paths=result.top_level_paths,
        content_roots=result.content_roots,
        has_cvmfscatalog=result.has_cvmfscatalog,
    )
