"""What the pipeline would do for one target: a pure function, shown by ``eessi-pipeline plan``.

Each step says whether this release can carry it out yet; later issues turn the
pending steps into real ones (software layer, ReFrame checks, gate, publish).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .arch.cpuinfo import HostCpu
from .arch.select import Verdict, check_build_node
from .matrix import Matrix, Target


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    detail: str
    command: str
    available: bool


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
            node = {"ok": self.build_node.ok, "reasons": list(self.build_node.reasons)}
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
                {"name": s.name, "detail": s.detail, "command": s.command, "available": s.available}
                for s in self.steps
            ],
        }


def tarball_pattern(version: str, subdir: str) -> str:
    """EESSI's tarball name: ``eessi-<ver>-software-linux-<subdir with / as ->-<epoch>.tar.gz``."""
    return f"eessi-{version}-software-linux-{subdir.replace('/', '-')}-<epoch seconds>.tar.gz"


def make_plan(
    matrix: Matrix,
    target: Target,
    version: str | None,
    repository: str,
    host: HostCpu | None = None,
) -> Plan:
    ver = matrix.version(version).name
    prefix = f"/cvmfs/{repository}/versions/{ver}/software/linux/{target.subdir}"
    node = check_build_node(host, target, matrix) if host is not None else None
    in_version = ver in target.versions
    steps = (
        Step(
            "select",
            f"{target.subdir} is {'a' if in_version else 'NOT a'} target of stack version {ver}",
            f"eessi-pipeline detect --why-not {target.name}",
            in_version,
        ),
        Step(
            "build",
            f"EasyBuild installations of the target's easystack for {target.subdir} under {prefix}",
            f"eessi-pipeline build --target {target.name}",
            True,
        ),
        Step(
            "test",
            f"acceptance tests marked {target.marker}",
            f"pytest -m {target.marker}",
            True,
        ),
        Step(
            "publish",
            f"ingest {tarball_pattern(ver, target.subdir)} into {repository} after a green run (gate issue; "
            "the ingest itself is `eessi-pipeline repo ingest`)",
            "tox -e publish",
            False,
        ),
        Step(
            "distribute",
            f"replicate {repository} to the Stratum 1 and check the network (Stratum 0/1, squid, client)",
            f"eessi-pipeline stratum snapshot --repo {repository} && pytest tests/infra",
            True,
        ),
    )
    return Plan(target, ver, repository, prefix, tarball_pattern(ver, target.subdir), node, steps)
