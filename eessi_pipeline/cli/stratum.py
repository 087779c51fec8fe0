"""``eessi-pipeline stratum …``: the local Stratum 0, Stratum 1 and squid proxy, and replication."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from ..cvmfs.repository import RepoPaths
from ..errors import ServiceError
from ..services import stratum1
from ..services.plans import DEFAULT_PORTS, PORT_ENV, resolve_ports
from ..services.stack import READY_TIMEOUT, STOP_TIMEOUT, ServiceStatus, Stack
from ..settings import resolve_settings
from .options import add_json, add_setting
from .output import emit_json

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8


def _progress(msg: str) -> None:
    sys.stderr.write(f"[stratum] {msg}\n")


def _state_dir(args: argparse.Namespace) -> Path:
    return resolve_settings(state_dir=getattr(args, "state_dir", None)).state_dir


def _stack(args: argparse.Namespace, *, explicit_ports: bool) -> Stack:
    """``explicit_ports``: up uses command line > environment > defaults; the other verbs use the
    ports the services were started with."""
    ports = (
        resolve_ports(stratum0=args.stratum0_port, stratum1=args.stratum1_port, proxy=args.proxy_port)
        if explicit_ports
        else None
    )
    return Stack(
        _state_dir(args),
        ports,
        ready_timeout=getattr(args, "timeout", READY_TIMEOUT),
        stop_timeout=getattr(args, "timeout", STOP_TIMEOUT),
    )


def _services_json(statuses: tuple[ServiceStatus, ...]) -> dict[str, Any]:
    return {"services": [s.to_json() for s in statuses]}


def cmd_up(args: argparse.Namespace, out: TextIO) -> int:
    stack = _stack(args, explicit_ports=True)
    if args.dry_run:
        plans = stack.plans()
        if args.json:
            services = [{"name": p.name, "url": p.url, "config": str(p.config_path),
                         "argv": list(p.start_argv)} for p in plans]  # fmt: skip
            emit_json({"dry_run": True, "services": services}, out)
        else:
            for p in plans:
                out.write(
                    f"would start {p.name} {p.url}: {' '.join(p.start_argv)} (config {p.config_path})\n"
                )
        return 0
    statuses = stack.up()
    if args.json:
        emit_json(_services_json(statuses), out)
    else:
        for s in statuses:
            out.write(f"{s.name} {s.url}\n")
            _progress(f"{s.name}: {s.action} (pid {s.pid}; config {s.config})")
    return 0


def cmd_down(args: argparse.Namespace, out: TextIO) -> int:
    stack = _stack(args, explicit_ports=False)
    if args.dry_run:
        for s in stack.status():
            out.write(f"would stop {s.name} (pid {s.pid})\n" if s.running else f"{s.name} is not running\n")
        return 0
    statuses = stack.down()
    if args.json:
        emit_json(_services_json(statuses), out)
    else:
        for s in statuses:
            out.write(f"{s.name} {s.action}" + (f" (pid {s.pid})" if s.pid is not None else "") + "\n")
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    statuses = _stack(args, explicit_ports=False).status()
    if args.json:
        emit_json(_services_json(statuses), out)
    else:
        for s in statuses:
            state = f"running (pid {s.pid})" if s.running else "stopped"
            if s.running and not s.listening:
                state += f", but not listening on port {s.port}"
            out.write(f"{s.name:<9} {state:<22} {s.url}\n")
    down = [s.name for s in statuses if not (s.running and s.listening)]
    if down and not args.json:
        _progress(f"not serving: {', '.join(down)}; start them with `eessi-pipeline stratum up`")
    return 1 if down else 0


def cmd_snapshot(args: argparse.Namespace, out: TextIO) -> int:
    from ..cvmfs.http import apply_limit_options  # issue 16: --http-* flags

    apply_limit_options(args)
    settings = resolve_settings(repository=args.repo, state_dir=getattr(args, "state_dir", None))
    name = settings.repository
    stack = Stack(settings.state_dir)
    statuses = {s.name: s for s in stack.status()}
    source = args.source
    if source is None:
        s0 = statuses["stratum0"]
        if not s0.running:
            raise ServiceError(
                f"stratum0 is not running, so there is no source to replicate {name} from; run "
                "`eessi-pipeline stratum up` first, or pass --source URL"
            )
        source = f"{s0.url}/{name}"
    key_path = (
        Path(args.master_key) if args.master_key else RepoPaths(settings.state_dir, name).keys.master_public
    )
    from ..trust import refuse_if_writable  # issue 16: a master key others can write is no trust anchor

    refuse_if_writable(key_path, "the master public key", ServiceError)
    try:
        key = key_path.read_bytes()
    except OSError as e:
        raise ServiceError(
            f"cannot read the master public key {key_path} ({e.strerror or e}); run `eessi-pipeline repo "
            f"init {name}` or pass --master-key FILE"
        ) from e
    dest = stratum1.Stratum1Paths(settings.state_dir).replica(name)
    if args.dry_run:
        out.write(f"would replicate {source} into {dest} (verified with {key_path})\n")
        return 0
    try:
        from ..cvmfs.replica import snapshot  # the replication engine; imported only when used
    except ImportError as e:
        raise ServiceError(
            f"replication is not available in this installation ({e}); update eessi-pipeline"
        ) from e
    _progress(f"replicating {source} into {dest} ({args.workers} workers)")
    result = snapshot(source, dest, key, workers=args.workers, proxy=args.proxy)
    replicas = stratum1.write_info(settings.state_dir)
    s1_url = f"{statuses['stratum1'].url}/{name}"
    if args.json:
        emit_json({"repository": name, "revision": result.revision, "objects_fetched": result.objects_fetched,
               "bytes_fetched": result.bytes_fetched, "objects_skipped": result.objects_skipped,
               "source": source, "destination": str(dest), "stratum1_url": s1_url,
               "replicas": replicas}, out)  # fmt: skip
    else:
        out.write(
            f"{name} revision {result.revision}: {result.objects_fetched} objects fetched "
            f"({result.bytes_fetched} bytes), {result.objects_skipped} already present\n"
        )
        if not statuses["stratum1"].running:
            _progress(
                "stratum1 is not running: start it with `eessi-pipeline stratum up` to serve the replica"
            )
        else:
            _progress(f"serving at {s1_url}")
    return 0


def add_stratum_parser(sub: Any) -> None:
    stratum = sub.add_parser(
        "stratum", help="local Stratum 0 and Stratum 1 (nginx) and squid proxy on loopback; replication"
    )
    ssub = stratum.add_subparsers(dest="stratum_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_setting(p, "state_dir")
        add_json(p)

    p = ssub.add_parser("up", help="start the services (idempotent); print one `NAME URL` line each")
    for name in ("stratum0", "stratum1", "proxy"):
        p.add_argument(
            f"--{name}-port",
            type=int,
            metavar="N",
            help=f"port on 127.0.0.1 (default: ${PORT_ENV[name]} or {DEFAULT_PORTS[name]})",
        )
    p.add_argument(
        "--timeout", type=float, default=READY_TIMEOUT, metavar="S", help="readiness wait per service"
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be started")
    common(p)
    p.set_defaults(handler=cmd_up)

    p = ssub.add_parser("down", help="stop the services and wait until their processes are gone")
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT, metavar="S", help="before SIGKILL")
    p.add_argument("--dry-run", action="store_true", help="show what would be stopped")
    common(p)
    p.set_defaults(handler=cmd_down)

    p = ssub.add_parser("status", help="running/stopped, pid and URL of each service (exit 1 if any is down)")
    common(p)
    p.set_defaults(handler=cmd_status)

    p = ssub.add_parser("snapshot", help="replicate a repository from the Stratum 0 into the Stratum 1")
    add_setting(p, "repository")
    p.add_argument(
        "--source", metavar="URL", help="repository URL to replicate (default: the local stratum0)"
    )
    p.add_argument("--master-key", metavar="FILE", help="master public key (default: <state>/keys/NAME.pub)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N", help="parallel downloads")
    p.add_argument("--proxy", metavar="URL", help="fetch through this HTTP proxy")
    p.add_argument("--dry-run", action="store_true", help="say what would be replicated")
    from ..cvmfs.http import add_limit_options  # issue 16

    add_limit_options(p)
    common(p)
    p.set_defaults(handler=cmd_snapshot)
