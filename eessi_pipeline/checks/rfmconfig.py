"""The ReFrame configuration of the software checks, generated from the matrix (pure).

A local system with one partition per target (scheduler and launcher ``local``, Lmod, the target's
``modules/all`` on ``MODULEPATH``, processor info named after the target's archspec
microarchitecture), plus, when a site file is given, a Slurm system whose partitions each test one
target.  Partition features: ``cpu``, ``arch_<target>``, and ``slurm`` on Slurm partitions (the
multi-node scales ask for it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..matrix import Target
from ..yamlio import load_yaml
from .references import ChecksError

LOCAL_SYSTEM = "eessi_local"
ENVIRON = "eessi"


@dataclass(frozen=True, slots=True)
class TargetPrefix:
    """A target and its software prefix, ``/cvmfs/<repo>/versions/<v>/software/linux/<subdir>``."""

    target: Target
    prefix: str

    @property
    def modulepath(self) -> str:
        return f"{self.prefix}/modules/all"


@dataclass(frozen=True, slots=True)
class SlurmPartition:
    name: str
    target: str
    access: tuple[str, ...]
    num_cpus: int
    max_jobs: int = 8
    launcher: str = "srun"


@dataclass(frozen=True, slots=True)
class Site:
    system: str
    hostnames: tuple[str, ...]
    partitions: tuple[SlurmPartition, ...]


def processor_info(target: Target, num_cpus: int) -> dict[str, Any]:
    """ReFrame ``processor`` of a partition for ``target``: its archspec name and the CPU count."""
    return {
        "arch": target.archspec,
        "num_cpus": num_cpus,
        "num_cpus_per_core": 1,
        "num_sockets": 1,
        "num_cpus_per_socket": num_cpus,
    }


def partition_name(target: Target) -> str:
    return target.name


def config(
    targets: Sequence[TargetPrefix], num_cpus: int, site: Site | None = None, max_jobs: int = 4
) -> dict[str, Any]:
    """The whole ReFrame configuration (pure)."""
    if not targets:
        raise ChecksError("no target to configure ReFrame for; name at least one target")
    partitions = [
        {
            "name": partition_name(tp.target),
            "descr": f"processes on this host, software of {tp.target.subdir}",
            "scheduler": "local",
            "launcher": "local",
            "environs": [ENVIRON],
            "max_jobs": max_jobs,
            "features": ["cpu", tp.target.marker],
            "env_vars": [["MODULEPATH", tp.modulepath]],
            "processor": processor_info(tp.target, num_cpus),
        }
        for tp in targets
    ]
    systems: list[dict[str, Any]] = [
        {
            "name": LOCAL_SYSTEM,
            "descr": "this host, one partition per target of the stack",
            "hostnames": [".*"],
            "modules_system": "lmod",
            "partitions": partitions,
        }
    ]
    if site is not None:
        by_name = {tp.target.name: tp for tp in targets}
        slurm = []
        for sp in site.partitions:
            tp = by_name.get(sp.target)
            if tp is None:
                raise ChecksError(
                    f"site partition {sp.name!r} tests target {sp.target!r}, which is not configured; "
                    f"fix: use one of {', '.join(sorted(by_name))}"
                )
            slurm.append(
                {
                    "name": sp.name,
                    "descr": f"Slurm partition {sp.name}, software of {tp.target.subdir}",
                    "scheduler": "slurm",
                    "launcher": sp.launcher,
                    "access": list(sp.access),
                    "environs": [ENVIRON],
                    "max_jobs": sp.max_jobs,
                    "features": ["cpu", tp.target.marker, "slurm"],
                    "env_vars": [["MODULEPATH", tp.modulepath]],
                    "processor": processor_info(tp.target, sp.num_cpus),
                }
            )
        # the site system comes first: ReFrame picks the first system whose hostnames match
        systems.insert(
            0,
            {
                "name": site.system,
                "descr": "site cluster (from the site file)",
                "hostnames": list(site.hostnames),
                "modules_system": "lmod",
                "partitions": slurm,
            },
        )
    return {
        "systems": systems,
        "environments": [{"name": ENVIRON, "cc": "cc", "cxx": "", "ftn": ""}],
        "general": [{"check_search_recursive": False, "colorize": False}],
    }


def parse_site(data: Any, path: Path) -> Site:
    """A site file: ``{system, hostnames, partitions: [{name, target, access, num_cpus, ...}]}``."""
    if not isinstance(data, Mapping):
        raise ChecksError(f"{path}: the top level must be a mapping with system, hostnames and partitions")
    try:
        parts = tuple(
            SlurmPartition(
                str(p["name"]),
                str(p["target"]),
                tuple(str(a) for a in p.get("access", [])),
                int(p["num_cpus"]),
                int(p.get("max_jobs", 8)),
                str(p.get("launcher", "srun")),
            )
            for p in data["partitions"]
        )
        site = Site(str(data["system"]), tuple(str(h) for h in data["hostnames"]), parts)
    except (KeyError, TypeError, ValueError) as e:
        raise ChecksError(
            f"{path}: bad site file ({type(e).__name__}: {e}); fix: give system, hostnames and partitions, "
            "each partition with name, target, access and num_cpus"
        ) from e
    if not site.partitions:
        raise ChecksError(f"{path}: partitions is empty; fix: list at least one Slurm partition")
    return site


def load_site(path: Path) -> Site:
    return parse_site(load_yaml(path, ChecksError), path)


__all__ = [
    "ENVIRON",
    "LOCAL_SYSTEM",
    "Site",
    "SlurmPartition",
    "TargetPrefix",
    "config",
    "load_site",
    "parse_site",
    "processor_info",
]
