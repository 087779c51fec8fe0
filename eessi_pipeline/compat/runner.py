"""Run commands against a staged layer as clients will see it: at its prefix, read-only.

A layer built for ``/cvmfs/<repo>/versions/<v>/compat/linux/<family>`` only works at that
path.  Until it is published there, :class:`LayerView` runs each command in a private
mount namespace (``unshare --mount``, plus ``--map-root-user`` for an unprivileged user)
where an empty tmpfs covers ``/cvmfs`` and the staging tree is bind-mounted read-only at
the prefix (:mod:`eessi_pipeline.compat.nsexec`).  Nothing is mounted on the host, no
chroot or container is involved: the layer's binaries run natively, children included.
A layer built in place (prefix = staging tree) runs directly.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompatError
from ..proc import CommandResult, run
from . import nsexec

log = logging.getLogger(__name__)

NSEXEC = str(Path(nsexec.__file__).resolve())


@dataclass(frozen=True, slots=True)
class LayerView:
    """How to reach a staged layer at its prefix."""

    staging: Path
    prefix: str
    as_root: bool = True
    writable: bool = False  # a build's view (gentoo-prefix); checks always see the layer read-only
    python: str = sys.executable

    @classmethod
    def for_host(cls, staging: Path, prefix: str) -> LayerView:
        return cls(Path(staging), prefix, as_root=os.geteuid() == 0)

    @property
    def direct(self) -> bool:
        return str(self.staging) == self.prefix

    @property
    def cover(self) -> str | None:
        """The top directory of the prefix covered by a tmpfs in the namespace (None: not needed or unsafe,
        because the staging tree lies below it)."""
        top = "/" + self.prefix.strip("/").split("/")[0]
        staging = str(self.staging)
        if staging == top or staging.startswith(top + "/"):
            return None
        return top

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argument vector that runs ``argv`` with the layer visible at its prefix (pure)."""
        if self.direct:
            return list(argv)
        ns = ["unshare", "--mount", "--propagation", "private"]
        if not self.as_root:
            ns.append("--map-root-user")
        inner = [self.python, "-I", "-S", NSEXEC]
        if self.cover is not None:
            inner += ["--tmpfs", self.cover]
        if self.writable:
            inner.append("--rw")
        inner += ["--bind", str(self.staging), self.prefix, "--"]
        return [*ns, "--", *inner, *argv]

    def prepare(self) -> None:
        """Make sure the namespace has a mount point to cover; as root, create ``/cvmfs`` if it is missing."""
        if self.direct:
            return
        if not self.staging.is_dir() and not self.writable:
            raise CompatError(f"no layer staged at {self.staging}; run `eessi-pipeline compat build` first")
        cover = self.cover
        if cover is not None and not os.path.isdir(cover):
            if not self.as_root:
                raise CompatError(
                    f"{cover} does not exist, and only root can create it: run `sudo mkdir {cover}` once "
                    "(it is CernVM-FS's usual mount point), or build with --prefix under a writable directory"
                )
            log.warning("creating the empty directory %s as the mount point for layer views", cover)
            os.makedirs(cover, exist_ok=True)
        elif cover is None and not os.path.isdir(self.prefix):
            os.makedirs(self.prefix, exist_ok=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        input_bytes: bytes | None = None,
        check: bool = True,
        cwd: Path | None = None,
    ) -> CommandResult:
        self.prepare()
        return run(self.wrap(argv), timeout=timeout, env=env, input_bytes=input_bytes, check=check, cwd=cwd)
