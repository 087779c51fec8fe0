"""What the embedded Slurm cluster is: addresses, ports, paths and ``slurm.conf`` (pure).

One node (the default): ``slurmctld`` and one ``slurmd`` in this host's network namespace, both bound
to a loopback address (``CommunicationParameters=NoInAddrAny,NoCtldInAddrAny``: each daemon binds the
address its host name resolves to, which must be a loopback address; the address is part of the plan).
The node still gets a private mount namespace, in which the pipeline shows the software under test at
``/cvmfs/<repo>`` while its checks run (:meth:`~eessi_pipeline.cluster.manager.Cluster.expose`).

N nodes (``--nodes 2``): a *head* network namespace holds a bridge with the address ``<net>.1`` and
runs ``slurmctld``; node ``nK`` runs in network, UTS (host name ``nK``) and mount namespaces of its own,
with the address ``<net>.(K+1)`` on a veth pair whose other end is on the head's bridge.  Slurm clients
(``sbatch``, ``srun``, ReFrame) run in the head's network namespace (:attr:`ClusterPlan.client_prefix`
of the manager).  Each daemon listens on all addresses *of its own namespace*, which holds only its
loopback and the one private address created for it; nothing listens in the host's namespace.

No accounting database is configured (``slurmdbd`` needs MySQL/MariaDB), so ``sacct`` has nothing to
say and ReFrame polls jobs with its ``squeue`` scheduler; ``MinJobAge`` keeps finished jobs visible to
``squeue`` long enough for that.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError
from ..services import sockets

CLUSTER_NAME = "eessi"
PARTITION = "eessi"
DEFAULT_PORTS: Mapping[str, int] = {"slurmctld": 16817, "slurmd": 16818}
PORT_ENV: Mapping[str, str] = {
    "slurmctld": "EESSI_PIPELINE_SLURMCTLD_PORT",
    "slurmd": "EESSI_PIPELINE_SLURMD_PORT",
}
PORT_OPTION: Mapping[str, str] = {"slurmctld": "--slurmctld-port", "slurmd": "--slurmd-port"}
NETWORK_ENV = "EESSI_PIPELINE_CLUSTER_NETWORK"
DEFAULT_NETWORK = "10.213.7.0/24"
MAX_NODES = 8
SOCKET_PATH_MAX = 107
"""The longest path a Unix socket may have (``sun_path`` holds 108 bytes with its NUL)."""
STEP_SOCKET_TAIL = len("/n8/n8_4294967294.4294967294")
"""What slurmstepd appends to the spool dir for a step's socket: ``/<node>/<node>_<job>.<step>``."""
RUN_SPOOL = Path("/run/eessi-slurm")
MIN_JOB_AGE = 600
"""Seconds a finished job stays visible to ``squeue`` (ReFrame's squeue scheduler reads its end there)."""


@dataclass(frozen=True, slots=True)
class ClusterPorts:
    slurmctld: int
    slurmd: int


def resolve_ports(
    *, slurmctld: int | None = None, slurmd: int | None = None, environ: Mapping[str, str]
) -> ClusterPorts:
    """Command line > ``EESSI_PIPELINE_SLURM*_PORT`` > defaults (pure)."""
    given = {"slurmctld": slurmctld, "slurmd": slurmd}
    chosen: dict[str, int] = {}
    for name, value in given.items():
        if value is not None:
            chosen[name] = sockets.port_number(value, PORT_OPTION[name], ClusterError)
        elif environ.get(PORT_ENV[name]):
            chosen[name] = sockets.port_number(environ[PORT_ENV[name]], PORT_ENV[name], ClusterError)
        else:
            chosen[name] = DEFAULT_PORTS[name]
    if chosen["slurmctld"] == chosen["slurmd"]:
        raise ClusterError(
            f"slurmctld and slurmd would both use port {chosen['slurmd']}; give them different ports "
            f"({PORT_OPTION['slurmctld']}, {PORT_OPTION['slurmd']})"
        )
    return ClusterPorts(chosen["slurmctld"], chosen["slurmd"])


def resolve_network(value: str | None, environ: Mapping[str, str]) -> ipaddress.IPv4Network:
    """The private IPv4 network of a multi-node cluster's bridge (pure): ``--network``, else
    ``$EESSI_PIPELINE_CLUSTER_NETWORK``, else 10.213.7.0/24; only private ranges are accepted."""
    text = value or environ.get(NETWORK_ENV) or DEFAULT_NETWORK
    origin = "--network" if value else (NETWORK_ENV if environ.get(NETWORK_ENV) else "the default network")
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise ClusterError(f"{origin} {text!r} is not an IPv4 network such as 10.213.7.0/24 ({e})") from None
    if not net.is_private or net.is_loopback or net.num_addresses < MAX_NODES + 4:
        raise ClusterError(
            f"{origin} {text!r} must be a private range (10/8, 172.16/12, 192.168/16, 169.254/16) with room "
            f"for {MAX_NODES + 2} addresses, e.g. 10.213.7.0/24"
        )
    return net


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str  # n1, n2, ...
    address: str  # where slurmctld and the other nodes reach its slurmd
    hostname: str | None  # the host name in its own UTS namespace; None: this host's
    own_network: bool  # in a network namespace of its own


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """Everything about one embedded cluster (state under ``root``)."""

    root: Path  # <state>/cluster
    ports: ClusterPorts
    nodes: tuple[NodePlan, ...]
    cpus: int  # per node
    memory_mib: int  # per node
    control_host: str  # this host's short name (slurmctld insists on running on SlurmctldHost)
    control_address: str
    network: str | None  # the bridge's network with --nodes > 1
    slurmctld: str = "/usr/sbin/slurmctld"
    slurmd: str = "/usr/sbin/slurmd"
    spool_dir: Path | None = None  # None: <root>/spool (see spool_for)

    @property
    def namespaced(self) -> bool:
        return self.network is not None

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def state_save(self) -> Path:
        return self.root / "ctld-state"

    @property
    def spool(self) -> Path:
        return self.spool_dir or self.root / "spool"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def ctld_pid(self) -> Path:
        return self.run_dir / "slurmctld.pid"

    @property
    def ctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    def slurmd_pid(self, node: str) -> Path:
        return self.run_dir / f"slurmd-{node}.pid"

    def slurmd_log(self, node: str) -> Path:
        return self.log_dir / f"slurmd-{node}.log"

    def holder_pid(self, name: str) -> Path:
        return self.run_dir / f"ns-{name}.pid"

    @property
    def ctld_argv(self) -> tuple[str, ...]:
        return (self.slurmctld, "-f", str(self.conf))

    def slurmd_argv(self, node: str) -> tuple[str, ...]:
        return (self.slurmd, "-f", str(self.conf), "-N", node)

    @property
    def ctld_marker(self) -> str:
        return f"slurmctld -f {self.conf}"

    def slurmd_marker(self, node: str) -> str:
        return f"slurmd -f {self.conf} -N {node}"

    def holder_marker(self, name: str) -> str:
        return f"--marker {self.root}/ns/{name}"

    @property
    def env(self) -> dict[str, str]:
        """What Slurm's clients need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}


def spool_for(root: Path) -> Path:
    """Where the slurmd's spool (job scripts, the steps' Unix sockets) goes (pure): ``<root>/spool``,
    unless a step's socket path there would be longer than a Unix socket path may be; then a directory
    of its own under /run, named by a digest of ``root`` (removed again by ``down``)."""
    spool = root / "spool"
    if len(str(spool)) + STEP_SOCKET_TAIL <= SOCKET_PATH_MAX:
        return spool
    return RUN_SPOOL / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def plan_cluster(
    root: Path,
    *,
    nodes: int,
    ports: ClusterPorts,
    cpus: int,
    memory_mib: int,
    hostname: str,
    host_address: str,
    network: ipaddress.IPv4Network,
    slurmctld: str = "/usr/sbin/slurmctld",
    slurmd: str = "/usr/sbin/slurmd",
) -> ClusterPlan:
    """The plan of a cluster of ``nodes`` nodes (pure).  ``host_address``: what ``hostname`` resolves
    to (must be loopback for one node, where the daemons bind it)."""
    if not root.is_absolute():
        raise ClusterError(f"cluster directory {root} must be absolute here; resolve it first")
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes {nodes}: give 1 to {MAX_NODES} nodes")
    if nodes == 1:
        if not ipaddress.ip_address(host_address).is_loopback:
            raise ClusterError(
                f"this host's name {hostname!r} resolves to {host_address}, not to a loopback address; a "
                f"one-node cluster binds slurmctld and slurmd to that address, so it would listen beyond "
                f"this machine. Fix: map {hostname} to 127.0.1.1 in /etc/hosts, or use "
                "`cluster up --nodes 2`, "
                "whose daemons live in network namespaces of their own"
            )
        node = NodePlan("n1", host_address, None, own_network=False)
        return ClusterPlan(
            root,
            ports,
            (node,),
            cpus,
            memory_mib,
            hostname,
            host_address,
            None,
            slurmctld,
            slurmd,
            spool_for(root),
        )
    hosts = list(network.hosts())
    head = str(hosts[0])
    planned = tuple(NodePlan(f"n{i}", str(hosts[i]), f"n{i}", own_network=True) for i in range(1, nodes + 1))
    return ClusterPlan(
        root,
        ports,
        planned,
        cpus,
        memory_mib,
        hostname,
        head,
        str(network),
        slurmctld,
        slurmd,
        spool_for(root),
    )


def render_slurm_conf(plan: ClusterPlan) -> str:
    """``slurm.conf`` of the plan (pure)."""
    comm = [] if plan.namespaced else ["CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"]
    lines = [
        "# Generated by eessi-pipeline (`cluster up`); changes are overwritten.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={plan.control_host}({plan.control_address})",
        f"SlurmctldPort={plan.ports.slurmctld}",
        f"SlurmdPort={plan.ports.slurmd}",
        *comm,
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/none",
        "CredType=cred/none",
        f"StateSaveLocation={plan.state_save}",
        f"SlurmdSpoolDir={plan.spool}/%n",
        f"SlurmctldPidFile={plan.ctld_pid}",
        f"SlurmdPidFile={plan.run_dir}/slurmd-%n.pid",
        f"SlurmctldLogFile={plan.ctld_log}",
        f"SlurmdLogFile={plan.log_dir}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "JobRequeue=0",  # a job whose launch fails ends (FAILED) instead of waiting, held, for ever
        f"MinJobAge={MIN_JOB_AGE}",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=5",
        "Waittime=0",
    ]
    for node in plan.nodes:
        host = f" NodeHostname={node.hostname}" if node.hostname else ""
        lines.append(
            f"NodeName={node.name} NodeAddr={node.address}{host} CPUs={plan.cpus} "
            f"RealMemory={plan.memory_mib} State=UNKNOWN"
        )
    names = ",".join(n.name for n in plan.nodes)
    lines.append(f"PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


__all__ = [
    "CLUSTER_NAME",
    "DEFAULT_PORTS",
    "PARTITION",
    "ClusterError",
    "ClusterPlan",
    "ClusterPorts",
    "NodePlan",
    "plan_cluster",
    "render_slurm_conf",
    "resolve_network",
    "resolve_ports",
]
