"""A read-only FUSE mount of a repository at ``/cvmfs/<repo>`` (libfuse through mfusepy).

The file system serves one verified revision at a time and looks for a newer
manifest every ``refresh`` seconds (default: the manifest's TTL); a newer
revision whose signatures verify replaces the old one.  The extended attribute
``user.revision`` on any path reports the revision being served, as the real
client's ``user.revision`` does.

``python -m eessi_pipeline.cvmfs.mount CONFIG.json MOUNTPOINT`` runs it in the
foreground; :func:`mount` starts that as a daemon and waits until it is mounted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import RepositoryError
from .client import ClientConfig, MirrorSource, open_client
from .reader import Entry, RepositoryReader
from .variant import expand

log = logging.getLogger(__name__)

try:  # mfusepy needs libfuse (Debian: fuse3); only the mount itself needs it
    import mfusepy as fuse
except (ImportError, OSError):  # pragma: no cover - reported by mount()
    fuse = None


class CvmfsFs(fuse.Operations if fuse is not None else object):  # type: ignore[misc]
    """FUSE operations over a :class:`RepositoryReader`, read-only."""

    use_ns = True

    def __init__(self, config: ClientConfig, refresh: float | None = None) -> None:
        self.config = config
        self.reader, self.source = open_client(config)
        self.refresh = refresh if refresh is not None else float(self.reader.manifest.ttl)
        self.checked = time.monotonic()
        self._mutex = threading.RLock()
        self.open_files: dict[int, bytes] = {}
        self.next_fh = 1

    # -- revision handling -------------------------------------------------------------

    def _current(self) -> RepositoryReader:
        with self._mutex:
            if time.monotonic() - self.checked >= self.refresh:
                self.checked = time.monotonic()
                try:
                    reader, source = open_client(self.config)
                except RepositoryError as e:
                    log.warning("keeping revision %d: %s", self.reader.manifest.revision, e)
                else:
                    if reader.manifest.revision > self.reader.manifest.revision:
                        log.info("now serving revision %d", reader.manifest.revision)
                        old = self.reader
                        self.reader, self.source = reader, source
                        old.close()
                    else:
                        reader.close()
            return self.reader

    def _entry(self, path: str) -> Entry:
        entry = self._current().lookup("" if path == "/" else path)
        if entry is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return entry

    # -- operations --------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        e = self._entry(path)
        ns = e.mtime * 1_000_000_000
        size = len(expand(e.symlink, os.environ).encode()) if e.is_symlink else e.size
        return {
            "st_mode": e.mode,
            "st_nlink": max(e.linkcount, 1),
            "st_size": size,
            "st_uid": e.uid,
            "st_gid": e.gid,
            "st_mtime": ns,
            "st_atime": ns,
            "st_ctime": ns,
            "st_blocks": (size + 511) // 512,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        reader = self._current()
        entry = self._entry(path)
        if not entry.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return [".", "..", *(c.name for c in reader.listdir("" if path == "/" else path))]

    def readlink(self, path: str) -> str:
        e = self._entry(path)
        if not e.is_symlink:
            raise fuse.FuseOSError(errno.EINVAL)
        return expand(e.symlink, os.environ)  # variant symlinks: $(VAR:-default) from this client

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise fuse.FuseOSError(errno.EROFS)
        e = self._entry(path)
        if e.is_dir:
            raise fuse.FuseOSError(errno.EISDIR)
        try:
            data = self._current().read_file(e.path)
        except RepositoryError as err:
            log.error("%s", err)
            raise fuse.FuseOSError(errno.EIO) from err
        with self._mutex:
            fh = self.next_fh
            self.next_fh += 1
            self.open_files[fh] = data
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = self.open_files.get(fh)
        if data is None:
            raise fuse.FuseOSError(errno.EBADF)
        return data[offset : offset + size]

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.open_files.pop(fh, None)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == "user.revision":
            return str(self._current().manifest.revision).encode()
        if name == "user.fqrn":
            return self.config.repository.encode()
        raise fuse.FuseOSError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        return ["user.revision", "user.fqrn"]

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_namemax": 255,
        }

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise fuse.FuseOSError(errno.EROFS)
        self._entry(path)
        return 0


def config_to_dict(config: ClientConfig) -> dict[str, Any]:
    d = asdict(config)
    d["cache_dir"] = str(config.cache_dir)
    d["master_public_key"] = str(config.master_public_key)
    d["stratum1_urls"] = list(config.stratum1_urls)
    return d


def config_from_dict(d: dict[str, Any]) -> ClientConfig:
    return ClientConfig(
        repository=d["repository"],
        stratum1_urls=tuple(d["stratum1_urls"]),
        cache_dir=Path(d["cache_dir"]),
        master_public_key=Path(d["master_public_key"]),
        proxy=d.get("proxy"),
        timeout=float(d.get("timeout", 10.0)),
    )


def fuse_support() -> bool:
    """Whether mfusepy and libfuse could be loaded (the daemon needs them)."""
    return fuse is not None


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve()) if mountpoint.exists() else str(mountpoint)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            return any(line.split()[1] == target for line in fh if len(line.split()) > 1)
    except OSError:
        return os.path.ismount(mountpoint)


def mount(config: ClientConfig, mountpoint: Path, state_dir: Path, refresh: float | None = None,
          timeout: float = 30.0) -> int:  # fmt: skip
    """Start the FUSE daemon for ``mountpoint`` and wait until it is mounted; return its pid."""
    if fuse is None:
        raise RepositoryError(
            "FUSE support is missing: install the Debian package fuse3 and `pip install mfusepy`"
        )
    if not Path("/dev/fuse").exists():
        raise RepositoryError("/dev/fuse does not exist: this machine cannot mount FUSE file systems")
    if is_mounted(mountpoint):
        raise RepositoryError(
            f"{mountpoint} is already mounted; run `eessi-pipeline client umount {mountpoint}`"
        )
    open_client(config)[0].close()  # fail here, with the reason, rather than in the daemon
    mountpoint.mkdir(parents=True, exist_ok=True)
    run_dir = state_dir / "client"
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = str(mountpoint).strip("/").replace("/", "_") or "root"
    cfg_file = run_dir / f"{tag}.json"
    cfg_file.write_text(json.dumps({**config_to_dict(config), "refresh": refresh}, indent=2))
    log_file = run_dir / f"{tag}.log"
    with open(log_file, "ab") as logfh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eessi_pipeline.cvmfs.mount", str(cfg_file), str(mountpoint)],
            stdin=subprocess.DEVNULL, stdout=logfh, stderr=logfh, start_new_session=True,
        )  # fmt: skip
    (run_dir / f"{tag}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(mountpoint):
            return proc.pid
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").splitlines()[-5:]
            raise RepositoryError(
                f"the FUSE daemon for {mountpoint} exited: {' | '.join(tail)} (log: {log_file})"
            )
        time.sleep(0.05)
    proc.kill()
    raise RepositoryError(f"{mountpoint} was not mounted within {timeout:.0f} s (log: {log_file})")


def umount(mountpoint: Path, state_dir: Path, timeout: float = 15.0) -> None:
    if not is_mounted(mountpoint):
        raise RepositoryError(f"{mountpoint} is not mounted")
    for argv in (["fusermount3", "-u", str(mountpoint)], ["umount", str(mountpoint)]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            break
    else:
        raise RepositoryError(
            f"cannot unmount {mountpoint}: is a process using it? (try `fuser -m {mountpoint}`)"
        )
    tag = str(mountpoint).strip("/").replace("/", "_") or "root"
    pid_file = state_dir / "client" / f"{tag}.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Is ``pid`` running (a zombie child of ours is reaped and counts as gone)?"""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = json.loads(Path(argv[0]).read_text())
    refresh = cfg.pop("refresh", None)
    ops = CvmfsFs(config_from_dict(cfg), refresh)
    log.info("mounting %s revision %d at %s", ops.config.repository, ops.reader.manifest.revision, argv[1])
    fuse.FUSE(ops, argv[1], foreground=True, ro=True, allow_other=True, nothreads=True, fsname="cvmfs2",
              subtype="cvmfs")  # fmt: skip
    return 0


def source_stats(source: MirrorSource) -> dict[str, int]:
    return {"cache_hits": source.hits, "downloads": source.downloads}


if __name__ == "__main__":  # pragma: no cover - the daemon entry point
    raise SystemExit(main(sys.argv[1:]))
