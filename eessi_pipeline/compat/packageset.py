"""Package sets: what goes into a compatibility layer, as data (``matrices/compat/<family>.yaml``).

Loaded and checked in one call (:func:`load_package_set`): the JSON schema
``compat-packages.schema.json`` first, then what a schema cannot say (the family
equals the file name, unique package names, host files the tarball check accepts,
regular expressions that compile, links that stay inside the layer).  Every problem
is reported at once as :class:`CompatError` naming file, entry, key and fix.  No raw
dict travels past the loader.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cvmfs.tarcheck import COMPAT_HOST_FILES
from ..errors import CompatError
from ..matrix import PROJECT_ROOT
from ..schema import validate
from ..yamlio import load_yaml

#: Where package sets live: ``<dir>/<family>.yaml``.
PACKAGE_SET_DIR = PROJECT_ROOT / "matrices" / "compat"


#: Logical packages every compatibility layer must have (EESSI's minimal userland).
REQUIRED_PACKAGES = (
    "glibc",
    "bash",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "gawk",
    "tar",
    "gzip",
    "bzip2",
    "xz",
    "make",
    "patch",
    "patchelf",
    "binutils",
    "python3",
    "curl",
    "openssl",
    "Lmod",
    "archspec",
)


@dataclass(frozen=True, slots=True)
class Tool:
    """A command that must run inside the layer; ``expect`` is a regex its output must contain."""

    command: str
    args: tuple[str, ...]
    expect: str

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.command, *self.args)

    @property
    def label(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True, slots=True)
class Package:
    """One logical package, mapped to Debian packages and/or PyPI requirements and to Gentoo atoms."""

    name: str
    debian: tuple[str, ...]
    pypi: tuple[str, ...]
    gentoo: tuple[str, ...]
    relocate_text: tuple[str, ...]
    tools: tuple[Tool, ...]


@dataclass(frozen=True, slots=True)
class Reason:
    """A key (a package or a glob) with the reason it is there."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class DebianSettings:
    architecture: str
    triplet: str
    exclude: tuple[Reason, ...]
    prune: tuple[Reason, ...]

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(r.key for r in self.exclude)


@dataclass(frozen=True, slots=True)
class GentooSettings:
    profile: str
    mirror: str
    repository: str


@dataclass(frozen=True, slots=True)
class Link:
    path: str
    target: str


def _once_each(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in their first order, each once."""
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class PackageSet:
    """A loaded, checked package set."""

    path: Path
    sha256: str
    family: str
    description: str
    debian: DebianSettings
    gentoo: GentooSettings
    host_files: tuple[str, ...]
    locales: tuple[str, ...]
    links: tuple[Link, ...]
    packages: tuple[Package, ...]

    @property
    def debian_packages(self) -> tuple[str, ...]:
        """The Debian packages named by the set (roots of the dependency closure), in order, once each."""
        return _once_each(d for p in self.packages for d in p.debian)

    @property
    def pypi_requirements(self) -> tuple[str, ...]:
        return tuple(r for p in self.packages for r in p.pypi)

    @property
    def gentoo_atoms(self) -> tuple[str, ...]:
        return _once_each(a for p in self.packages for a in p.gentoo)

    @property
    def tools(self) -> tuple[Tool, ...]:
        return tuple(t for p in self.packages for t in p.tools)

    @property
    def relocate_text(self) -> tuple[str, ...]:
        return tuple(g for p in self.packages for g in p.relocate_text)

    def package(self, name: str) -> Package:
        for p in self.packages:
            if p.name == name:
                return p
        raise CompatError(
            f"{self.path}: no package {name!r}; known: {', '.join(p.name for p in self.packages)}"
        )


def package_set_path(family: str, directory: Path | None = None) -> Path:
    return (directory or PACKAGE_SET_DIR) / f"{family}.yaml"


def load_package_set(family_or_path: str | Path, directory: Path | None = None) -> PackageSet:
    """Load ``matrices/compat/<family>.yaml`` (or a file path); raise :class:`CompatError` listing every
    problem."""
    path = (
        Path(family_or_path)
        if isinstance(family_or_path, Path)
        else package_set_path(family_or_path, directory)
    )
    if isinstance(family_or_path, str) and not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise CompatError(
            f"{path}: no package set for family {family_or_path!r} (known: {', '.join(known) or 'none'}); "
            f"fix: write {path.name} next to the others, or pass --family with one of the known families"
        )
    raw = load_yaml(path, CompatError)
    data = validate(raw, "compat-packages", path, CompatError)
    pset = _build(path, data)
    problems = check_package_set(pset)
    if problems:
        raise CompatError("\n".join(f"{path}: {p}" for p in problems))
    return pset


def _reasons(mapping: dict[str, Any]) -> tuple[Reason, ...]:
    return tuple(Reason(k, str(v)) for k, v in mapping.items())


def _build(path: Path, data: dict[str, Any]) -> PackageSet:
    deb = data["debian"]
    gentoo = data["gentoo"]
    packages = tuple(
        Package(
            name=p["name"],
            debian=tuple(p.get("debian", ())),
            pypi=tuple(p.get("pypi", ())),
            gentoo=tuple(p["gentoo"]),
            relocate_text=tuple(p["relocate_text"]),
            tools=tuple(Tool(t["command"], tuple(t["args"]), t["expect"]) for t in p["tools"]),
        )
        for p in data["packages"]
    )
    return PackageSet(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        family=data["family"],
        description=data["description"],
        debian=DebianSettings(
            deb["architecture"], deb["triplet"], _reasons(deb["exclude"]), _reasons(deb["prune"])
        ),
        gentoo=GentooSettings(gentoo["profile"], gentoo["mirror"], gentoo["repository"]),
        host_files=tuple(data["host_files"]),
        locales=tuple(data["locales"]),
        links=tuple(Link(k, v) for k, v in data["links"].items()),
        packages=packages,
    )


def check_package_set(pset: PackageSet) -> list[str]:
    """What the schema cannot express; each problem names the entry, the key and the fix."""
    out: list[str] = []
    if pset.path.suffix in (".yaml", ".yml") and pset.path.stem != pset.family:
        out.append(
            f"family: {pset.family!r} differs from the file name {pset.path.name!r}; "
            f"fix: name the file {pset.family}.yaml or correct `family`"
        )
    out += _package_problems(pset) + _host_file_problems(pset) + _link_problems(pset)
    names = {p.name.lower() for p in pset.packages}
    missing = [r for r in REQUIRED_PACKAGES if r.lower() not in names]
    if missing:
        out.append(
            f"packages: the layer lacks {', '.join(missing)}; fix: add an entry for each (every "
            f"compatibility layer needs {', '.join(REQUIRED_PACKAGES)})"
        )
    return out


def _package_problems(pset: PackageSet) -> list[str]:
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(pset.packages):
        where = f"packages[{i}] ({p.name})"
        key = p.name.lower()
        if key in seen:
            out.append(f"{where}.name: {p.name!r} repeats packages[{seen[key]}]; fix: merge the two entries")
        seen.setdefault(key, i)
        out += [
            f"{where}.debian: {d!r} is also under debian.exclude; fix: remove it from one of the two"
            for d in p.debian
            if d in pset.debian.excluded
        ]
        for j, t in enumerate(p.tools):
            if t.expect:
                try:
                    re.compile(t.expect)
                except re.error as e:
                    out.append(
                        f"{where}.tools[{j}].expect: {t.expect!r} is not a regular expression ({e}); "
                        "fix: escape special characters with a backslash"
                    )
    return out


def _host_file_problems(pset: PackageSet) -> list[str]:
    out: list[str] = []
    for h in pset.host_files:
        if h not in COMPAT_HOST_FILES:
            out.append(
                f"host_files: {h!r} is not a host file compat tarballs may link to "
                f"({', '.join(sorted(COMPAT_HOST_FILES))}); fix: remove it, or extend COMPAT_HOST_FILES in "
                "eessi_pipeline/cvmfs/tarcheck.py after review"
            )
        elif posixpath.normpath(h) != h:
            out.append(f"host_files: {h!r} is not a normalised path; fix: write {posixpath.normpath(h)!r}")
    return out


def _link_problems(pset: PackageSet) -> list[str]:
    out: list[str] = []
    for link in pset.links:
        parts = link.path.split("/")
        if ".." in parts or posixpath.normpath(link.path) != link.path:
            out.append(
                f"links.{link.path}: the path is not a normalised relative path; fix: drop '..' and '.'"
            )
            continue
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        if resolved == ".." or resolved.startswith("../"):
            out.append(
                f"links.{link.path}: target {link.target!r} resolves outside the layer ({resolved!r}); "
                "fix: point it at a file inside the layer"
            )
    return out
