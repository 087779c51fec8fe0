"""Hold a set of fresh namespaces open for one embedded cluster node (or its head), in the background.

Run as ``python3 -I -S nshold.py --pid-file F --marker M [--net] [--uts HOSTNAME] [--mount]`` by
:mod:`eessi_pipeline.cluster.manager`.  It detaches (double fork, new session, stdio on /dev/null, so
the starting command returns at once), unshares the namespaces asked for (network; UTS with its own
host name; mount, made private so that nothing mounted here reaches the host and nothing the host
mounts later reaches here), brings the namespace's loopback up, writes its pid to ``F`` and then sleeps
until it gets SIGTERM.  Other processes join its namespaces with ``nsenter -t <pid>``; when it and every
process that joined are gone, the kernel removes the namespaces and the interfaces in them.

``--marker M`` is only there to be seen in the command line, so the manager recognises its holders.
Standard library only (it runs with ``-I -S``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_REC = 16384
MS_PRIVATE = 1 << 18
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
USAGE = "usage: nshold.py --pid-file F --marker M [--net] [--uts HOSTNAME] [--mount]"


def parse(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    it = iter(argv)
    for word in it:
        if word in ("--pid-file", "--marker", "--uts"):
            value = next(it, None)
            if value is None:
                raise SystemExit(f"nshold: {word} needs a value; {USAGE}")
            opts[word[2:]] = value
        elif word in ("--net", "--mount"):
            opts[word[2:]] = "1"
        else:
            raise SystemExit(f"nshold: unknown argument {word!r}; {USAGE}")
    if "pid-file" not in opts or "marker" not in opts:
        raise SystemExit(f"nshold: --pid-file and --marker are required; {USAGE}")
    return opts


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        import fcntl

        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def enter(opts: dict[str, str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = (CLONE_NEWNET if "net" in opts else 0) | (CLONE_NEWUTS if "uts" in opts else 0)
    flags |= CLONE_NEWNS if "mount" in opts else 0
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    if "mount" in opts and libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making / private: {os.strerror(err)}")
    if "uts" in opts:
        socket.sethostname(opts["uts"])
    if "net" in opts:
        _loopback_up()


def main(argv: list[str]) -> int:
    opts = parse(argv)
    # report errors of the namespace set-up to the caller before detaching: a pipe carries them
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        message = os.read(read_end, 4096).decode(errors="replace")
        if message != "ok":
            sys.stderr.write(f"nshold: {message or 'the holder died while starting'}\n")
            return 1
        return 0
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        enter(opts)
        tmp = opts["pid-file"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(tmp, opts["pid-file"])
    except OSError as e:
        os.write(write_end, str(e).encode())
        os._exit(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir("/")
    os.write(write_end, b"ok")
    os.close(write_end)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
