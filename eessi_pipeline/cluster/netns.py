"""The namespaces of the embedded cluster's nodes: the argv of a namespace holder (:mod:`.nshold`), the
``ip`` commands that wire a head bridge to one veth pair per node, and facts read from ``/proc`` in a
process's own namespaces (pure but for those reads).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ..services import sockets
from . import nshold
from .config import ClusterPlan

NSHOLD = str(Path(nshold.__file__).resolve())
BRIDGE = "eessibr0"


def ns_id(pid: int, kind: str) -> str | None:
    """``pid``'s namespace of ``kind`` (``mnt``, ``net``, ...), e.g. ``mnt:[4026532]``, or None."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def own_mount_ns(pid: int) -> str | None:
    """``pid``'s mount namespace if it is not this process's own (never sweep or mount over the host's)."""
    ns = ns_id(pid, "mnt")
    return None if ns is None or ns == ns_id(os.getpid(), "mnt") else ns


def processes_in_mount_ns(ns: str, exclude: int) -> list[int]:
    """The live processes in mount namespace ``ns`` but ``exclude`` (the holder)."""
    return [
        p.pid for p in sockets.all_processes() if p.alive and p.pid != exclude and ns_id(p.pid, "mnt") == ns
    ]


def listeners_in_netns(pid: int) -> list[sockets.Listener]:
    """The listening TCP sockets of ``pid``'s process tree, read in *its* network namespace."""
    inodes: set[int] = set()
    for p in sockets.process_tree(pid):
        inodes |= sockets.socket_inodes(p)
    found: list[sockets.Listener] = []
    for protocol in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/net/{protocol}").read_text()
            found += [s for s in sockets.parse_proc_net(text, protocol) if s.inode in inodes]
    return found


def holder_names(plan: ClusterPlan) -> list[str]:
    """One namespace holder for the head (with ``--nodes 2``) and one per node."""
    return (["head"] if plan.namespaced else []) + [n.name for n in plan.nodes]


def holder_argv(plan: ClusterPlan, root: Path, name: str) -> list[str]:
    """The command that starts the namespace holder of ``name`` (``head`` or a node)."""
    argv = [
        sys.executable,
        "-I",
        "-S",
        NSHOLD,
        "--pid-file",
        str(plan.holder_pid(name)),
        "--marker",
        f"{root}/ns/{name}",
    ]
    if name == "head":
        argv.append("--net")
    else:
        node = next(n for n in plan.nodes if n.name == name)
        argv.append("--mount")
        if node.own_network:
            argv.append("--net")
        if node.hostname:
            argv += ["--uts", node.hostname]
    return argv


def network_commands(plan: ClusterPlan, holders: dict[str, int]) -> list[tuple[list[str], str]]:
    """(argv, what it does) for a bridge in the head's namespace and a veth pair per node, each node's
    end named ``eth0`` with its address."""
    assert plan.network is not None
    prefix = plan.network.split("/")[1]
    head = ["nsenter", "-t", str(holders["head"]), "--net", "--"]
    out = [
        ([*head, "ip", "link", "add", BRIDGE, "type", "bridge"], "creating the head's bridge"),
        (
            [*head, "ip", "addr", "add", f"{plan.control_address}/{prefix}", "dev", BRIDGE],
            "addressing the bridge",
        ),
        ([*head, "ip", "link", "set", BRIDGE, "up"], "bringing the bridge up"),
    ]
    for node in plan.nodes:
        pid = holders[node.name]
        veth = f"veth-{node.name}"
        inside = ["nsenter", "-t", str(pid), "--net", "--"]
        out += [
            (
                [*head, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid)],
                f"creating {node.name}'s veth pair",
            ),
            ([*head, "ip", "link", "set", veth, "master", BRIDGE, "up"], f"attaching {veth}"),
            (
                [*inside, "ip", "addr", "add", f"{node.address}/{prefix}", "dev", "eth0"],
                f"addressing {node.name}",
            ),
            ([*inside, "ip", "link", "set", "eth0", "up"], f"bringing {node.name}'s eth0 up"),
        ]
    return out
