"""Start, stop and report the filesystem layer's three local services.

``stratum0``  nginx serving ``<state>/srv`` (the embedded Stratum 0's web root)    127.0.0.1:18080
``stratum1``  nginx serving ``<state>/stratum1/srv`` (replicas), with the geo API  127.0.0.1:18081
``proxy``     squid forward proxy for clients on this machine                     127.0.0.1:13128

Ports: command line > ``EESSI_PIPELINE_<NAME>_PORT`` > the defaults above.  Each service keeps
its generated configuration, pid file, logs and (squid) cache in ``<state>/services/<name>/``,
and a record of the last start in ``service.json`` there.

:meth:`Stack.up` is idempotent: a service already running with the same configuration is left
alone, one running with another configuration (say, a new port) is restarted, and a stopped one
is started: port check (a taken port names the process holding it), configuration test
(``nginx -t``, ``squid -k parse``), start, then a readiness wait that polls until the port
listens *in our process tree* and answers HTTP.  If one service fails, those this call started
are stopped again.  One ``up`` or ``down`` runs at a time (a lock in ``<state>/services``).
:meth:`Stack.down` signals each daemon (nginx: SIGQUIT, graceful; squid:
SIGTERM) and waits until every process of its tree is gone, escalating to SIGKILL after
``stop_timeout``.  A daemon is recognised by its pid file *and* its command line (the config
path, or squid's per-directory service name), so a recycled pid is never signalled.

Started as root, the nginx workers run as the owner of the state directory (so they read what
its owner can, whatever the modes of the directories above), and squid, which refuses to run as
root, as Debian's ``proxy`` user in a runtime directory given to that user (see ``squid``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import grp
import hashlib
import http.client
import json
import logging
import os
import pwd
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import ServiceError
from ..fileio import atomic_write
from . import nginx, sockets, squid, stratum1

log = logging.getLogger(__name__)

SERVICES = ("stratum0", "stratum1", "proxy")
LOOPBACK = "127.0.0.1"
DEFAULT_PORTS: Mapping[str, int] = {"stratum0": 18080, "stratum1": 18081, "proxy": 13128}
PORT_ENV: Mapping[str, str] = {
    "stratum0": "EESSI_PIPELINE_STRATUM0_PORT",
    "stratum1": "EESSI_PIPELINE_STRATUM1_PORT",
    "proxy": "EESSI_PIPELINE_PROXY_PORT",
}
PORT_OPTION: Mapping[str, str] = {name: f"--{name}-port" for name in SERVICES}
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
KILL_WAIT = 5.0
EXIT_GRACE = 1.0
"""Seconds without any process of a starting daemon before the start counts as failed."""
POLL_INTERVAL = 0.05
SQUID_USERS = ("proxy", "nobody")
"""Who squid runs as when started as root: Debian's squid user, else nobody."""
RECORD_NAME = "service.json"
LOCK_NAME = "lock"
LOCK_TIMEOUT = 120.0
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
"""Where Debian puts nginx and squid; not on an ordinary user's PATH."""
LOG_TAIL_LINES = 15


# --- ports ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ports:
    stratum0: int
    stratum1: int
    proxy: int

    def of(self, name: str) -> int:
        return {"stratum0": self.stratum0, "stratum1": self.stratum1, "proxy": self.proxy}[name]


def _port_value(name: str, value: int | str, origin: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ServiceError(f"{origin}={value!r} is not a port number; give an integer in 1-65535") from None
    if not 1 <= port <= 65535:
        raise ServiceError(f"{origin}={port} is not in 1-65535; give another port for {name}")
    return port


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
            chosen[name] = _port_value(name, value, PORT_OPTION[name])
        elif env.get(PORT_ENV[name]):
            chosen[name] = _port_value(name, env[PORT_ENV[name]], PORT_ENV[name])
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
    env = os.environ if environ is None else environ
    path = os.pathsep.join([env.get("PATH", os.defpath), *SBIN_DIRS])
    return shutil.which(name, path=path) or name


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


# --- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    url: str
    port: int
    running: bool
    listening: bool  # the port listens in the daemon's process tree
    pid: int | None
    action: str  # started, restarted, already running, stopped, not running, running
    config: Path
    log: Path

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.url,
            "port": self.port,
            "running": self.running,
            "listening": self.listening,
            "pid": self.pid,
            "action": self.action,
            "config": str(self.config),
            "log": str(self.log),
        }


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _http_answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        conn.request("GET", path, headers={"User-Agent": "eessi-pipeline-readiness"})
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Stack:
    """The three services of one state directory."""

    def __init__(
        self,
        state_dir: Path,
        ports: Ports | None = None,
        *,
        nginx_binary: str | None = None,
        squid_binary: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``ports`` None: each service's recorded port, else the environment's, else the default.
        Binaries: found on PATH or in /usr/sbin unless given."""
        self.state_dir = Path(state_dir).resolve()
        self.nginx_binary = nginx_binary or find_binary("nginx", environ)
        self.squid_binary = squid_binary or find_binary("squid", environ)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.ports = ports if ports is not None else self._recorded_ports(resolve_ports(environ=environ))

    # -- public ------------------------------------------------------------------------------------

    @property
    def proxy_access_log(self) -> Path:
        """squid's access log (native format, see :func:`squid.parse_access_log`)."""
        return services_dir(self.state_dir) / "proxy" / squid.ACCESS_LOG_NAME

    def plans(self, run_as: RunAs | None = None) -> tuple[ServicePlan, ...]:
        if run_as is None:
            run_as = run_as_for(self.state_dir) if self.state_dir.exists() else RunAs()
        return plan_services(
            self.state_dir, self.ports, run_as, nginx_binary=self.nginx_binary, squid_binary=self.squid_binary
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up`` or ``down`` at a time per state directory (flock: released if we die)."""
        directory = services_dir(self.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ServiceError(
                            f"another `eessi-pipeline stratum up/down` holds {directory / LOCK_NAME} for "
                            f"{LOCK_TIMEOUT:g} s; wait for it to finish and run this again"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def up(self) -> tuple[ServiceStatus, ...]:
        """Bring every service up (see module doc); returns their status, action says what happened."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._up()

    def _up(self) -> tuple[ServiceStatus, ...]:
        (self.state_dir / "srv" / "cvmfs").mkdir(parents=True, exist_ok=True)
        stratum1.write_info(self.state_dir)
        plans = self.plans()
        started: list[ServicePlan] = []
        results: list[ServiceStatus] = []
        try:
            for plan in plans:
                pid = self._running_pid(plan)
                action = "started"
                if pid is not None:
                    if self._same_config(plan) and self._listening(plan, pid):
                        log.info("%s already runs as pid %d with this configuration", plan.name, pid)
                        results.append(self._status(plan, "already running"))
                        continue
                    log.info("%s (pid %d) runs another configuration; restarting it", plan.name, pid)
                    self._stop(plan)
                    action = "restarted"
                self._start(plan)
                started.append(plan)
                results.append(self._status(plan, action))
        except BaseException:
            for plan in reversed(started):
                with contextlib.suppress(Exception):
                    self._stop(plan)
            raise
        return tuple(results)

    def down(self) -> tuple[ServiceStatus, ...]:
        """Stop every service and wait until its processes are gone (proxy first)."""
        if not services_dir(self.state_dir).is_dir():  # never started: nothing to stop or create
            return tuple(self._status(plan, "not running") for plan in self.plans())
        with self._locked():
            return self._down()

    def _down(self) -> tuple[ServiceStatus, ...]:
        plans = self.plans()
        errors: list[str] = []
        results: dict[str, ServiceStatus] = {}
        for plan in reversed(plans):
            try:
                pid = self._stop(plan)
            except ServiceError as e:
                errors.append(str(e))
                results[plan.name] = self._status(plan, "failed to stop")
                continue
            action = "stopped" if pid is not None else "not running"
            status = self._status(plan, action)
            results[plan.name] = ServiceStatus(
                status.name, status.url, status.port, False, False, pid, action, status.config, status.log
            )
        if errors:
            raise ServiceError("; ".join(errors))
        return tuple(results[p.name] for p in plans)

    def status(self) -> tuple[ServiceStatus, ...]:
        return tuple(self._status(plan, None) for plan in self.plans())

    # -- internals --------------------------------------------------------------------------------

    def _recorded_ports(self, fallback: Ports) -> Ports:
        chosen: dict[str, int] = {}
        for name in SERVICES:
            record = self._record(services_dir(self.state_dir) / name)
            port = record.get("port")
            chosen[name] = port if isinstance(port, int) else fallback.of(name)
        if len(set(chosen.values())) < len(chosen):  # records from different starts collide
            return fallback
        return Ports(**chosen)

    @staticmethod
    def _record(runtime_dir: Path) -> dict[str, object]:
        try:
            data = json.loads((runtime_dir / RECORD_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _running_pid(self, plan: ServicePlan) -> int | None:
        """Our daemon's master: the pid in the pid file or the record if that process is alive and has
        our command line, else the oldest ancestor among the live processes with our command line
        (pid files are written a moment after the daemon forks, and can be lost)."""
        recorded = self._record(plan.runtime_dir).get("pid")
        for pid in (_read_pid(plan.pid_path), recorded if isinstance(recorded, int) else None):
            if pid is None:
                continue
            info = sockets.process_info(pid)
            if info is not None and info.alive and plan.marker in info.command + " ":
                return pid
        ours = [p for p in sockets.all_processes() if p.alive and plan.marker in p.command + " "]
        pids = {p.pid for p in ours}
        masters = sorted(p.pid for p in ours if p.ppid not in pids)
        return masters[0] if masters else None

    def _same_config(self, plan: ServicePlan) -> bool:
        try:
            return plan.config_path.read_text(encoding="utf-8") == plan.config_text
        except OSError:
            return False

    def _listening(self, plan: ServicePlan, pid: int) -> bool:
        return any(
            s.port == plan.port and s.address == LOOPBACK and s.protocol == "tcp"
            for s in sockets.listeners_of(sockets.process_tree(pid))
        )

    def _status(self, plan: ServicePlan, action: str | None) -> ServiceStatus:
        pid = self._running_pid(plan)
        listening = pid is not None and self._listening(plan, pid)
        if action is None:
            action = "running" if pid is not None else "stopped"
        return ServiceStatus(
            plan.name,
            plan.url,
            plan.port,
            pid is not None,
            listening,
            pid,
            action,
            plan.config_path,
            plan.log_path,
        )

    def _port_taken(self, plan: ServicePlan) -> ServiceError:
        return ServiceError(
            f"{plan.name}: port {plan.port} on {LOOPBACK} is already in use by "
            f"{sockets.describe_port_owner(plan.port)}; stop that process, or choose another port with "
            f"{PORT_OPTION[plan.name]} N or {PORT_ENV[plan.name]}=N"
        )

    def _run(self, plan: ServicePlan, argv: tuple[str, ...], what: str) -> None:
        try:
            proc.run(argv, timeout=COMMAND_TIMEOUT, cwd=plan.cwd)
        except proc.CommandFailed as e:
            if "Address already in use" in e.output_tail or "Address already in use" in _tail(plan.log_path):
                raise self._port_taken(plan) from e
            raise ServiceError(
                f"{plan.name}: {what} failed: {e}\n(log {plan.log_path}:)\n{_tail(plan.log_path)}"
            ) from e

    def _prepare_runtime(self, plan: ServicePlan) -> None:
        for directory in plan.make_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        atomic_write(plan.config_path, plan.config_text)
        if plan.owner is not None:
            uid, gid = plan.owner
            st = plan.runtime_dir.stat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                for root, dirs, files in os.walk(plan.runtime_dir):
                    for entry in (root, *(os.path.join(root, n) for n in dirs + files)):
                        os.chown(entry, uid, gid, follow_symlinks=False)
        with contextlib.suppress(FileNotFoundError):
            plan.pid_path.unlink()
        self._remove_shm(plan)

    def _remove_shm(self, plan: ServicePlan, *, expected: bool = False) -> None:
        if plan.shm_glob is None:
            return
        for segment in squid.SHM_DIR.glob(plan.shm_glob):
            if not expected:
                log.info("%s: removing %s, left by an earlier run", plan.name, segment)
            with contextlib.suppress(OSError):
                segment.unlink()

    def _start(self, plan: ServicePlan) -> None:
        if not sockets.tcp_port_free(LOOPBACK, plan.port):
            raise self._port_taken(plan)
        self._prepare_runtime(plan)
        self._run(plan, plan.check_argv, f"the configuration test ({plan.check_argv[0]})")
        if plan.init_argv is not None and plan.init_done is not None and not plan.init_done.exists():
            self._run(plan, plan.init_argv, "creating the cache directories")
            self._remove_shm(plan, expected=True)  # squid -z leaves its segments behind
        started_at = time.time()
        self._run(plan, plan.start_argv, "start")
        pid = self._wait_ready(plan)
        record = {
            "name": plan.name,
            "kind": plan.kind,
            "port": plan.port,
            "url": plan.url,
            "pid": pid,
            "argv": list(plan.start_argv),
            "config_sha256": hashlib.sha256(plan.config_text.encode()).hexdigest(),
            "started_at": dt.datetime.fromtimestamp(started_at, dt.UTC).isoformat(),
        }
        atomic_write(plan.runtime_dir / RECORD_NAME, json.dumps(record, indent=2) + "\n")
        log.info("%s is up: %s (pid %d)", plan.name, plan.url, pid)

    def _wait_ready(self, plan: ServicePlan) -> int:
        """Poll until the daemon listens on its port and answers HTTP.  Gone for EXIT_GRACE seconds
        (no process with its command line; the starting command has returned) means it exited."""
        deadline = time.monotonic() + self.ready_timeout
        gone_since: float | None = None
        while True:
            now = time.monotonic()
            pid = self._running_pid(plan)
            if pid is not None:
                gone_since = None
                if self._listening(plan, pid) and _http_answers(plan.port, plan.probe_path):
                    return pid
            else:
                gone_since = gone_since if gone_since is not None else now
                if now - gone_since >= EXIT_GRACE:
                    raise ServiceError(
                        f"{plan.name}: {plan.kind} exited during start-up; fix what its log "
                        f"{plan.log_path} says:\n{_tail(plan.log_path)}"
                    )
            if now >= deadline:
                if pid is not None:
                    with contextlib.suppress(ServiceError):
                        self._stop(plan)
                raise ServiceError(
                    f"{plan.name}: no HTTP answer on {LOOPBACK}:{plan.port} after {self.ready_timeout:g} s; "
                    f"see {plan.log_path}:\n{_tail(plan.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def _wait_gone(self, pids: list[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(sockets.is_alive(p) for p in pids):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def _stop(self, plan: ServicePlan) -> int | None:
        """Stop the daemon and wait for its whole process tree; the pid stopped, or None."""
        pid = self._running_pid(plan)
        if pid is None:
            self._forget(plan)
            return None
        tree = sockets.process_tree(pid)
        log.info("stopping %s (pid %d, %d processes)", plan.name, pid, len(tree))
        _signal(pid, plan.stop_signal)
        if not self._wait_gone(tree, self.stop_timeout):
            left = [p for p in tree if sockets.is_alive(p)]
            log.warning(
                "%s: %s still running after %g s; sending SIGKILL", plan.name, left, self.stop_timeout
            )
            for p in left:
                _signal(p, signal.SIGKILL)
            if not self._wait_gone(left, KILL_WAIT):
                raise ServiceError(
                    f"{plan.name}: processes {left} survived SIGKILL; look at them with `ps -o pid,stat,cmd "
                    f"-p {','.join(map(str, left))}` (a process stuck in the kernel cannot be killed)"
                )
        self._forget(plan)
        return pid

    def _forget(self, plan: ServicePlan) -> None:
        """Remove what a stopped daemon may leave: its pid file, squid's shared memory, the record's pid."""
        with contextlib.suppress(FileNotFoundError):
            plan.pid_path.unlink()
        self._remove_shm(plan)
        record = self._record(plan.runtime_dir)
        if record.get("pid") is not None:
            record["pid"] = None
            atomic_write(plan.runtime_dir / RECORD_NAME, json.dumps(record, indent=2) + "\n")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
