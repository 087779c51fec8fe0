"""What the filesystem layer's three local services are, computed without side effects: their ports
(command line > ``EESSI_PIPELINE_<NAME>_PORT`` > defaults), who their workers run as, and one
:class:`ServicePlan` each (configuration text, argument vectors, pid file, marker).  Started and
stopped by :mod:`.stack`.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import daemons
from ..errors import ServiceError
from . import nginx, sockets, squid, stratum1

SERVICES = ("stratum0", "stratum1", "proxy")
LOOPBACK = "127.0.0.1"
DEFAULT_PORTS: Mapping[str, int] = {"stratum0": 18080, "stratum1": 18081, "proxy": 13128}
PORT_ENV: Mapping[str, str] = {
    "stratum0": "EESSI_PIPELINE_STRATUM0_PORT",
    "stratum1": "EESSI_PIPELINE_STRATUM1_PORT",
    "proxy": "EESSI_PIPELINE_PROXY_PORT",
}
PORT_OPTION: Mapping[str, str] = {name: f"--{name}-port" for name in SERVICES}
SQUID_USERS = ("proxy", "nobody")
"""Who squid runs as when started as root: Debian's squid user, else nobody."""


# --- ports ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ports:
    stratum0: int
    stratum1: int
    proxy: int

    def of(self, name: str) -> int:
        return {"stratum0": self.stratum0, "stratum1": self.stratum1, "proxy": self.proxy}[name]


def resolve_ports(
    *,
    stratum0: int | None = None,
    stratum1: int | None = None,
    proxy: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Ports:
    """Ports from the command line, else ``EESSI_PIPELINE_<NAME>_PORT``, else the defaults."""
    env = os.environ if environ is None else environ
    given = {"stratum0": stratum0, "stratum1": stratum1, "proxy": proxy}
    chosen: dict[str, int] = {}
    for name in SERVICES:
        value = given[name]
        if value is not None:
            chosen[name] = sockets.port_number(value, PORT_OPTION[name], ServiceError, name)
        elif env.get(PORT_ENV[name]):
            chosen[name] = sockets.port_number(env[PORT_ENV[name]], PORT_ENV[name], ServiceError, name)
        else:
            chosen[name] = DEFAULT_PORTS[name]
    seen: dict[int, str] = {}
    for name, port in chosen.items():
        if port in seen:
            raise ServiceError(
                f"{seen[port]} and {name} would both use port {port}; give them different ports "
                f"({PORT_OPTION[seen[port]]}, {PORT_OPTION[name]} or {PORT_ENV[name]})"
            )
        seen[port] = name
    return Ports(**chosen)


def find_binary(name: str, environ: Mapping[str, str] | None = None) -> str:
    """``name`` on PATH or in the sbin directories; the bare name when absent (the start then says
    how to install it)."""
    return daemons.which(name, environ) or name


# --- plans: what each service is, computed without side effects -----------------------------------------


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who the workers run as when the daemons start as root; all None when not root."""

    nginx_user: str | None = None
    nginx_group: str | None = None
    squid_user: str | None = None
    squid_uid: int | None = None
    squid_gid: int | None = None


def run_as_for(state_dir: Path, euid: int | None = None) -> RunAs:
    """As root: nginx workers as the state directory's owner, squid as ``proxy`` (or nobody)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return RunAs()
    st = state_dir.stat()
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        raise ServiceError(
            f"{state_dir} belongs to uid {st.st_uid}/gid {st.st_gid}, which have no name; nginx needs a user "
            "name for its workers: chown the state directory to a named user"
        ) from None
    for candidate in SQUID_USERS:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        return RunAs(user, group, entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise ServiceError(
        f"squid refuses to run as root and none of the users {', '.join(SQUID_USERS)} exists; "
        "install Debian's squid package (it creates `proxy`) or create one of them"
    )


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """Everything about one service: its configuration, the programs to run, and where to look."""

    name: str
    kind: str  # nginx or squid
    port: int
    url: str
    runtime_dir: Path
    make_dirs: tuple[Path, ...]  # created before the start (nginx does not create its temp dir's parent)
    config_path: Path
    config_text: str
    pid_path: Path
    log_path: Path  # where start-up errors go
    check_argv: tuple[str, ...]
    start_argv: tuple[str, ...]
    init_argv: tuple[str, ...] | None  # squid -N -z, run while ``init_done`` does not exist
    init_done: Path | None
    cwd: Path
    marker: str  # part of our daemon's command line
    stop_signal: int
    probe_path: str  # an HTTP request that shows the service answers (any status will do)
    owner: tuple[int, int] | None  # give the runtime directory to (uid, gid) before starting
    shm_glob: str | None  # /dev/shm leftovers of a crashed instance


def services_dir(state_dir: Path) -> Path:
    return state_dir / "services"


def plan_services(
    state_dir: Path,
    ports: Ports,
    run_as: RunAs = RunAs(),
    *,
    nginx_binary: str = "nginx",
    squid_binary: str = "squid",
) -> tuple[ServicePlan, ...]:
    """The three services for ``state_dir`` (absolute) and ``ports``; pure."""
    if not state_dir.is_absolute():
        raise ServiceError(f"state directory {state_dir} must be absolute here; resolve it first")
    plans: list[ServicePlan] = []
    web_roots = {"stratum0": state_dir / "srv", "stratum1": stratum1.Stratum1Paths(state_dir).srv}
    for name in ("stratum0", "stratum1"):
        server = nginx.NginxServer(
            name=name,
            port=ports.of(name),
            web_root=web_roots[name],
            runtime_dir=services_dir(state_dir) / name,
            geo_api=name == "stratum1",
            host=LOOPBACK,
            user=run_as.nginx_user,
            group=run_as.nginx_group,
        )
        plans.append(
            ServicePlan(
                name=name,
                kind="nginx",
                port=server.port,
                url=server.url,
                runtime_dir=server.runtime_dir,
                make_dirs=(server.runtime_dir, server.temp_dir, server.web_root / "cvmfs"),
                config_path=server.config_path,
                config_text=nginx.render_config(server),
                pid_path=server.pid_path,
                log_path=server.error_log,
                check_argv=nginx.check_argv(server, nginx_binary),
                start_argv=nginx.start_argv(server, nginx_binary),
                init_argv=None,
                init_done=None,
                cwd=server.runtime_dir,
                marker=str(server.config_path),
                stop_signal=signal.SIGQUIT,
                probe_path="/cvmfs/info/v1/repositories.json",
                owner=None,
                shm_glob=None,
            )
        )
    proxy = squid.SquidProxy(
        port=ports.proxy,
        runtime_dir=services_dir(state_dir) / "proxy",
        host=LOOPBACK,
        effective_user=run_as.squid_user,
    )
    owner = (run_as.squid_uid, run_as.squid_gid)
    plans.append(
        ServicePlan(
            name="proxy",
            kind="squid",
            port=proxy.port,
            url=proxy.url,
            runtime_dir=proxy.runtime_dir,
            make_dirs=(proxy.runtime_dir,),
            config_path=proxy.config_path,
            config_text=squid.render_config(proxy),
            pid_path=proxy.pid_path,
            log_path=proxy.cache_log,
            check_argv=squid.check_argv(proxy, squid_binary),
            start_argv=squid.start_argv(proxy, squid_binary),
            init_argv=squid.init_cache_argv(proxy, squid_binary),
            init_done=proxy.cache_dir / "00",
            cwd=proxy.runtime_dir,
            marker=f"-n {proxy.service_name} ",
            stop_signal=signal.SIGTERM,
            probe_path="/",
            owner=(owner[0], owner[1]) if owner[0] is not None and owner[1] is not None else None,
            shm_glob=f"{proxy.service_name}-*",
        )
    )
    return tuple(plans)
