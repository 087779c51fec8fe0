"""What the pipeline would do for one target: a pure function, shown by ``eessi-pipeline plan``.

Each step says whether this host can carry it out: building and testing a target needs a build
node of its family that runs its instructions natively, or a generic target of another family under
registered emulation (``check-node``); publishing and
distributing run anywhere the staged tarballs and the repository are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .arch.cpuinfo import HostCpu
from .arch.emulation import Emulator
from .arch.select import Verdict, article, check_build_node
from .cvmfs.tarname import EPOCH_PLACEHOLDER, software_tarball
from .matrix import Matrix, Target


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    detail: str
    command: str
    available: bool  # this host can run it now
    blocked: str = ""  # why not, when it cannot


@dataclass(frozen=True, slots=True)
class Plan:
    target: Target
    version: str
    repository: str
    install_prefix: str
    tarball_pattern: str
    build_node: Verdict | None
    steps: tuple[Step, ...]

    def to_json(self) -> dict[str, Any]:
        node = None
        if self.build_node is not None:
            node = {
                "ok": self.build_node.ok,
                "reasons": list(self.build_node.reasons),
                "emulated_by": self.build_node.emulated_by or None,
            }
        return {
            "target": self.target.name,
            "subdir": self.target.subdir,
            "marker": self.target.marker,
            "version": self.version,
            "repository": self.repository,
            "install_prefix": self.install_prefix,
            "tarball_pattern": self.tarball_pattern,
            "build_node": node,
            "steps": [
                {
                    "name": s.name,
                    "detail": s.detail,
                    "command": s.command,
                    "available": s.available,
                    "blocked": s.blocked,
                }
                for s in self.steps
            ],
        }


def tarball_pattern(version: str, subdir: str) -> str:
    """EESSI's tarball name: ``eessi-<ver>-software-linux-<subdir with / as ->-<epoch>.tar.gz``."""
    return software_tarball(version, subdir, EPOCH_PLACEHOLDER)


def make_plan(
    matrix: Matrix,
    target: Target,
    version: str | None,
    repository: str,
    host: HostCpu | None = None,
    emulators: Mapping[str, Emulator] | None = None,
) -> Plan:
    ver = matrix.version(version).name
    prefix = f"/cvmfs/{repository}/versions/{ver}/software/linux/{target.subdir}"
    node = check_build_node(host, target, matrix, emulators) if host is not None else None
    in_version = ver in target.versions
    emulated = f" (emulated: {node.emulated_by})" if node is not None and node.emulated_by else ""
    family_here = "" if host is None or host.family == target.family or emulated else (
        f"this host is {host.family}; the {target.family} layer is built on {article(target.family)} "
        f"{target.family} node or under emulation (`bash setup.sh` registers qemu-user-static)"
    )  # fmt: skip
    native_here = "" if node is None or node.ok else "this host cannot build it: " + "; ".join(node.reasons)
    not_target = "" if in_version else f"{target.subdir} is not a target of stack version {ver}"
    steps = (
        Step(
            "select",
            f"{target.subdir} is {'a' if in_version else 'NOT a'} target of stack version {ver}",
            f"eessi-pipeline detect --why-not {target.name}",
            in_version,
            not_target,
        ),
        _step(
            "compat",
            f"compatibility layer for {target.family} at /cvmfs/{repository}/versions/{ver}/compat/linux/"
            f"{target.family}, gated by its own tests and published first{emulated}",
            f"eessi-pipeline compat build --family {target.family}",
            family_here,
        ),
        _step(
            "build",
            f"EasyBuild installations of the target's easystack for {target.subdir} under {prefix}{emulated}",
            f"eessi-pipeline build --target {target.name}",
            not_target or native_here,
        ),
        _step(
            "test",
            f"acceptance tests marked {target.marker} (pytest + ReFrame), signed gate record{emulated}",
            f"pytest -m {target.marker}",
            not_target or native_here,
        ),
        _step(
            "publish",
            f"ingest {tarball_pattern(ver, target.subdir)} into {repository}, only when the gate accepts it",
            "tox -e publish",
            "",
        ),
        _step(
            "distribute",
            f"replicate {repository} to the Stratum 1 and check the network (Stratum 0/1, squid, client)",
            f"eessi-pipeline stratum snapshot --repo {repository} && pytest tests/infra",
            "",
        ),
    )
    return Plan(target, ver, repository, prefix, tarball_pattern(ver, target.subdir), node, steps)


def _step(name: str, detail: str, command: str, blocked: str) -> Step:
    return Step(name, detail, command, not blocked, blocked)
