"""Settings shared by every command: command line > ``EESSI_PIPELINE_*`` environment > default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
