"""pytest-testinfra checks of the Slurm cluster: the embedded one (default), or a real one.

Embedded mode brings up a one-node cluster on free loopback ports in a temporary state directory and
stops it afterwards.  ``--infra-slurm-conf FILE`` checks a real cluster instead (through its
``slurm.conf``): the daemon checks of this host are skipped, node states and a job are checked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ helpers

from cluster_helpers import running_cluster, slurm_missing

from eessi_pipeline import proc
from eessi_pipeline.cluster.manager import Cluster


@dataclass(frozen=True)
class SlurmUnderTest:
    env: dict[str, str]
    cluster: Cluster | None  # None: a real cluster named by its slurm.conf


@pytest.fixture(scope="module")
def slurm(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmUnderTest]:
    conf = pytestconfig.getoption("--infra-slurm-conf")
    if conf:
        yield SlurmUnderTest({**os.environ, "SLURM_CONF": str(Path(conf).resolve())}, None)
        return
    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    with running_cluster(tmp_path_factory.mktemp("slurm-infra") / "state") as cluster:
        yield SlurmUnderTest(cluster.client_env(), cluster)


def _client(slurm: SlurmUnderTest, argv: list[str]) -> proc.CommandResult:
    prefix = slurm.cluster.client_prefix() if slurm.cluster is not None else []
    return proc.run([*prefix, *argv], timeout=120, env=slurm.env)


def test_daemons_listen_on_their_loopback_addresses_only(host, slurm: SlurmUnderTest) -> None:  # type: ignore[no-untyped-def]
    if slurm.cluster is None:
        pytest.skip("daemon checks of the embedded cluster only (a real cluster's run elsewhere)")
    plan = slurm.cluster.plan
    for port in (plan.ports.slurmctld, plan.ports.slurmd):
        assert host.socket(f"tcp://{plan.control_address}:{port}").is_listening, port
        exposed = [s for s in host.socket.get_listening_sockets() if s.rsplit(":", 1)[-1] == str(port)
                   and not s.startswith(("tcp://127.", "tcp://::1"))]  # fmt: skip
        assert exposed == [], exposed
    assert host.process.filter(comm="slurmctld"), "no slurmctld process"
    assert host.process.filter(comm="slurmd"), "no slurmd process"


def test_every_node_is_idle(slurm: SlurmUnderTest) -> None:
    states = _client(slurm, ["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split("\n")
    nodes = [line.split() for line in states if line.strip()]
    assert nodes and all(state.rstrip("*") in ("idle", "mixed", "allocated") for _, state in nodes), nodes


def test_a_job_runs(slurm: SlurmUnderTest) -> None:
    done = _client(slurm, ["srun", "-N", "1", "-n", "1", "sh", "-c", "echo ran on $SLURMD_NODENAME"])
    assert done.stdout.startswith("ran on "), done.tail()
