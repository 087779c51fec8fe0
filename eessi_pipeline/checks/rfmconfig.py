"""The ReFrame configuration of the software checks, generated from the matrix (pure).

A local system with one partition per target (scheduler and launcher ``local``, Lmod, the target's
``modules/all`` on ``MODULEPATH``, processor info named after the target's archspec
microarchitecture), plus, when a site file is given, a Slurm system whose partitions each test one
target.  Partition features: ``cpu``, ``arch_<target>``, and ``slurm`` on Slurm partitions (the
multi-node scales ask for it).

The site file (``matrices/site.example.yaml`` documents one) is validated against
``schemas/site.schema.json`` and its partitions' targets against the matrix when it is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..matrix import PROJECT_ROOT, Target
from ..schema import validate
from ..yamlio import load_yaml
from .references import ChecksError
from .rfmrun import local_partition, rfm_config, system

LOCAL_SYSTEM = "eessi_local"
ENVIRON = "eessi"
SITE_EXAMPLE = PROJECT_ROOT / "matrices" / "site.example.yaml"


@dataclass(frozen=True, slots=True)
class TargetPrefix:
    """A target and its software prefix, ``/cvmfs/<repo>/versions/<v>/software/linux/<subdir>``, and the
    compatibility layer its software runs on (``None``: a host-linked stack)."""

    target: Target
    prefix: str
    compat: str | None = None
    emulated_by: str = ""  # e.g. "qemu-aarch64 7.2": this host runs the target's programs only emulated

    @property
    def modulepath(self) -> str:
        return f"{self.prefix}/modules/all"

    @property
    def env_vars(self) -> list[list[str]]:
        """The environment a check runs in: the target's modules and, for a stack on a compatibility
        layer, the layer's programs first on ``PATH`` with its locales and converters, as ``init/bash``
        sets them (so a module's ``python3`` is the layer's)."""
        env = [["MODULEPATH", self.modulepath]]
        if self.compat is not None:
            c = self.compat
            env += [
                ["PATH", f"{c}/usr/bin:{c}/bin:$PATH"],
                ["LOCPATH", f"{c}/usr/lib/locale"],
                ["GCONV_PATH", f"{c}/usr/lib/{self.target.family}-linux-gnu/gconv"],
            ]
        return env


@dataclass(frozen=True, slots=True)
class SlurmPartition:
    name: str
    target: str
    access: tuple[str, ...]
    num_cpus: int
    max_jobs: int = 8
    launcher: str = "srun"
    scheduler: str = "slurm"
    descr: str = ""
    num_nodes: int = 0  # 0: not known (multi-node scales are not limited)


@dataclass(frozen=True, slots=True)
class Site:
    system: str
    hostnames: tuple[str, ...]
    partitions: tuple[SlurmPartition, ...]
    modules_system: str = "lmod"
    descr: str = "site cluster (from the site file)"


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


def site_partition(site: Site, target: Target) -> SlurmPartition:
    """The first partition of ``site`` that tests ``target``; refused naming the partitions there are."""
    for sp in site.partitions:
        if sp.target == target.name:
            return sp
    tested = ", ".join(f"{sp.name!r} tests {sp.target!r}" for sp in site.partitions)
    raise ChecksError(
        f"no partition of site {site.system!r} tests {target.name} ({tested}); fix: add a partition with "
        f"target: {target.name} to the site file, or run the checks on the local partition"
    )


def config(
    targets: Sequence[TargetPrefix], num_cpus: int, site: Site | None = None, max_jobs: int = 4
) -> dict[str, Any]:
    """The whole ReFrame configuration (pure)."""
    if not targets:
        raise ChecksError("no target to configure ReFrame for; name at least one target")
    partitions = [
        local_partition(
            partition_name(tp.target),
            f"processes on this host, software of {tp.target.subdir}"
            + (f", emulated by {tp.emulated_by}" if tp.emulated_by else ""),
            ENVIRON,
            max_jobs,
            features=["cpu", tp.target.marker, *(["emulated"] if tp.emulated_by else [])],
            env_vars=tp.env_vars,
            processor=processor_info(tp.target, num_cpus),
        )
        for tp in targets
    ]
    systems = [system(LOCAL_SYSTEM, "this host, one partition per target of the stack", "lmod", partitions)]
    if site is not None:
        systems.insert(0, site_system(site, targets))  # ReFrame picks the first system whose hostnames match
    return rfm_config(systems, [{"name": ENVIRON, "cc": "cc", "cxx": "", "ftn": ""}])


def site_system(site: Site, targets: Sequence[TargetPrefix]) -> dict[str, Any]:
    """The ReFrame system of a site: its partitions that test one of ``targets`` (pure).

    A site file lists partitions for every target the cluster has; a run configures some of them.
    """
    by_name = {tp.target.name: tp for tp in targets}
    chosen = [sp for sp in site.partitions if sp.target in by_name]
    if not chosen:
        tested = ", ".join(f"{sp.name!r} tests {sp.target!r}" for sp in site.partitions)
        wanted = ", ".join(sorted(by_name))
        raise ChecksError(
            f"no partition of site {site.system!r} tests a configured target ({wanted}): {tested}; "
            f"fix: add a partition for {wanted} to the site file, or run without the site file"
        )
    partitions = []
    for sp in chosen:
        tp = by_name[sp.target]
        partition: dict[str, Any] = {
            "name": sp.name,
            "descr": sp.descr or f"Slurm partition {sp.name}, software of {tp.target.subdir}",
            "scheduler": sp.scheduler,
            "launcher": sp.launcher,
            "access": list(sp.access),
            "environs": [ENVIRON],
            "max_jobs": sp.max_jobs,
            "features": ["cpu", tp.target.marker, "slurm"],
            "env_vars": tp.env_vars,
            "processor": processor_info(tp.target, sp.num_cpus),
        }
        if sp.scheduler == "squeue":
            # ReFrame 4.10.0's squeue scheduler passes a list where a string is expected when it looks for
            # reasons to cancel a pending job (AttributeError: 'list' object has no attribute 'split'),
            # which stops the whole run; with no reason to cancel for it skips that step.
            partition["sched_options"] = {"ignore_reqnodenotavail": True}
        if sp.num_nodes:  # the checks skip multi-node scales that need more (software_checks.py)
            partition["extras"] = {"num_nodes": sp.num_nodes}
        partitions.append(partition)
    return system(site.system, site.descr, site.modules_system, partitions, site.hostnames)


def parse_site(data: Any, path: Path, targets: Iterable[str] | None = None) -> Site:
    """Validate a site file's data against ``schemas/site.schema.json`` and type it (pure).

    With ``targets`` (the matrix's target names), a partition naming another target is refused.
    Every problem names the file and the key (``partitions[0] (rome).target``) and says the fix.
    """
    checked = validate(data, "site", path, ChecksError)
    known = set(targets) if targets is not None else None
    problems: list[str] = []
    names: dict[str, int] = {}
    parts: list[SlurmPartition] = []
    for i, p in enumerate(checked["partitions"]):
        where = f"{path}: partitions[{i}] ({p['name']})"
        if known is not None and p["target"] not in known:
            problems.append(
                f"{where}.target: unknown target {p['target']!r}; fix: use one of {', '.join(sorted(known))}"
            )
        if p["name"] in names:
            problems.append(
                f"{where}.name: partition name {p['name']!r} is used twice (first in "
                f"partitions[{names[p['name']]}]); fix: give each partition its own name"
            )
        names.setdefault(p["name"], i)
        parts.append(
            SlurmPartition(
                p["name"],
                p["target"],
                tuple(p["access"]),
                p["num_cpus"],
                p["max_jobs"],
                p["launcher"],
                p["scheduler"],
                p.get("descr", ""),
                p.get("num_nodes", 0),
            )
        )
    if problems:
        raise ChecksError("\n".join(problems))
    hostnames = tuple(checked["hostnames"])
    return Site(checked["system"], hostnames, tuple(parts), checked["modules_system"], checked["descr"])


def load_site(path: Path, targets: Iterable[str] | None = None) -> Site:
    """Load and check a site file (YAML); ``targets``: the matrix's target names."""
    return parse_site(load_yaml(path, ChecksError), path, targets)


__all__ = [
    "ENVIRON",
    "LOCAL_SYSTEM",
    "SITE_EXAMPLE",
    "Site",
    "SlurmPartition",
    "TargetPrefix",
    "config",
    "load_site",
    "parse_site",
    "processor_info",
    "site_partition",
    "site_system",
]
