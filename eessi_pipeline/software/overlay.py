"""The build environment: ``/cvmfs/<repo>`` as a writable overlay over the repository's current content.

Like EESSI's build container (``eessi_container.sh --access rw``), builds see the repository at its
real path and write into it; the new files land only in the overlay's upper dir in the state dir.
Each command runs in its own private mount namespace through :mod:`eessi_pipeline.nslaunch` (the
plan: :meth:`OverlayView.mounts`), so the host's ``/cvmfs`` is never changed.  The lower dir is the
repository's content where a CernVM-FS client has it mounted at ``/cvmfs/<repo>``, else an empty dir
in the state dir (so that everything a build installs counts as new).

How the overlay is mounted depends on who runs the build (:func:`choose_overlay_mode`, pure):

* root: kernel overlayfs in a private mount namespace (``unshare --mount``);
* anyone else: ``fuse-overlayfs`` inside a user namespace (``unshare --user --map-root-user --mount``)
  where fuse-overlayfs is installed and ``/dev/fuse`` can be opened;
* otherwise, on Linux 5.11 or later, kernel overlayfs inside a user namespace (the kernel allows it
  there since 5.11).

A view may also show directories read-only at paths inside the repository (:meth:`OverlayView.with_bind`,
used to make a compatibility layer visible at its prefix while a stack is linked to it): each is
bind-mounted read-only after the overlay, in the same namespace and by the same launcher.  Its mount
point comes from a skeleton tree (``<root>/mounts``) that is the overlay's lowest lower layer, so
nothing is created in the upper dir or on the host.

Inside a user namespace the build runs as the namespace's root (uid 0 mapped to the caller), so
EasyBuild gets ``--allow-use-as-root-and-accept-consequences`` in every mode; files in the upper dir
belong to the calling user.  Only that one uid is mapped, so nothing there may hand files to other
owners: ``tar`` as root restores the archive's owners and fails ("Cannot change ownership to uid
1000"), hence ``TAR_OPTIONS=--no-same-owner`` in those modes.  ``/cvmfs`` must exist as a
directory (root creates it on first use; an unprivileged user must ask root for ``mkdir /cvmfs`` once).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import nslaunch
from ..errors import BuildError
from ..nslaunch import Mount, Spec
from ..proc import CommandResult, run

log = logging.getLogger(__name__)

FUSE_OVERLAYFS = "fuse-overlayfs"
DEV_FUSE = "/dev/fuse"
KERNEL_USERNS_OVERLAY = (5, 11)  # first Linux release that mounts overlayfs inside a user namespace


class OverlayMode(enum.Enum):
    KERNEL = "kernel overlayfs (root, private mount namespace)"
    FUSE_USERNS = "fuse-overlayfs (user namespace)"
    KERNEL_USERNS = "kernel overlayfs (user namespace, Linux >= 5.11)"

    @property
    def user_namespace(self) -> bool:
        return self is not OverlayMode.KERNEL


def kernel_release(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a ``uname -r`` string such as ``6.1.0-18-amd64`` (pure; (0, 0) if unreadable)."""
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def choose_overlay_mode(
    euid: int, fuse_overlayfs: str | None, dev_fuse_usable: bool, release: tuple[int, int]
) -> tuple[OverlayMode | None, str]:
    """How to mount the build overlay for this user, and why (pure); None: no way (see the reason)."""
    if euid == 0:
        return OverlayMode.KERNEL, "running as root: kernel overlayfs in a private mount namespace"
    if fuse_overlayfs and dev_fuse_usable:
        return OverlayMode.FUSE_USERNS, f"not root: {fuse_overlayfs} inside a user namespace"
    why_not_fuse = (
        f"{DEV_FUSE} cannot be opened by this user" if fuse_overlayfs else "fuse-overlayfs is not installed"
    )
    if release >= KERNEL_USERNS_OVERLAY:
        return (
            OverlayMode.KERNEL_USERNS,
            f"not root and {why_not_fuse}: kernel overlayfs inside a user namespace "
            f"(Linux {release[0]}.{release[1]})",
        )
    return None, (
        f"building into /cvmfs needs an overlay: kernel overlayfs needs root, and for other users "
        f"{why_not_fuse} and Linux {release[0]}.{release[1]} is older than 5.11; run the build as root, or "
        f"install fuse-overlayfs (Debian/Ubuntu: `apt-get install fuse-overlayfs`) with a {DEV_FUSE} "
        "this user may open"
    )


def host_overlay_mode() -> tuple[OverlayMode | None, str]:
    """:func:`choose_overlay_mode` for this process, from its uid, PATH, /dev/fuse and kernel."""
    return choose_overlay_mode(
        os.geteuid(),
        shutil.which(FUSE_OVERLAYFS),
        os.access(DEV_FUSE, os.R_OK | os.W_OK),
        kernel_release(os.uname().release),
    )


def namespace_argv(mode: OverlayMode) -> list[str]:
    """``unshare`` for a mode (pure): a private mount namespace, inside a user namespace unless root."""
    if mode.user_namespace:
        return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]
    return ["unshare", "--mount", "--propagation", "private", "--"]


def repository_mount(repository: str, root: Path) -> tuple[str, Path]:
    """``/cvmfs/<repo>`` and an overlay's lower layer there: the repository when it is mounted, else
    the empty ``root/lower``."""
    mount = f"/cvmfs/{repository}"
    return mount, Path(mount) if os.path.ismount(mount) else root / "lower"


class OverlayDirs:
    """The writable half of an overlay kept under ``root``: ``upper`` (what the build adds) and
    ``work`` (overlayfs's own); for the overlay view and the container view."""

    __slots__ = ()
    root: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"


@dataclass(frozen=True, slots=True)
class OverlayView(OverlayDirs):
    """A writable overlay at ``mount`` (``/cvmfs/<repo>``); ``root`` holds lower, stage, upper and work.

    ``mode`` None means no overlay can be mounted by this user; ``refusal`` then says why and what to do.
    """

    mount: str
    root: Path
    lower: Path
    mode: OverlayMode | None = OverlayMode.KERNEL
    refusal: str = ""
    fuse_overlayfs: str = FUSE_OVERLAYFS
    python: str = sys.executable
    binds: tuple[tuple[str, str], ...] = ()  # (directory, path it is shown at read-only), in mount order

    @classmethod
    def for_repository(cls, repository: str, root: Path) -> OverlayView:
        mount, lower = repository_mount(repository, root)
        mode, reason = host_overlay_mode()
        log.debug("build overlay for %s: %s", mount, reason)
        fuse = shutil.which(FUSE_OVERLAYFS) or FUSE_OVERLAYFS
        return cls(mount, root, lower, mode, "" if mode else reason, fuse)

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def skeleton(self) -> Path:
        """Empty directories that are the mount points of :attr:`binds` (the overlay's lowest layer)."""
        return self.root / "mounts"

    @property
    def cover(self) -> str:
        return "/" + self.mount.strip("/").split("/")[0]

    def with_bind(self, directory: Path, at: str) -> OverlayView:
        """This view, also showing ``directory`` read-only at ``at`` (a path below :attr:`cover`)."""
        return dataclasses.replace(self, binds=(*self.binds, (str(directory), at)))

    @property
    def eb_sees_root(self) -> bool:
        # as root, or as the root of the user namespace: either way EasyBuild sees uid 0
        return True

    def describe(self) -> str:
        text = f"namespace runtime, {self.mode.value if self.mode else 'no overlay possible'}"
        return text + "".join(f"; {at} read-only from {d}" for d, at in self.binds)

    def mounts(self) -> Spec:
        """The launcher's plan (pure): the lower dir bound onto the stage (it may lie below the cover), a
        tmpfs over the cover, the overlay at :attr:`mount` (over the skeleton when there are binds), then
        each bind read-only, in order."""
        mode = self.mode or OverlayMode.KERNEL
        lower = (str(self.stage), str(self.skeleton)) if self.binds else (str(self.stage),)
        fuse = self.fuse_overlayfs if mode is OverlayMode.FUSE_USERNS else ""
        return Spec(
            (
                Mount("bind", str(self.stage), source=str(self.lower)),
                Mount("tmpfs", self.cover),
                Mount(
                    "overlay", self.mount, lower=lower, upper=str(self.upper), work=str(self.work), fuse=fuse
                ),
                *(Mount("bind", at, source=directory, readonly=True) for directory, at in self.binds),
            ),
            hint="this needs root or a user namespace",
        )

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argv running ``argv`` with the overlay mounted (pure)."""
        mode = self.mode or OverlayMode.KERNEL
        return [*namespace_argv(mode), *nslaunch.command_line(self.mounts(), list(argv), self.python)]

    def prepare(self) -> None:
        if self.mode is None:
            raise BuildError(self.refusal or "building into /cvmfs needs root (kernel overlayfs)")
        for d in (self.upper, self.work, self.stage):
            d.mkdir(parents=True, exist_ok=True)
        if self.lower == self.root / "lower":
            self.lower.mkdir(parents=True, exist_ok=True)
        for directory, at in self.binds:
            if not os.path.isdir(directory):
                raise BuildError(f"{directory} does not exist, so it cannot be shown at {at}; build it first")
            if not at.startswith(self.cover + "/"):
                raise BuildError(
                    f"{at} is not below {self.cover}: the build's namespace can show directories only there"
                )
            self.skeleton.mkdir(parents=True, exist_ok=True)
            if at.startswith(self.mount + "/"):
                (self.skeleton / at[len(self.mount) + 1 :]).mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(self.cover):
            if self.mode.user_namespace:
                raise BuildError(
                    f"{self.cover} does not exist and only root can create it; ask root for "
                    f"`mkdir {self.cover}` once (builds mount their overlays below it privately)"
                )
            log.warning("creating the empty directory %s as the mount point for build overlays", self.cover)
            os.makedirs(self.cover, exist_ok=True)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` for a command under this overlay (pure): in a user namespace, tar keeps no owners."""
        out = dict(env)
        if self.mode is not None and self.mode.user_namespace:
            opts = out.get("TAR_OPTIONS", "")
            if "--no-same-owner" not in opts.split():
                out["TAR_OPTIONS"] = f"{opts} --no-same-owner".strip()
        return out

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        self.prepare()
        full_env = self.environment(os.environ if env is None else env)
        return run(self.wrap(argv), timeout=timeout, env=full_env, check=check)
