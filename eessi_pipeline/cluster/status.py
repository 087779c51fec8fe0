"""What :class:`~eessi_pipeline.cluster.manager.Cluster` reports about the embedded cluster (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    address: str
    state: str  # Slurm's state (idle, allocated, mixed, down, ...) or "not running"
    pid: int | None
    listening: bool

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "pid": self.pid,
            "listening": self.listening,
        }


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    conf: Path
    nodes: tuple[NodeStatus, ...]
    ctld_pid: int | None
    ctld_address: str
    ctld_port: int
    ctld_listening: bool
    network: str | None
    action: str  # started, restarted, already running, stopped, not running, running

    @property
    def healthy(self) -> bool:
        return (
            self.ctld_pid is not None
            and self.ctld_listening
            and all(
                n.listening and n.state in ("idle", "allocated", "mixed", "completing") for n in self.nodes
            )
        )

    def to_json(self) -> dict[str, object]:
        return {
            "conf": str(self.conf),
            "action": self.action,
            "healthy": self.healthy,
            "slurmctld": {
                "pid": self.ctld_pid,
                "address": self.ctld_address,
                "port": self.ctld_port,
                "listening": self.ctld_listening,
            },
            "network": self.network,
            "nodes": [n.to_json() for n in self.nodes],
            "env": {"SLURM_CONF": str(self.conf)},
        }
