"""Where an embedded repository keeps its files (state dir layout; see ``repository``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .keys import KeyPaths


@dataclass(frozen=True, slots=True)
class RepoPaths:
    state_dir: Path
    name: str

    @property
    def web_root(self) -> Path:
        return self.state_dir / "srv" / "cvmfs"

    @property
    def root(self) -> Path:
        return self.web_root / self.name

    @property
    def keys(self) -> KeyPaths:
        return KeyPaths(self.state_dir / "keys", self.name)

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool" / self.name

    @property
    def lock(self) -> Path:
        return self.spool / "lock"

    @property
    def tmp(self) -> Path:
        return self.spool / "tmp"

    @property
    def manifest(self) -> Path:
        return self.root / ".cvmfspublished"

    @property
    def whitelist(self) -> Path:
        return self.root / ".cvmfswhitelist"

    @property
    def reflog(self) -> Path:
        return self.root / ".cvmfsreflog"

    @property
    def reflog_backup(self) -> Path:
        return self.spool / "reflog.previous"
