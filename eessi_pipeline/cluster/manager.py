"""Start, check and stop the embedded Slurm cluster of a state directory (root only).

:meth:`Cluster.up` is idempotent: a cluster already running with the same ``slurm.conf`` is left alone,
one with another configuration (other ports, node count) is stopped and started again.  A start:

1. one *holder* process per namespace set (:mod:`.nshold`): a mount namespace per node (plus network
   and UTS namespaces per node, and a network namespace for the head, with ``--nodes 2``);
2. with ``--nodes 2``: a bridge in the head's namespace and a veth pair per node (``ip``), each node's
   end named ``eth0`` with its address;
3. ``slurmctld`` (in the head's namespace when there is one), readiness = it listens on its port;
4. one ``slurmd`` per node, entered into the node's namespaces (``nsenter -t <holder>``), readiness =
   it listens, then every node is ``idle`` in ``sinfo``.

:meth:`Cluster.down` cancels every job, stops the daemons (SIGTERM, SIGKILL after a grace period),
kills whatever is left in each node's mount namespace (job steps, their programs) and ends the
holders, after which the kernel drops the namespaces with their interfaces.  Daemons are recognised by
pid file *and* command line (the path of this cluster's ``slurm.conf``), never by name alone.

:meth:`Cluster.expose` shows a build's ``/cvmfs/<repo>`` read-only inside every node's mount namespace
while checks run there, as a CernVM-FS client shows the published repository on a real cluster's
compute nodes; the host's ``/cvmfs`` is not touched.

Split by concern: :mod:`.config` (the plan and ``slurm.conf``, pure), :mod:`.netns` (namespace holders,
the network between them), :mod:`.view` (the nodes' view of a build), :mod:`.status` (what is
reported), and :mod:`eessi_pipeline.daemons` (pid files, markers, stopping a process tree).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .. import daemons, locks, proc
from ..errors import ClusterError
from ..fileio import atomic_write
from ..services import sockets
from . import netns
from .config import (
    MAX_NODES,
    PORT_ENV,
    PORT_OPTION,
    ClusterPlan,
    ClusterPorts,
    NodePlan,
    plan_cluster,
    render_slurm_conf,
    resolve_network,
    resolve_ports,
)
from .status import ClusterStatus, NodeStatus
from .view import ViewMounts

__all__ = ["Cluster", "cluster_dir", "host_identity"]

log = logging.getLogger(__name__)

RECORD = "cluster.json"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0
POLL = 0.1
LOCK_TIMEOUT = 300.0
INSTALL = (
    "install Debian's Slurm packages (as root: apt-get install --no-install-recommends slurmctld slurmd "
    "slurm-client; bash setup.sh does it)"
)


def cluster_dir(state_dir: Path) -> Path:
    return state_dir / "cluster"


def host_identity() -> tuple[str, str]:
    """This host's short name and the address it resolves to (``(name, "")`` if it does not)."""
    name = socket.gethostname().split(".")[0]
    try:
        return name, socket.gethostbyname(name)
    except OSError:
        return name, ""


def _memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(256, int(line.split()[1]) // 1024 // 2)
    except (OSError, ValueError, IndexError):
        pass
    return 1024


class Cluster:
    """The embedded Slurm cluster of one state directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: int | None = None,
        ports: ClusterPorts | None = None,
        network: str | None = None,
        environ: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        """``nodes``/``ports``/``network`` None: what the running cluster was started with (its
        record), else one node, the ports of the environment and the default network."""
        env = os.environ if environ is None else environ
        self.state_dir = Path(state_dir).resolve()
        self.root = cluster_dir(self.state_dir)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        record = self._record()
        rec_nodes = record.get("nodes")
        rec_ports = record.get("ports")
        if nodes is None:
            nodes = rec_nodes if isinstance(rec_nodes, int) and 1 <= rec_nodes <= MAX_NODES else 1
        if ports is None:
            if isinstance(rec_ports, dict) and all(isinstance(rec_ports.get(k), int) for k in PORT_ENV):
                ports = ClusterPorts(int(rec_ports["slurmctld"]), int(rec_ports["slurmd"]))
            else:
                ports = resolve_ports(environ=env)
        rec_network = record.get("network")
        net = resolve_network(network or (rec_network if isinstance(rec_network, str) else None), env)
        name, address = host_identity()
        rec_cpus = record.get("cpus")
        cpus = rec_cpus if isinstance(rec_cpus, int) else (os.cpu_count() or 1)
        self.plan: ClusterPlan = plan_cluster(
            self.root,
            nodes=nodes,
            ports=ports,
            cpus=cpus,
            memory_mib=_memory_mib(),
            hostname=name,
            host_address=address or "0.0.0.0",
            network=net,
            slurmctld=daemons.which("slurmctld") or "/usr/sbin/slurmctld",
            slurmd=daemons.which("slurmd") or "/usr/sbin/slurmd",
        )

    # -- public --------------------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.plan.conf

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with ``SLURM_CONF`` of this cluster."""
        env = dict(os.environ if base is None else base)
        env.update(self.plan.env)
        return env

    def client_prefix(self) -> list[str]:
        """What runs a Slurm client command where it reaches slurmctld: nothing with one node (this
        host's loopback), else ``nsenter`` into the head's network namespace."""
        if not self.plan.namespaced:
            return []
        pid = self._holder("head")
        if pid is None:
            raise ClusterError(
                f"the cluster in {self.root} is not running (no head namespace); start it with "
                "`eessi-pipeline cluster up`"
            )
        return ["nsenter", "-t", str(pid), "--net", "--"]

    def client_run(
        self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> proc.CommandResult:
        return proc.run([*self.client_prefix(), *argv], timeout=timeout, env=self.client_env(), check=check)

    def require_running(self) -> ClusterStatus:
        status = self.status()
        if not status.healthy:
            down = [
                f"{n.name} ({n.state})" for n in status.nodes if n.state not in ("idle", "allocated", "mixed")
            ]
            what = (
                "slurmctld is not running"
                if status.ctld_pid is None
                else f"nodes not ready: {', '.join(down)}"
            )
            raise ClusterError(
                f"the embedded Slurm cluster in {self.root} is not ready ({what}); start it with "
                f"`eessi-pipeline --state-dir {self.state_dir} cluster up` (see {self.plan.log_dir})"
            )
        return status

    def up(self) -> ClusterStatus:
        self._preflight()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._up()

    def down(self) -> ClusterStatus:
        if not self.root.is_dir():
            return self._status("not running")
        with self._locked():
            return self._down()

    def status(self) -> ClusterStatus:
        return self._status(None)

    # -- internals -----------------------------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise ClusterError(
                "the embedded Slurm cluster needs root (its daemons run jobs as root and its nodes live in "
                "namespaces); run `eessi-pipeline cluster up` as root, or use a real cluster's site file"
            )
        for program in (self.plan.slurmctld, self.plan.slurmd):
            if not os.access(program, os.X_OK):
                raise ClusterError(f"{program} is not installed; {INSTALL}")
        for client in ("sinfo", "scancel", "nsenter") + (("ip",) if self.plan.namespaced else ()):
            if daemons.which(client) is None:
                pkg = {"nsenter": "util-linux", "ip": "iproute2"}.get(client, "slurm-client")
                raise ClusterError(f"{client} is not installed; install Debian's {pkg} package")

    def _record(self) -> dict[str, object]:
        try:
            data = json.loads((self.root / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_record(self, pids: dict[str, int | None]) -> None:
        data = {
            "nodes": len(self.plan.nodes),
            "ports": {"slurmctld": self.plan.ports.slurmctld, "slurmd": self.plan.ports.slurmd},
            "network": self.plan.network,
            "cpus": self.plan.cpus,
            "conf": str(self.plan.conf),
            "pids": pids,
        }
        atomic_write(self.root / RECORD, json.dumps(data, indent=2) + "\n")

    @contextlib.contextmanager
    def _locked(self, name: str = "lock", what: str = "`eessi-pipeline cluster up/down`") -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with locks.wait_lock(self.root / name, LOCK_TIMEOUT, what, ClusterError, poll=POLL):
            yield

    def _find(self, pid_file: Path, marker: str) -> int | None:
        """Our process: the pid file's if alive with our command line, else the oldest such process."""
        return daemons.find([daemons.read_pid(pid_file)], marker)

    def _holder(self, name: str) -> int | None:
        return self._find(self.plan.holder_pid(name), self.plan.holder_marker(name) + " ")

    def _ctld(self) -> int | None:
        return self._find(self.plan.ctld_pid, self.plan.ctld_marker + " ")

    def _slurmd(self, node: str) -> int | None:
        return self._find(self.plan.slurmd_pid(node), self.plan.slurmd_marker(node) + " ")

    def _listening(self, pid: int, port: int, address: str | None) -> bool:
        return any(
            s.port == port and (address is None or s.address == address)
            for s in netns.listeners_in_netns(pid)
        )

    def _same_config(self) -> bool:
        try:
            return self.plan.conf.read_text(encoding="utf-8") == render_slurm_conf(self.plan)
        except OSError:
            return False

    def _node_states(self) -> dict[str, str]:
        try:
            done = self.client_run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15.0, check=False)
        except (ClusterError, proc.CommandFailed):
            return {}
        if done.returncode != 0:
            return {}
        states: dict[str, str] = {}
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1].rstrip("*~#!%$@^-").lower()
        return states

    def _status(self, action: str | None) -> ClusterStatus:
        ctld = self._ctld()
        ctld_addr = None if self.plan.namespaced else self.plan.control_address
        ctld_listening = ctld is not None and self._listening(ctld, self.plan.ports.slurmctld, ctld_addr)
        states = self._node_states() if ctld_listening else {}
        nodes = []
        for node in self.plan.nodes:
            pid = self._slurmd(node.name)
            addr = None if node.own_network else node.address
            listening = pid is not None and self._listening(pid, self.plan.ports.slurmd, addr)
            state = states.get(node.name, "unknown") if pid is not None else "not running"
            nodes.append(NodeStatus(node.name, node.address, state, pid, listening))
        if action is None:
            action = "running" if ctld is not None else "stopped"
        return ClusterStatus(
            self.plan.conf,
            tuple(nodes),
            ctld,
            self.plan.control_address,
            self.plan.ports.slurmctld,
            ctld_listening,
            self.plan.network,
            action,
        )

    def _up(self) -> ClusterStatus:
        if self._ctld() is not None or any(self._holder(n) for n in self._holder_names()):
            if self._same_config() and self._status(None).healthy:
                return self._status("already running")
            log.info("the cluster runs another configuration (or is unhealthy); restarting it")
            self._down()
            action = "restarted"
        else:
            action = "started"
        self._check_ports()
        for d in (
            self.plan.conf.parent,
            self.plan.state_save,
            self.plan.spool,
            self.plan.run_dir,
            self.plan.log_dir,
            self.root / "ns",
        ):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write(self.plan.conf, render_slurm_conf(self.plan), 0o644)
        try:
            holders = self._start_holders()
            if self.plan.namespaced:
                for argv, what in netns.network_commands(self.plan, holders):
                    self._run(argv, what)
            ctld = self._start_ctld(holders.get("head"))
            slurmds = {n.name: self._start_slurmd(n, holders[n.name]) for n in self.plan.nodes}
            self._wait_idle()
        except BaseException:
            with contextlib.suppress(Exception):
                self._down()
            raise
        self._write_record(
            {
                "slurmctld": ctld,
                **{f"slurmd-{k}": v for k, v in slurmds.items()},
                **{f"ns-{k}": v for k, v in holders.items()},
            }
        )
        return self._status(action)

    def _holder_names(self) -> list[str]:
        return netns.holder_names(self.plan)

    def _check_ports(self) -> None:
        if self.plan.namespaced:
            return  # the daemons listen in namespaces of their own: no port of this host is used
        for name, port in (("slurmctld", self.plan.ports.slurmctld), ("slurmd", self.plan.ports.slurmd)):
            if not sockets.tcp_port_free(self.plan.control_address, port):
                raise ClusterError(
                    sockets.port_in_use(
                        name, self.plan.control_address, port, PORT_OPTION[name], PORT_ENV[name]
                    )
                )

    def _start_holders(self) -> dict[str, int]:
        holders: dict[str, int] = {}
        for name in self._holder_names():
            self.plan.holder_pid(name).unlink(missing_ok=True)
            self._run(netns.holder_argv(self.plan, self.root, name), f"creating the namespaces of {name}")
            pid = daemons.read_pid(self.plan.holder_pid(name))
            if pid is None:
                raise ClusterError(
                    f"the namespace holder of {name} wrote no pid file {self.plan.holder_pid(name)}"
                )
            holders[name] = pid
        return holders

    def _run(self, argv: Sequence[str], what: str, log_file: Path | None = None) -> proc.CommandResult:
        try:
            return proc.run(argv, timeout=COMMAND_TIMEOUT, cwd=self.root)
        except proc.CommandFailed as e:
            tail = f"\n(log {log_file}:)\n{daemons.tail(log_file)}" if log_file is not None else ""
            raise ClusterError(f"{what} failed: {e}{tail}") from e

    def _start_ctld(self, head: int | None) -> int:
        prefix = ["nsenter", "-t", str(head), "--net", "--"] if head is not None else []
        self.plan.ctld_pid.unlink(missing_ok=True)
        self._run([*prefix, *self.plan.ctld_argv], "starting slurmctld", self.plan.ctld_log)
        addr = None if self.plan.namespaced else self.plan.control_address
        return self._wait(
            lambda: self._ctld(), self.plan.ports.slurmctld, addr, "slurmctld", self.plan.ctld_log
        )

    def _start_slurmd(self, node: NodePlan, holder: int) -> int:
        spaces = ["--mount"] + (["--net"] if node.own_network else []) + (["--uts"] if node.hostname else [])
        self.plan.slurmd_pid(node.name).unlink(missing_ok=True)
        (self.plan.spool / node.name).mkdir(parents=True, exist_ok=True)
        argv = ["nsenter", "-t", str(holder), *spaces, "--", *self.plan.slurmd_argv(node.name)]
        log_file = self.plan.slurmd_log(node.name)
        self._run(argv, f"starting slurmd of {node.name}", log_file)
        addr = None if node.own_network else node.address
        return self._wait(
            lambda: self._slurmd(node.name), self.plan.ports.slurmd, addr, f"slurmd of {node.name}", log_file
        )

    def _wait(self, find: object, port: int, address: str | None, what: str, log_file: Path) -> int:
        assert callable(find)
        deadline = time.monotonic() + self.ready_timeout
        gone_since: float | None = None
        while True:
            pid = find()
            now = time.monotonic()
            if pid is not None:
                gone_since = None
                if self._listening(pid, port, address):
                    return int(pid)
            else:
                gone_since = gone_since if gone_since is not None else now
                if now - gone_since >= 2.0:
                    raise ClusterError(
                        f"{what} exited during start-up; fix what {log_file} says:\n{daemons.tail(log_file)}"
                    )
            if now >= deadline:
                raise ClusterError(
                    f"{what} does not listen on port {port} after {self.ready_timeout:g} s; see {log_file}:\n"
                    f"{daemons.tail(log_file)}"
                )
            time.sleep(POLL)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            states = self._node_states()
            if states and all(states.get(n.name) == "idle" for n in self.plan.nodes):
                return
            if time.monotonic() >= deadline:
                shown = ", ".join(f"{n.name}={states.get(n.name, '?')}" for n in self.plan.nodes)
                raise ClusterError(
                    f"the nodes are not idle after {self.ready_timeout:g} s ({shown}); "
                    f"see {self.plan.log_dir}"
                )
            time.sleep(0.2)

    def _down(self) -> ClusterStatus:
        ctld = self._ctld()
        if ctld is not None:
            with contextlib.suppress(ClusterError, proc.CommandFailed):
                self.client_run(["scancel", "--full", f"--partition={'eessi'}"], timeout=15.0, check=False)
        problems: list[str] = []
        for node in self.plan.nodes:
            pid = self._slurmd(node.name)
            if pid is not None:
                self._stop([pid], f"slurmd of {node.name}", problems)
            holder = self._holder(node.name)
            if holder is not None:  # job steps and their programs live in the node's mount namespace
                ns = netns.own_mount_ns(holder)  # None: not (yet) its own; never sweep this host's
                rest = netns.processes_in_mount_ns(ns, holder) if ns is not None else []
                if rest:
                    self._stop(rest, f"processes left on {node.name}", problems, sig=signal.SIGKILL)
                self._stop([holder], f"namespaces of {node.name}", problems)
        if ctld is not None:
            self._stop([ctld], "slurmctld", problems)
        head = self._holder("head") if self.plan.namespaced else None
        if head is not None:
            self._stop([head], "the head's namespace", problems)
        for f in (self.plan.ctld_pid, *(self.plan.slurmd_pid(n.name) for n in self.plan.nodes)):
            f.unlink(missing_ok=True)
        if not problems and not self.plan.spool.is_relative_to(self.root):  # a short spool under /run
            shutil.rmtree(self.plan.spool, ignore_errors=True)
            with contextlib.suppress(OSError):  # the shared parent, once no cluster uses it
                self.plan.spool.parent.rmdir()
        if problems:
            raise ClusterError("; ".join(problems))
        self._write_record({})
        return self._status("stopped" if ctld is not None else "not running")

    def _stop(self, pids: list[int], what: str, problems: list[str], sig: int = signal.SIGTERM) -> None:
        left = daemons.stop_trees(pids, sig, self.stop_timeout, what, kill_wait=5.0, poll=POLL)
        if left:
            problems.append(f"{what}: processes {left} survived SIGKILL ({daemons.survivors_hint(left)})")

    # -- the software under test on the nodes ----------------------------------------------------------

    @contextlib.contextmanager
    def expose(self, view: ViewMounts) -> Iterator[None]:
        """Show ``view`` at its mount point inside every node's mount namespace while the block runs
        (one view at a time per cluster: a lock serialises test runs on the same cluster)."""
        self.require_running()
        with self._locked("view.lock", "test run on this cluster"):
            done: list[int] = []
            try:
                for node in self.plan.nodes:
                    holder = self._holder(node.name)
                    if holder is None or netns.own_mount_ns(holder) is None:
                        raise ClusterError(  # never mount over this host's /cvmfs
                            f"node {node.name} has no mount namespace of its own; run `eessi-pipeline "
                            "cluster down` and `cluster up`"
                        )
                    self._unmount(holder, view)  # a view left by a killed run
                    done.append(holder)
                    for argv in view.mount_argvs():
                        self._run(
                            ["nsenter", "-t", str(holder), "--mount", "--", *argv],
                            f"showing {view.mount} on {node.name}",
                        )
                yield
            finally:
                for holder in done:
                    with contextlib.suppress(ClusterError):
                        self._unmount(holder, view)

    def _unmount(self, holder: int, view: ViewMounts) -> None:
        for argv in view.unmount_argvs():
            proc.run(
                ["nsenter", "-t", str(holder), "--mount", "--", *argv], timeout=COMMAND_TIMEOUT, check=False
            )
