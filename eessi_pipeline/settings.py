"""Settings shared by every command: command line > ``EESSI_PIPELINE_*`` environment > default."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError

DEFAULT_REPOSITORY = "software.eessi.local"
REPOSITORY_ENV = "EESSI_PIPELINE_REPOSITORY"
VERSION_ENV = "EESSI_PIPELINE_VERSION"
STATE_DIR_ENV = "EESSI_PIPELINE_STATE_DIR"


@dataclass(frozen=True, slots=True)
class Settings:
    repository: str
    version: str | None  # None: the matrix's default_version
    state_dir: Path

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/root")) / ".local" / "state")
    return Path(base) / "eessi-pipeline"


def resolve_settings(
    *,
    repository: str | None = None,
    version: str | None = None,
    state_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        repository=repository or env.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY,
        version=version or env.get(VERSION_ENV) or None,
        state_dir=Path(state_dir or env.get(STATE_DIR_ENV) or default_state_dir(env)),
    )


class StateDirError(PipelineError):
    """The state directory cannot be used: a file, read-only, someone else's, or writable by others."""


def check_state_dir(path: Path) -> None:
    """Refuse a state directory this process cannot safely use, before any command writes into it.

    It holds signing keys, staged tarballs and their records: it must be a directory (or creatable
    as one), writable by us, ours, and not writable by every user.
    """
    fix = f"pass --state-dir DIR (or set ${STATE_DIR_ENV}) to a directory of your own"
    if not path.exists() and not path.is_symlink():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise StateDirError(f"state dir {path} cannot be created: {parent} is not a directory; {fix}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StateDirError(f"state dir {path} cannot be created: {parent} is read-only; {fix}")
        return
    try:
        st = path.stat()
    except OSError as e:
        raise StateDirError(f"state dir {path}: cannot be used ({e.strerror}); {fix}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {path} is a file, not a directory; {fix}")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"state dir {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): that user could "
            f"change its keys and staged records; {fix}"
        )
    if st.st_mode & stat.S_IWOTH:
        raise StateDirError(
            f"state dir {path} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}): anyone could "
            f"add keys or records; run `chmod o-w {path}`, or {fix}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"state dir {path} is read-only; {fix}")
