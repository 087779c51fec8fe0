"""Files and directories that decide what is trusted, created with explicit modes.

Whatever the caller's umask, the state directory, the key directory, staging, ``allowed_signers``,
public keys and certificates are created without group or other write permission (private keys
0600 elsewhere), and every use refuses such a file, or a directory on its way, that any other
local user could write: with ``umask 000`` anyone could otherwise add a signer.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from .errors import PipelineError, TrustError

DIR_MODE = 0o755
PUBLIC_FILE_MODE = 0o644
PRIVATE_FILE_MODE = 0o600


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` and missing parents with exactly ``mode`` (not umask-dependent)."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)
    return path


def write_file(path: Path, data: bytes, mode: int = PUBLIC_FILE_MODE) -> None:
    """Write ``path`` atomically with exactly ``mode`` (a temporary file, fchmod, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str, mode: int = PUBLIC_FILE_MODE) -> None:
    """Append ``line`` to a log that decides or records trust; a new file gets exactly ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & stat.S_IWOTH:
            os.fchmod(fd, mode)  # created under a permissive umask: take the write bit back
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def copy_file(src: Path, dest: Path, mode: int = PUBLIC_FILE_MODE) -> None:
    """Copy ``src`` to ``dest`` (contents and times) and give the copy exactly ``mode``."""
    shutil.copy2(src, dest)
    os.chmod(dest, mode)


def writable_by_others(path: Path) -> bool:
    """Whether a user other than the owner (and root) may write ``path``: other-writable, not sticky."""
    st = Path(path).lstat()
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return False  # /tmp: others may create files, but not replace ours
    return bool(st.st_mode & stat.S_IWOTH)


def refuse_if_writable(path: Path, what: str, error: type[PipelineError] = TrustError) -> None:
    """Refuse ``path`` (and its own directory) when another local user could change it."""
    path = Path(path)
    for p in (path, path.parent):
        try:
            bad = writable_by_others(p)
        except FileNotFoundError:
            continue
        if bad:
            mode = stat.S_IMODE(p.lstat().st_mode)
            raise error(
                f"{p}: {what} is writable by other users (mode {mode:04o}), so anyone here could change "
                f"what is trusted; fix: chmod o-w {p} (and check who changed it)"
            )
