"""Where the software checks run: the local partition (default) or a Slurm partition, as jobs.

``local``: ReFrame starts each case as a process of this host (:func:`~.runner.run_checks` as it was).

``slurm``: ReFrame submits each case to a Slurm partition with ``sbatch`` and launches its tasks with
``srun``.  The partition comes from a *site file* (``matrices/site.example.yaml``: a real cluster), or,
without one, from the embedded cluster of the state directory (``eessi-pipeline cluster up``), described
by the same :class:`~.rfmconfig.Site` a site file gives, so the run itself does not know which it is.
Only two things differ, and both are part of :class:`SlurmRun`: how Slurm's clients reach the cluster
(``SLURM_CONF`` and, for a multi-node embedded cluster, the head's network namespace), and how the
nodes see the software under test.  A real cluster's nodes see ``/cvmfs/<repo>`` through their own
CernVM-FS client (the published repository, or whatever the site arranges); the embedded cluster's
nodes are shown the build's overlay read-only while the checks run (:meth:`Cluster.expose`).

The embedded cluster has no accounting database, so its partitions use ReFrame's ``squeue`` scheduler;
a site file says ``slurm`` (sacct) or ``squeue`` per partition (see :func:`.rfmconfig.site_system` for
the option that works around ReFrame 4.10.0's ``squeue`` scheduler failing on pending jobs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cluster.config import PARTITION
from ..cluster.manager import Cluster
from ..cluster.view import view_of_overlay
from ..matrix import Target
from ..proc import CommandResult
from .references import ChecksError
from .rfmconfig import Site, SlurmPartition, TargetPrefix, site_partition
from .runner import ChecksOutcome, CommandRunner, run_checks

SCHEDULERS = ("local", "slurm")
EMBEDDED_SYSTEM = "eessi_cluster"


def check_scheduler(name: str) -> str:
    if name not in SCHEDULERS:
        raise ChecksError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    return name


def embedded_site(cluster: Cluster, targets: Sequence[Target]) -> Site:
    """The embedded cluster as a site: one ReFrame partition per target on its Slurm partition (pure
    apart from reading the cluster's plan)."""
    plan = cluster.plan
    parts = tuple(
        SlurmPartition(
            name=f"{PARTITION}_{t.name}",
            target=t.name,
            access=(f"--partition={PARTITION}",),
            num_cpus=plan.cpus,
            max_jobs=8,
            launcher="srun",
            scheduler="squeue",
            descr=f"embedded Slurm partition {PARTITION} ({len(plan.nodes)} node(s)), software of {t.subdir}",
            num_nodes=len(plan.nodes),
        )
        for t in targets
    )
    return Site(EMBEDDED_SYSTEM, (".*",), parts, "lmod", f"embedded Slurm cluster in {cluster.root}")


@dataclass(frozen=True, slots=True)
class PrefixRunner:
    """Runs each command through ``inner`` with ``prefix`` in front (e.g. ``nsenter`` into the network
    namespace where slurmctld is reachable)."""

    inner: CommandRunner
    prefix: tuple[str, ...]

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        return self.inner.run([*self.prefix, *argv], timeout=timeout, env=env, check=check)


@dataclass(frozen=True, slots=True)
class SlurmRun:
    """Everything a checks run needs to submit its cases to Slurm."""

    site: Site
    env: Mapping[str, str] = field(default_factory=dict)
    client_prefix: tuple[str, ...] = ()
    cluster: Cluster | None = None  # the embedded one: its nodes are shown the build's overlay

    def partition(self, target: Target) -> SlurmPartition:
        return site_partition(self.site, target)

    @contextlib.contextmanager
    def software_visible(self, runner: CommandRunner) -> Iterator[None]:
        if self.cluster is None:
            yield
            return
        with self.cluster.expose(view_of_overlay(runner)):
            yield


def slurm_run(state_dir: Path, targets: Sequence[Target], site_file: Path | None = None) -> SlurmRun:
    """The Slurm run of a site file, else of the embedded cluster of ``state_dir`` (which must be up)."""
    if site_file is not None:
        from .rfmconfig import load_site

        site = load_site(site_file)
        return SlurmRun(site)
    cluster = Cluster(state_dir)
    cluster.require_running()
    return SlurmRun(
        embedded_site(cluster, targets), cluster.plan.env, tuple(cluster.client_prefix()), cluster
    )


def run_checks_on_slurm(
    runner: CommandRunner,
    tp: TargetPrefix,
    workdir: Path,
    slurm: SlurmRun,
    *,
    environ: Mapping[str, str] | None = None,
    **kwargs: Path,
) -> ChecksOutcome:
    """:func:`run_checks` with every case a Slurm job on the target's partition of ``slurm.site``."""
    sp = slurm.partition(tp.target)
    env = dict(os.environ if environ is None else environ)
    env.update(slurm.env)
    wrapped: CommandRunner = PrefixRunner(runner, slurm.client_prefix) if slurm.client_prefix else runner
    with slurm.software_visible(runner):
        return run_checks(
            wrapped,
            tp,
            workdir,
            site=slurm.site,
            environ=env,
            system=f"{slurm.site.system}:{sp.name}",
            **kwargs,
        )


__all__ = [
    "EMBEDDED_SYSTEM",
    "SCHEDULERS",
    "PrefixRunner",
    "SlurmRun",
    "check_scheduler",
    "embedded_site",
    "run_checks_on_slurm",
    "slurm_run",
]
