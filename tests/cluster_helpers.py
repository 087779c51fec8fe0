"""Shared by the cluster tests: when a real Slurm can run here, and a cluster per test that goes away."""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import free_ports

from eessi_pipeline.cluster.config import ClusterPorts
from eessi_pipeline.cluster.manager import Cluster, host_identity


def slurm_missing() -> str | None:
    """Why the embedded cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "the embedded Slurm cluster needs root"
    for program in ("slurmctld", "slurmd", "sinfo", "sbatch", "srun", "nsenter", "ip"):
        if shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{program} is not installed (bash setup.sh installs Slurm)"
    name, address = host_identity()
    if not address or not ipaddress.ip_address(address).is_loopback:
        return f"this host's name {name} resolves to {address or 'nothing'}, not loopback (one-node clusters bind it)"
    return None


needs_slurm = pytest.mark.skipif(slurm_missing() is not None, reason=slurm_missing() or "")


@contextmanager
def running_cluster(state_dir: Path, nodes: int = 1) -> Iterator[Cluster]:
    """A cluster on free loopback ports in ``state_dir``; always stopped afterwards."""
    ctld, slurmd = free_ports(2)
    cluster = Cluster(state_dir, nodes=nodes, ports=ClusterPorts(ctld, slurmd), environ={})
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
