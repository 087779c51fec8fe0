"""The build environment: ``/cvmfs/<repo>`` as a writable overlay over the repository's current content.

Like EESSI's build container (``eessi_container.sh --access rw``), builds see the repository at its
real path and write into it; the new files land only in the overlay's upper dir in the state dir.
Each command runs in its own private mount namespace (``unshare --mount``) through
:mod:`eessi_pipeline.build.ovlexec`, so the host's ``/cvmfs`` is never changed.  The lower dir is the
repository's content where a CernVM-FS client has it mounted at ``/cvmfs/<repo>``, else an empty dir in
the state dir (so that everything a build installs counts as new).

Kernel overlayfs needs root.  Unprivileged users would need fuse-overlayfs inside a user namespace; that
runtime is not implemented yet and refuses with a clear error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..proc import CommandResult, run
from . import ovlexec

log = logging.getLogger(__name__)

OVLEXEC = str(Path(ovlexec.__file__).resolve())


@dataclass(frozen=True, slots=True)
class OverlayView:
    """A writable overlay at ``mount`` (``/cvmfs/<repo>``); ``root`` holds lower, stage, upper and work."""

    mount: str
    root: Path
    lower: Path
    as_root: bool = True
    python: str = sys.executable

    @classmethod
    def for_repository(cls, repository: str, root: Path) -> OverlayView:
        mount = f"/cvmfs/{repository}"
        lower = Path(mount) if os.path.ismount(mount) else root / "lower"
        return cls(mount, root, lower, as_root=os.geteuid() == 0)

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def cover(self) -> str:
        return "/" + self.mount.strip("/").split("/")[0]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argv running ``argv`` with the overlay mounted (pure)."""
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            self.python, "-I", "-S", OVLEXEC,
            "--cover", self.cover, "--lower", str(self.lower), "--stage", str(self.stage),
            "--upper", str(self.upper), "--work", str(self.work), "--mount", self.mount,
            "--", *argv,
        ]  # fmt: skip

    def prepare(self) -> None:
        if not self.as_root:
            raise BuildError(
                "building into /cvmfs needs a kernel overlayfs, which needs root; "
                "run the build as root (or in "
                "CI) — the fuse-overlayfs runtime for unprivileged users is not implemented yet"
            )
        for d in (self.upper, self.work, self.stage):
            d.mkdir(parents=True, exist_ok=True)
        if self.lower == self.root / "lower":
            self.lower.mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(self.cover):
            log.warning("creating the empty directory %s as the mount point for build overlays", self.cover)
            os.makedirs(self.cover, exist_ok=True)

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        self.prepare()
        return run(self.wrap(argv), timeout=timeout, env=env, check=check)
