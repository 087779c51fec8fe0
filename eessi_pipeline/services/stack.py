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
What each service is (ports, configuration, argv) comes from :mod:`.plans`; pid files, markers and
stopping a process tree from :mod:`eessi_pipeline.daemons`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import daemons, locks, proc
from ..errors import ServiceError
from ..fileio import atomic_write
from . import sockets, squid, stratum1
from .plans import (
    LOOPBACK,
    PORT_ENV,
    PORT_OPTION,
    SERVICES,
    Ports,
    RunAs,
    ServicePlan,
    find_binary,
    plan_services,
    resolve_ports,
    run_as_for,
    services_dir,
)

__all__ = ["COMMAND_TIMEOUT", "READY_TIMEOUT", "STOP_TIMEOUT", "ServiceStatus", "Stack"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
KILL_WAIT = 5.0
EXIT_GRACE = 1.0
"""Seconds without any process of a starting daemon before the start counts as failed."""
POLL_INTERVAL = 0.05
RECORD_NAME = "service.json"
LOCK_NAME = "lock"
LOCK_TIMEOUT = 120.0


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
        with locks.wait_lock(
            directory / LOCK_NAME, LOCK_TIMEOUT, "`eessi-pipeline stratum up/down`", ServiceError, poll=0.1
        ):
            yield

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
        return daemons.find(
            (daemons.read_pid(plan.pid_path), recorded if isinstance(recorded, int) else None), plan.marker
        )

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
            sockets.port_in_use(plan.name, LOOPBACK, plan.port, PORT_OPTION[plan.name], PORT_ENV[plan.name])
        )

    def _run(self, plan: ServicePlan, argv: tuple[str, ...], what: str) -> None:
        try:
            proc.run(argv, timeout=COMMAND_TIMEOUT, cwd=plan.cwd)
        except proc.CommandFailed as e:
            if "Address already in use" in e.output_tail or "Address already in use" in daemons.tail(
                plan.log_path
            ):
                raise self._port_taken(plan) from e
            raise ServiceError(
                f"{plan.name}: {what} failed: {e}\n(log {plan.log_path}:)\n{daemons.tail(plan.log_path)}"
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
                        f"{plan.log_path} says:\n{daemons.tail(plan.log_path)}"
                    )
            if now >= deadline:
                if pid is not None:
                    with contextlib.suppress(ServiceError):
                        self._stop(plan)
                raise ServiceError(
                    f"{plan.name}: no HTTP answer on {LOOPBACK}:{plan.port} after {self.ready_timeout:g} s; "
                    f"see {plan.log_path}:\n{daemons.tail(plan.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def _stop(self, plan: ServicePlan) -> int | None:
        """Stop the daemon and wait for its whole process tree; the pid stopped, or None."""
        pid = self._running_pid(plan)
        if pid is None:
            self._forget(plan)
            return None
        log.info("stopping %s (pid %d, %d processes)", plan.name, pid, len(sockets.process_tree(pid)))
        left = daemons.stop_trees(
            [pid], plan.stop_signal, self.stop_timeout, plan.name, kill_wait=KILL_WAIT, poll=POLL_INTERVAL
        )
        if left:
            raise ServiceError(
                f"{plan.name}: processes {left} survived SIGKILL; {daemons.survivors_hint(left)} (a process "
                "stuck in the kernel cannot be killed)"
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
