"""File plumbing every package shares: atomic writes that survive a crash, and file digests.

``atomic_write`` writes a temporary file beside the target with exactly the given mode (whatever the
umask), flushes it to disk, renames it over the target and flushes the directory, so a reader sees
the old bytes or the new bytes, never a mix, also after a power cut.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK = 1 << 20


def atomic_write(path: Path | str, data: bytes | str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step; ``mode`` is exact (not filtered by the umask)."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_dir(target.parent)


def sync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
