"""Run commands against a staged layer as clients will see it: at its prefix, read-only.

A layer built for ``/cvmfs/<repo>/versions/<v>/compat/linux/<family>`` only works at that
path.  Until it is published there, :class:`LayerView` runs each command in a private
mount namespace (``unshare --mount``, plus ``--map-root-user`` for an unprivileged user)
where an empty tmpfs covers ``/cvmfs`` and the staging tree is bind-mounted read-only at
the prefix (by :mod:`eessi_pipeline.nslaunch`, with the plan :meth:`LayerView.mounts`).
Nothing is mounted on the host, no chroot or container is involved: the layer's binaries run
natively, children included.
A layer built in place (prefix = staging tree) runs directly.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import nslaunch
from ..errors import CompatError
from ..nslaunch import Mount, Spec
from ..proc import CommandResult, run

log = logging.getLogger(__name__)


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

    def mounts(self) -> Spec:
        """The launcher's plan (pure): a tmpfs over :attr:`cover` if needed, then the staging tree bound at
        the prefix, read-only unless :attr:`writable`."""
        cover = () if self.cover is None else (Mount("tmpfs", self.cover),)
        return Spec(
            (*cover, Mount("bind", self.prefix, source=str(self.staging), readonly=not self.writable)),
            hint="this needs root or user namespaces (unshare --map-root-user); run as root or enable "
            "unprivileged user namespaces",
        )

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argument vector that runs ``argv`` with the layer visible at its prefix (pure)."""
        if self.direct:
            return list(argv)
        ns = ["unshare", "--mount", "--propagation", "private"]
        if not self.as_root:
            ns.append("--map-root-user")
        return [*ns, "--", *nslaunch.command_line(self.mounts(), list(argv), self.python)]

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
