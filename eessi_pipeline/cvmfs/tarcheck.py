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

import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import TarballRejected
from .tarmember import (
    CATALOG_MARKER,
    COMPAT_HOST_FILES,
    DEFAULT_MAX_MEMBER_SIZE,
    MAX_DEPTH,
    NAME_MAX,
    PATH_MAX,
    CheckContext,
    Problem,
    basic_member_problems,
    check_member,
    length_problems,
    normalise_member_name,
)
from .tarname import (
    ARCHES,
    CONTENT_TYPES,
    EXTENSIONS,
    OSES,
    TYPES_WITH_ARCH,
    VERSION_SUFFIX,
    TarballName,
    parse_tarball_name,
    printable,
)
from .tarstream import StreamError, TarballStream

# The names of tarname.py (tarball names) and tarmember.py (single members) are exported here too, as
# before they moved there.
__all__ = [
    "ARCHES",
    "CATALOG_MARKER",
    "COMPAT_HOST_FILES",
    "CONTENT_TYPES",
    "DEFAULT_MAX_MEMBER_SIZE",
    "EXTENSIONS",
    "MAX_DEPTH",
    "MAX_LISTED_PROBLEMS",
    "NAME_MAX",
    "OSES",
    "PATH_MAX",
    "CheckContext",
    "Problem",
    "ScanResult",
    "TarballName",
    "TarballProblems",
    "TarballReport",
    "basic_member_problems",
    "check_member",
    "check_tarball",
    "length_problems",
    "normalise_member_name",
    "parse_tarball_name",
    "printable",
    "scan_members",
]

MAX_LISTED_PROBLEMS = 500


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
            depth = 4 if len(parts) > 1 and parts[1] in TYPES_WITH_ARCH else 2
            if len(parts) >= depth:
                self.roots.add("/".join(parts[:depth]))
        if info.isreg():
            self.size += info.size
            if not reasons:
                self.files.add(key)
                self.catalog = self.catalog or parts[-1] == CATALOG_MARKER
        if reasons:
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
        if base != name.version or (suffix and not VERSION_SUFFIX.fullmatch(suffix)):
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
