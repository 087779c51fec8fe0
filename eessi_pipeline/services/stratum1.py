"""The Stratum 1's web root: where replicas live, and the ``info/v1`` JSON that lists them.

Layout under the state directory (served by the ``stratum1`` nginx as ``/cvmfs/...``)::

    stratum1/srv/cvmfs/<repo>/                 a replica (``stratum snapshot`` fills it)
    stratum1/srv/cvmfs/<repo>/.cvmfs_status.json, .cvmfs_last_snapshot   written by each snapshot
    stratum1/srv/cvmfs/info/v1/repositories.json   {"replicas": [...], "repositories": []}
    stratum1/srv/cvmfs/info/v1/meta.json           free-form administrator information

A Stratum 1's ``repositories.json`` lists its repositories under ``replicas`` and leaves
``repositories`` empty (cvmfs_server_json.sh); cvmfs-server-scraper decides Stratum 0 or 1 from
which list is non-empty, and rejects a file where both are.  With no replica yet both are empty,
which the scraper also rejects: there is nothing to monitor until the first snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write

log = logging.getLogger(__name__)

CVMFS_VERSION = "2.12.0-eessi-pipeline"
"""What ``cvmfs_version`` says; the Stratum 0 of eessi_pipeline.cvmfs.repository writes the same."""
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")


@dataclass(frozen=True, slots=True)
class Stratum1Paths:
    state_dir: Path

    @property
    def srv(self) -> Path:
        """The nginx web root: ``/cvmfs/x`` is ``srv/cvmfs/x``."""
        return self.state_dir / "stratum1" / "srv"

    @property
    def web_root(self) -> Path:
        return self.srv / "cvmfs"

    @property
    def info_dir(self) -> Path:
        return self.web_root / "info" / "v1"

    @property
    def repositories_json(self) -> Path:
        return self.info_dir / "repositories.json"

    @property
    def meta_json(self) -> Path:
        return self.info_dir / "meta.json"

    def replica(self, name: str) -> Path:
        return self.web_root / name


def replica_names(paths: Stratum1Paths) -> list[str]:
    """Repositories replicated here: directories with a manifest (the snapshot writes it last)."""
    try:
        entries = list(paths.web_root.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p.name for p in entries if _NAME_RE.match(p.name) and (p / ".cvmfspublished").is_file())


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value.strip().strip('"')
    return out


def repositories_document(replicas: list[str], os_release: dict[str, str]) -> dict[str, object]:
    """``repositories.json`` of a Stratum 1 holding ``replicas`` (cvmfs_server_json.sh's fields)."""
    return {
        "schema": 1,
        "cvmfs_version": CVMFS_VERSION,
        "os_id": os_release.get("ID", "linux"),
        "os_version_id": os_release.get("VERSION_ID", ""),
        "os_pretty_name": os_release.get("PRETTY_NAME", "Linux"),
        "repositories": [],
        "replicas": [{"name": r, "url": f"/cvmfs/{r}"} for r in replicas],
    }


def write_info(state_dir: Path) -> list[str]:
    """Create the Stratum 1 web root and (re)write ``info/v1/repositories.json`` from the replicas
    present; write ``meta.json`` unless an administrator already did.  Returns the replica names."""
    paths = Stratum1Paths(Path(state_dir))
    paths.info_dir.mkdir(parents=True, exist_ok=True)
    names = replica_names(paths)
    doc = repositories_document(names, _os_release())
    atomic_write(paths.repositories_json, (json.dumps(doc, indent=2) + "\n").encode())
    if not paths.meta_json.exists():
        meta = {
            "administrator": "eessi-pipeline",
            "email": "root@localhost",
            "organisation": "eessi-pipeline embedded Stratum 1",
            "custom": {"_comment": "edit this file to describe your service"},
        }
        atomic_write(paths.meta_json, (json.dumps(meta, indent=2) + "\n").encode())
    log.info("%s lists %d replica(s): %s", paths.repositories_json, len(names), ", ".join(names) or "none")
    return names
