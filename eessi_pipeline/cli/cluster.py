"""``eessi-pipeline cluster up|down|status|exec|env``: the embedded Slurm cluster on this machine."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from ..cluster.config import PORT_ENV, resolve_ports
from ..cluster.manager import Cluster
from ..cluster.status import ClusterStatus
from ..errors import UsageError
from ..proc import run_echoed
from ..settings import resolve_settings
from .options import add_json, add_setting
from .output import emit_json


def _cluster(args: argparse.Namespace, *, explicit: bool) -> Cluster:
    state = resolve_settings(state_dir=getattr(args, "state_dir", None)).state_dir
    if not explicit:
        return Cluster(state)
    ports = resolve_ports(slurmctld=args.slurmctld_port, slurmd=args.slurmd_port, environ=os.environ)
    return Cluster(state, nodes=args.nodes, ports=ports, network=args.network)


def _show(status: ClusterStatus, out: TextIO) -> None:
    ctld = f"running (pid {status.ctld_pid})" if status.ctld_pid else "stopped"
    if status.ctld_pid and not status.ctld_listening:
        ctld += f", not listening on port {status.ctld_port}"
    out.write(f"slurmctld {ctld:<24} {status.ctld_address}:{status.ctld_port}\n")
    for n in status.nodes:
        out.write(
            f"{n.name:<9} {n.state:<24} {n.address}" + (f" (slurmd pid {n.pid})" if n.pid else "") + "\n"
        )
    if status.network:
        out.write(f"network   {status.network} (bridge in the head's network namespace)\n")
    out.write(f"SLURM_CONF={status.conf}\n")


def cmd_up(args: argparse.Namespace, out: TextIO) -> int:
    status = _cluster(args, explicit=True).up()
    if args.json:
        emit_json(status.to_json(), out)
    else:
        _show(status, out)
        sys.stderr.write(f"[cluster] {status.action}; clients: `eessi-pipeline cluster exec -- sinfo`\n")
    return 0


def cmd_down(args: argparse.Namespace, out: TextIO) -> int:
    status = _cluster(args, explicit=False).down()
    if args.json:
        emit_json(status.to_json(), out)
    else:
        out.write(f"cluster {status.action}\n")
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    status = _cluster(args, explicit=False).status()
    if args.json:
        emit_json(status.to_json(), out)
    else:
        _show(status, out)
    if not status.healthy:
        sys.stderr.write("[cluster] not ready; start it with `eessi-pipeline cluster up`\n")
        return 1
    return 0


def cmd_exec(args: argparse.Namespace, out: TextIO) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("cluster exec needs a command, e.g. `eessi-pipeline cluster exec -- sinfo`")
    cluster = _cluster(args, explicit=False)
    cluster.require_running()
    done = run_echoed(
        [*cluster.client_prefix(), *argv], timeout=args.timeout, echo=out, env=cluster.client_env()
    )
    return done.returncode


def cmd_env(args: argparse.Namespace, out: TextIO) -> int:
    cluster = _cluster(args, explicit=False)
    out.write(f"export SLURM_CONF={cluster.conf}\n")
    if cluster.plan.namespaced:
        sys.stderr.write(
            "[cluster] its nodes live in namespaces: run clients with `eessi-pipeline cluster exec`\n"
        )
    return 0


def add_cluster_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="the embedded Slurm cluster (slurmctld + slurmd) on this machine")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    up = verbs.add_parser("up", help="start slurmctld and one slurmd per node (idempotent)")
    add_setting(up, "state_dir")
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="nodes; more than one puts each in namespaces of its own on a private bridge",
    )
    up.add_argument(
        "--slurmctld-port", type=int, metavar="PORT", help=f"default: ${PORT_ENV['slurmctld']} or 16817"
    )
    up.add_argument(
        "--slurmd-port", type=int, metavar="PORT", help=f"default: ${PORT_ENV['slurmd']} or 16818"
    )
    up.add_argument(
        "--network", metavar="CIDR", help="private network of a multi-node cluster (10.213.7.0/24)"
    )
    add_json(up, "print the status as JSON")
    up.set_defaults(handler=cmd_up)
    down = verbs.add_parser("down", help="cancel the jobs, stop every daemon, remove the namespaces")
    add_setting(down, "state_dir")
    add_json(down)
    down.set_defaults(handler=cmd_down)
    status = verbs.add_parser(
        "status", help="daemons, listening addresses, node states (exit 1 unless ready)"
    )
    add_setting(status, "state_dir")
    add_json(status)
    status.set_defaults(handler=cmd_status)
    ex = verbs.add_parser("exec", help="run a Slurm client command against the cluster (sinfo, sbatch, srun)")
    add_setting(ex, "state_dir")
    ex.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    ex.set_defaults(handler=cmd_exec)
    env = verbs.add_parser("env", help="print `export SLURM_CONF=...` for a shell")
    add_setting(env, "state_dir")
    env.set_defaults(handler=cmd_env)
