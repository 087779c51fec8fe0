"""Facts about sockets and processes on this machine, read from ``/proc`` (Linux).

Which process listens on a port (for a clear "port taken" error), which sockets a set of
processes has open (to prove that our services listen on loopback only), whether a process is
still alive (a zombie is not), and the processes below a daemon (to stop all of them).  The
parsers are pure functions of the ``/proc`` text, so tests feed them recorded lines.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError, ServiceError

log = logging.getLogger(__name__)

PROC = Path("/proc")
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
PROTOCOLS = ("tcp", "tcp6", "udp", "udp6")


def require_loopback_port(who: str, host: str, port: int, binder: str) -> None:
    """Refuse to listen on ``host:port`` unless the host is a loopback address and the port a TCP
    port; ``who`` starts the message, ``binder`` says what keeps to loopback ("the embedded servers
    bind")."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ServiceError(f"{who}: refusing to listen on {host}: {binder} to loopback only (use 127.0.0.1)")
    if not 1 <= port <= 65535:
        raise ServiceError(f"{who}: port {port} is not in 1-65535; choose another port")


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket waiting for traffic: a TCP socket in LISTEN, or a bound, unconnected UDP socket."""

    protocol: str  # tcp, tcp6, udp, udp6
    address: str  # 127.0.0.1, ::1, 0.0.0.0, ::
    port: int
    inode: int

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str  # R, S, D, Z, ...
    command: str  # the command line, or [comm] for kernel threads and zombies

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _decode_address(hex_addr: str) -> str:
    """``/proc/net`` addresses: the raw in-kernel bytes, printed as 32-bit words in host order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def parse_proc_net(text: str, protocol: str) -> list[Listener]:
    """The listening sockets in the text of ``/proc/net/<protocol>``."""
    wanted = TCP_LISTEN if protocol.startswith("tcp") else UDP_UNCONNECTED
    found: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != wanted:
            continue
        addr, _, port = fields[1].partition(":")
        found.append(Listener(protocol, _decode_address(addr), int(port, 16), int(fields[9])))
    return found


def listeners(protocols: Iterable[str] = PROTOCOLS) -> list[Listener]:
    """Every listening socket of this network namespace."""
    found: list[Listener] = []
    for protocol in protocols:
        with contextlib.suppress(OSError):
            found.extend(parse_proc_net((PROC / "net" / protocol).read_text(), protocol))
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets that process ``pid`` has open (empty if it is gone or hidden)."""
    inodes: set[int] = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def parse_stat(text: str) -> tuple[str, int, int]:
    """State, parent pid and process group from the text of ``/proc/<pid>/stat``."""
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def process_info(pid: int) -> ProcessInfo | None:
    """What ``/proc/<pid>`` says, or None when there is no such process."""
    base = PROC / str(pid)
    try:
        state, ppid, pgid = parse_stat((base / "stat").read_text())
    except (OSError, IndexError, ValueError):
        return None
    command = ""
    with contextlib.suppress(OSError):
        command = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if not command:
        with contextlib.suppress(OSError):
            command = "[" + (base / "comm").read_text().strip() + "]"
    return ProcessInfo(pid, ppid, pgid, state, command)


def is_alive(pid: int) -> bool:
    info = process_info(pid)
    return info is not None and info.alive


def all_processes() -> list[ProcessInfo]:
    found: list[ProcessInfo] = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(PROC):
            if entry.isdigit():
                info = process_info(int(entry))
                if info is not None:
                    found.append(info)
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process below it (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for p in all_processes():
        if p.alive:
            children.setdefault(p.ppid, []).append(p.pid)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in tree:
            continue
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def listeners_of(pids: Iterable[int]) -> list[Listener]:
    """The listening sockets that the processes ``pids`` hold."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    return [s for s in listeners() if s.inode in inodes]


def tcp_port_owners(port: int) -> list[ProcessInfo]:
    """The processes holding a TCP socket that listens on ``port`` (any address)."""
    inodes = {s.inode for s in listeners(("tcp", "tcp6")) if s.port == port}
    if not inodes:
        return []
    return [p for p in all_processes() if p.alive and socket_inodes(p.pid) & inodes]


def tcp_port_listening(host: str, port: int) -> bool:
    """Whether some TCP socket listens on ``port`` at ``host`` or at a wildcard address."""
    wildcard = {"0.0.0.0", "::"}
    return any(
        s.port == port and (s.address == host or s.address in wildcard) for s in listeners(("tcp", "tcp6"))
    )


def tcp_port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (SO_REUSEADDR, as nginx and squid set it,
    so connections in TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def describe_port_owner(port: int) -> str:
    """``pid 123 (python3 -m http.server)`` or a sentence saying the owner is not visible."""
    owners = tcp_port_owners(port)
    if owners:
        return ", ".join(str(p) for p in owners)
    return "a process this user cannot see (try `ss -ltnp` as root)"


def port_in_use(name: str, address: str, port: int, option: str, env_var: str) -> str:
    """The error text for a daemon whose port is taken: who holds it and how to choose another."""
    return (
        f"{name}: port {port} on {address} is already in use by {describe_port_owner(port)}; stop that "
        f"process, or choose another port with {option} N or {env_var}=N"
    )


def port_number(value: int | str, origin: str, error: type[PipelineError], what: str = "") -> int:
    """``value`` (from ``origin``, an option or environment variable) as a TCP port, else ``error``;
    ``what`` names the daemon the port is for in the message."""
    try:
        port = int(value)
    except ValueError:
        raise error(f"{origin}={value!r} is not a port number; give an integer in 1-65535") from None
    if not 1 <= port <= 65535:
        raise error(f"{origin}={port} is not in 1-65535; give another port{f' for {what}' if what else ''}")
    return port
