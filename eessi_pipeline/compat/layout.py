"""Where a compatibility layer lives: its prefix, its staging tree in the state directory, its tarball.

A layer is built for one **prefix**, the absolute path clients see it at, by
default ``/cvmfs/<repository>/versions/<version>/compat/linux/<family>`` as in
EESSI.  That path is baked into every binary (ELF interpreter, RUNPATH, script
``#!`` lines), as Gentoo Prefix bakes its ``EPREFIX``: a layer cannot be moved
after it is built.  The files are written to a **staging** tree in the state
directory, ``<state>/compat/<version>/compat/linux/<family>``, whose path below
``<state>/compat`` is the one the layer has below ``versions`` in the repository
(and in the tarball).  Before publication the layer is used through a private
mount namespace that shows the staging tree at the prefix (see
:mod:`eessi_pipeline.compat.runner`).  Everything here is pure.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from ..cvmfs.tarname import compat_tarball
from ..errors import CompatError

OS = "linux"
_VERSION = re.compile(r"^20[0-9]{2}\.(0[1-9]|1[0-2])$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FAMILIES = ("x86_64", "aarch64", "ppc64le", "riscv64")


def default_prefix(repository: str, version: str, family: str) -> str:
    return f"/cvmfs/{repository}/versions/{version}/compat/{OS}/{family}"


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer: stack version, CPU family, the prefix it is built for and the state directory."""

    version: str
    family: str
    prefix: str
    state_dir: Path

    @classmethod
    def create(
        cls, version: str, family: str, state_dir: Path, *, repository: str, prefix: str | None = None
    ) -> LayerSpec:
        """Check the parts and build a spec; the prefix defaults to the layer's path in ``repository``."""
        if not _VERSION.match(version):
            raise CompatError(f"stack version {version!r} is not YYYY.MM; pass e.g. --version 2023.06")
        if family not in FAMILIES:
            raise CompatError(
                f"CPU family {family!r} is unknown; pass --family with one of {', '.join(FAMILIES)}"
            )
        if not _REPO.match(repository):
            raise CompatError(
                f"repository name {repository!r} is not a CVMFS repository name (e.g. software.eessi.io)"
            )
        chosen = prefix if prefix is not None else default_prefix(repository, version, family)
        spec = cls(version, family, posixpath.normpath(chosen), Path(state_dir).absolute())
        problem = spec.prefix_problem()
        if problem:
            raise CompatError(problem)
        return spec

    # -- paths -------------------------------------------------------------------------------------------
    @property
    def relpath(self) -> str:
        """The layer's path below ``versions/`` in the repository (and its tarball's member prefix)."""
        return f"{self.version}/compat/{OS}/{self.family}"

    @property
    def compat_dir(self) -> Path:
        """``<state>/compat``: caches, build records and staged layers."""
        return self.state_dir / "compat"

    @property
    def versions_dir(self) -> Path:
        """The directory that plays the repository's ``versions/`` for staged layers."""
        return self.compat_dir / "versions"

    @property
    def staging(self) -> Path:
        return self.versions_dir / self.relpath

    @property
    def record_path(self) -> Path:
        """The build record (inputs digest, packages, timings) of this layer."""
        return self.compat_dir / "records" / f"{self.version}-{OS}-{self.family}.json"

    @property
    def lock_path(self) -> Path:
        return self.compat_dir / "records" / f"{self.version}-{OS}-{self.family}.lock"

    @property
    def tarball_dir(self) -> Path:
        return self.compat_dir / "tarballs"

    @property
    def cache_dir(self) -> Path:
        """Downloads shared by every layer: .deb files, wheels, private apt lists."""
        return self.compat_dir / "cache"

    @property
    def in_place(self) -> bool:
        """Whether the layer is built for its staging path (then no mount namespace is needed to run it)."""
        return self.prefix == str(self.staging)

    def tarball_name(self, epoch: int) -> str:
        return compat_tarball(self.version, self.family, epoch)

    def prefix_problem(self) -> str | None:
        """Why this prefix cannot work, or None."""
        p = self.prefix
        if not p.startswith("/"):
            return f"prefix {p!r} is not absolute; pass an absolute --prefix"
        if p == "/" or p.count("/") < 2:
            example = default_prefix("software.eessi.io", self.version, self.family)
            return f"prefix {p!r} is too short to be a layer's own directory; pass e.g. {example}"
        staging = str(self.staging)
        if p != staging and (staging.startswith(p + "/") or p.startswith(staging + "/")):
            return (
                f"prefix {p!r} and the staging tree {staging} contain each other; "
                "pass another --prefix or --state-dir"
            )
        # Scripts start with "#!<prefix>/usr/bin/python3.11": Linux reads 255 bytes of a #! line.
        if len(p) > 200:
            return (
                f"prefix {p!r} is {len(p)} characters long; #! lines allow 255 bytes: "
                "use a prefix of at most 200"
            )
        if any(c.isspace() for c in p):
            return (
                f"prefix {p!r} contains white space, which #! lines and RUNPATHs cannot carry; choose another"
            )
        return None
