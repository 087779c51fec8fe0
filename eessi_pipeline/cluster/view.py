"""The nodes' view of a build: a read-only ``/cvmfs/<repo>`` shown inside every node's mount namespace
while checks run there (:meth:`~eessi_pipeline.cluster.manager.Cluster.expose` mounts it), as a
CernVM-FS client shows the published repository on a real cluster's compute nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError


@dataclass(frozen=True, slots=True)
class ViewMounts:
    """A read-only ``/cvmfs/<repo>`` for the nodes: ``layers`` stacked (first on top) at ``mount``, below
    an empty tmpfs at ``cover``, and ``binds`` (directory, path) shown read-only on it (pure)."""

    cover: str
    mount: str
    layers: tuple[str, ...]
    binds: tuple[tuple[str, str], ...] = ()
    label: str = "eessi-view"

    def mount_argvs(self) -> list[list[str]]:
        lower = ":".join(self.layers)
        out = [
            ["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", f"{self.label}-cover", self.cover],
            ["mkdir", "-p", self.mount],
            ["mount", "-t", "overlay", "-o", f"ro,lowerdir={lower}", self.label, self.mount],
        ]
        out += [["mount", "--bind", "-o", "ro", d, at] for d, at in self.binds]
        return out

    def unmount_argvs(self) -> list[list[str]]:
        return [["umount", "-R", "-l", self.cover]]


def view_of_overlay(view: object) -> ViewMounts:
    """The nodes' read-only view of a build's :class:`~eessi_pipeline.software.overlay.OverlayView`: its
    upper dir over the repository's content (the lower dir) over the skeleton of mount points."""
    from ..software.overlay import OverlayView

    if not isinstance(view, OverlayView):
        raise ClusterError(
            "jobs on the embedded cluster can see a namespace build's overlay only, "
            f"not {type(view).__name__}; "
            "build with --runtime namespace"
        )
    if view.lower.resolve().is_relative_to(Path(view.cover)):
        raise ClusterError(
            f"the build's lower layer {view.lower} lies under {view.cover}, which the nodes' view covers; "
            "unmount the CernVM-FS client there while checks run on the embedded cluster"
        )
    layers = [str(view.upper.resolve()), str(view.lower.resolve())]
    if view.binds:
        layers.append(str(view.skeleton.resolve()))
    binds = tuple((str(Path(d).resolve()), at) for d, at in view.binds)
    return ViewMounts(view.cover, view.mount, tuple(layers), binds)
