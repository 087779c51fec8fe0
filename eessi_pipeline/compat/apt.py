"""Debian packages of the host's release: private apt state, dependency closure, downloads.

apt runs with its own state and cache under ``<cache>/apt/<arch>`` (lists, an empty
dpkg status), reading the host's source lists: the closure is computed as for an
empty system, it works without root, and an ``aarch64`` layer only needs another
architecture option.  Argument vectors and the parsing of apt's output are pure
functions; :class:`Apt` runs them through :func:`eessi_pipeline.proc.run`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CompatError
from ..proc import CommandFailed, CommandResult, run

log = logging.getLogger(__name__)

UPDATE_TIMEOUT = 600.0
QUERY_TIMEOUT = 120.0
DOWNLOAD_TIMEOUT = 1800.0
_DEPENDS_OPTIONS = (
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
)


@dataclass(frozen=True, slots=True)
class Alternative:
    """One name of a dependency group; a virtual package carries the packages that provide it."""

    name: str
    virtual: bool = False
    providers: tuple[str, ...] = ()


Depends = dict[str, list[list[Alternative]]]
"""Package → its dependency groups (each group: alternatives, any one of which satisfies it)."""


def parse_depends(text: str) -> Depends:
    """Parse ``apt-cache depends`` output (Depends and PreDepends only; other relations are ignored).

    A line ``' |Depends: a'`` starts or continues a group of alternatives that the next
    ``'  Depends: b'`` closes; ``<name>`` is a virtual package whose providers follow,
    indented by four spaces.  A top-level ``<name>`` line is a virtual package asked for
    directly: it gets no entry.
    """
    out: Depends = {}
    current: list[list[Alternative]] | None = None
    group: list[Alternative] = []
    last: Alternative | None = None
    pending_providers: list[str] = []

    def flush_providers() -> None:
        nonlocal last
        if last is not None and last.virtual and pending_providers:
            replaced = Alternative(last.name, True, tuple(pending_providers))
            target = group if group and group[-1] is last else (current[-1] if current else [])
            if target and target[-1] is last:
                target[-1] = replaced
            last = replaced
        pending_providers.clear()

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            flush_providers()
            name = line.strip()
            current = None if name.startswith("<") else out.setdefault(name, [])
            group, last = [], None
            continue
        if current is None:
            continue
        if line.startswith("    "):  # a provider of the virtual package just listed
            if last is not None and last.virtual:
                pending_providers.append(line.strip())
            continue
        flush_providers()
        m = re.match(r"^ (\||\s)([A-Za-z]+): (.+)$", line)
        if not m:
            continue
        continued, relation, raw = m.group(1) == "|", m.group(2), m.group(3).strip()
        if relation not in ("Depends", "PreDepends"):
            group, last = [], None
            continue
        virtual = raw.startswith("<") and raw.endswith(">")
        name = raw.strip("<>").split(":", 1)[0]  # python3:any -> python3
        alt = Alternative(name, virtual)
        group.append(alt)
        last = alt
        if not continued:
            current.append(group)
            group = []
    flush_providers()
    return out


@dataclass(frozen=True, slots=True)
class Closure:
    """The packages to install, and for each the package that pulled it in (None for the roots)."""

    packages: tuple[str, ...]
    pulled_by: Mapping[str, str | None] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)  # excluded dependency -> who asked for it

    def why(self, package: str) -> str:
        """The chain that brings ``package`` into the layer, e.g. ``tzdata <- python3.11 <- python3``."""
        if package not in self.pulled_by:
            return f"{package} is not in the layer"
        chain = [package]
        seen = {package}
        parent = self.pulled_by[package]
        while parent is not None and parent not in seen:
            chain.append(parent)
            seen.add(parent)
            parent = self.pulled_by.get(parent)
        return " <- ".join(chain)


def resolve(
    roots: Sequence[str],
    query: Callable[[Sequence[str]], Depends],
    excluded: Iterable[str] = (),
) -> Closure:
    """The dependency closure of ``roots``, breadth first, asking ``query`` once per level.

    A group already satisfied by a chosen package is skipped; a group naming an excluded
    package is dropped (recorded in ``skipped``); otherwise its first real package is taken,
    or the first provider of its first virtual package.
    """
    excl = frozenset(excluded)
    bad_roots = [r for r in roots if r in excl]
    if bad_roots:
        raise CompatError(
            f"packages {', '.join(bad_roots)} are both asked for and excluded; fix the package set"
        )
    chosen: dict[str, str | None] = {r: None for r in roots}
    skipped: dict[str, str] = {}
    frontier = list(dict.fromkeys(roots))
    while frontier:
        deps = query(frontier)
        missing = [p for p in frontier if p not in deps]
        if missing:
            raise CompatError(
                f"apt knows no package {', '.join(missing)} for this architecture; check the names in the "
                "package set (apt-cache policy NAME), or run the build with --refresh to update the lists"
            )
        nxt: list[str] = []
        for pkg in frontier:
            for grp in deps[pkg]:
                names = [a.name for a in grp] + [p for a in grp for p in a.providers]
                if any(n in chosen for n in names):
                    continue
                hit = next((n for n in names if n in excl), None)
                if hit is not None:
                    skipped.setdefault(hit, pkg)
                    continue
                pick = next((a.name for a in grp if not a.virtual), None)
                if pick is None:
                    pick = next((p for a in grp for p in a.providers if p not in excl), None)
                if pick is None:
                    raise CompatError(
                        f"{pkg} depends on {' | '.join(a.name for a in grp)}, which no package provides; "
                        "add a provider to the package set or exclude the dependency with its reason"
                    )
                chosen[pick] = pkg
                nxt.append(pick)
        frontier = nxt
    return Closure(tuple(sorted(chosen)), dict(chosen), skipped)


@dataclass(frozen=True, slots=True)
class DebFile:
    """One .deb as ``apt-get download --print-uris`` describes it."""

    uri: str
    filename: str
    size: int
    sha256: str | None

    @property
    def package(self) -> str:
        return self.filename.split("_", 1)[0]

    @property
    def version(self) -> str:
        parts = self.filename.split("_")
        return parts[1].replace("%3a", ":") if len(parts) > 2 else ""


def parse_print_uris(text: str) -> list[DebFile]:
    """Parse ``'URI' FILENAME SIZE HASH`` lines of ``apt-get download --print-uris``."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^'([^']+)'\s+(\S+)\s+(\d+)\s*(\S*)$", line.strip())
        if not m:
            continue
        digest = m.group(4)
        sha = digest.split(":", 1)[1].lower() if digest.upper().startswith("SHA256:") else None
        out.append(DebFile(m.group(1), m.group(2), int(m.group(3)), sha))
    return out


def file_ok(path: Path, deb: DebFile) -> bool:
    """Whether a cached download is complete and intact."""
    try:
        if path.stat().st_size != deb.size:
            return False
    except OSError:
        return False
    if deb.sha256 is None:
        return True
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == deb.sha256


@dataclass(frozen=True, slots=True)
class Apt:
    """apt with private state for one dpkg architecture; ``root`` holds lists, status and cache."""

    root: Path
    architecture: str

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o",
            f"Dir::State={r / 'state'}",
            "-o",
            f"Dir::State::status={r / 'status'}",
            "-o",
            f"Dir::Cache={r / 'cache'}",
            "-o",
            f"APT::Architecture={self.architecture}",
            "-o",
            f"APT::Architectures::={self.architecture}",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "APT::Sandbox::User=root",
            "-o",
            "Debug::NoLocking=true",
        ]

    def update_argv(self) -> list[str]:
        return ["apt-get", "-q", *self.options(), "update"]

    def depends_argv(self, packages: Sequence[str]) -> list[str]:
        return ["apt-cache", *self.options(), "depends", *_DEPENDS_OPTIONS, *packages]

    def uris_argv(self, packages: Sequence[str]) -> list[str]:
        return ["apt-get", "-q", *self.options(), "download", "--print-uris", *packages]

    def download_argv(self, packages: Sequence[str]) -> list[str]:
        return ["apt-get", "-q", *self.options(), "download", *packages]

    @property
    def has_lists(self) -> bool:
        lists = self.root / "state" / "lists"
        return lists.is_dir() and any(
            p.name.endswith(("Packages", ".lz4", ".gz", ".xz")) for p in lists.iterdir()
        )

    def prepare(self, refresh: bool) -> None:
        """Create the private state; fetch the package lists when there are none yet or ``refresh``."""
        for d in (self.root / "state" / "lists" / "partial", self.root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        status = self.root / "status"
        if not status.exists():
            status.write_text("", encoding="utf-8")
        if refresh or not self.has_lists:
            log.info("updating the package lists for %s in %s", self.architecture, self.root)
            self._run(self.update_argv(), UPDATE_TIMEOUT, "fetch the package lists")

    def depends(self, packages: Sequence[str]) -> Depends:
        result = self._run(self.depends_argv(packages), QUERY_TIMEOUT, "resolve dependencies")
        return parse_depends(result.stdout)

    def closure(self, roots: Sequence[str], excluded: Iterable[str]) -> Closure:
        return resolve(roots, self.depends, excluded)

    def locate(self, packages: Sequence[str]) -> list[DebFile]:
        result = self._run(self.uris_argv(packages), QUERY_TIMEOUT, "find the package files")
        debs = parse_print_uris(result.stdout)
        found = {d.package for d in debs}
        lost = [p for p in packages if p not in found]
        if lost:
            raise CompatError(
                f"apt gave no download for {', '.join(lost)}; run the build with --refresh to update the "
                "package lists"
            )
        return debs

    def download(self, debs: Sequence[DebFile], into: Path) -> list[Path]:
        """Download what is not already intact in ``into``; return the paths of all of ``debs``."""
        into.mkdir(parents=True, exist_ok=True)
        todo = [d for d in debs if not file_ok(into / d.filename, d)]
        if todo:
            log.info("downloading %d of %d packages into %s", len(todo), len(debs), into)
            names = [f"{d.package}={d.version}" for d in todo]
            self._run(self.download_argv(names), DOWNLOAD_TIMEOUT, "download the packages", cwd=into)
        broken = [d.filename for d in debs if not file_ok(into / d.filename, d)]
        if broken:
            raise CompatError(
                f"downloads incomplete or corrupt in {into}: {', '.join(broken)}; delete them and build again"
            )
        return [into / d.filename for d in debs]

    def _run(self, argv: list[str], timeout: float, what: str, cwd: Path | None = None) -> CommandResult:
        try:
            return run(argv, timeout=timeout, cwd=cwd)
        except CommandFailed as e:
            raise CompatError(
                f"apt could not {what} for {self.architecture}: {e}\n"
                "check the host's apt sources (/etc/apt/sources.list*) and its access to the Debian archive"
            ) from e
