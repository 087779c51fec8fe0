"""Helpers for the CVMFS tests: tarball builders and the reference fixture's location."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import DATA_DIR


def reference_dir() -> Path:
    return DATA_DIR / "cvmfs-reference"


def make_tarball(path: Path, members: dict[str, bytes | str | None], mtime: int = 1700000000) -> Path:
    """Write a .tar.gz: bytes -> file, str -> symlink target, None -> directory."""
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content
                info.mode = 0o777
                tf.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o755 if "/bin/" in f"/{name}" else 0o644  # programs under bin/ run
                tf.addfile(info, io.BytesIO(content))
    return path


def software_tarball(
    tmp: Path, version: str, subdir: str, files: dict[str, bytes], stamp: int = 1700000000
) -> Path:
    """An EESSI-style software tarball with ``files`` under ``<version>/software/linux/<subdir>/``."""
    name = f"eessi-{version}-software-linux-{subdir.replace('/', '-')}-{stamp}.tar.gz"
    prefix = f"{version}/software/linux/{subdir}"
    members: dict[str, bytes | str | None] = {}
    parts = prefix.split("/")
    for i in range(1, len(parts) + 1):
        members["/".join(parts[:i])] = None
    for rel, data in files.items():
        segs = rel.split("/")
        for i in range(1, len(segs)):
            members.setdefault(f"{prefix}/{'/'.join(segs[:i])}", None)
        members[f"{prefix}/{rel}"] = data
    return make_tarball(tmp / name, members, stamp)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); yields ``http://127.0.0.1:PORT``."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FAKE_CVMFS_SERVER = """#!/bin/sh
# Stand-in for cvmfs_server (none can exist on a test machine): record argv and stdin size.
size=$(wc -c | tr -d ' ')
printf '%s|%s\\n' "$*" "$size" >> "$FAKE_CVMFS_LOG"
for bad in $FAKE_CVMFS_FAIL; do
    if [ "$1" = "$bad" ]; then echo "fake cvmfs_server: $* failed" >&2; exit 1; fi
done
exit 0
"""


def install_fake_cvmfs_server(tmp: Path, monkeypatch: Any, fail: tuple[str, ...] = ()) -> Path:
    """Put the stand-in ``cvmfs_server`` first on PATH, failing the subcommands in ``fail``; return its log."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "cvmfs_server"
    script.write_text(FAKE_CVMFS_SERVER)
    script.chmod(0o755)
    log = tmp / "calls.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_CVMFS_LOG", str(log))
    monkeypatch.setenv("FAKE_CVMFS_FAIL", " ".join(fail))
    return log
