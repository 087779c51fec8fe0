"""The embedded Stratum 0: init, transactional ingest and publish, in the real CVMFS format.

State layout under the state directory::

    keys/<name>.{key,crt,masterkey,pub}     repository and master keys
    srv/cvmfs/<name>/                       the repository's web root (served as /cvmfs/<name>)
    srv/cvmfs/info/v1/{repositories,meta}.json
    spool/<name>/lock                       publisher lock (flock; released by the kernel on death)
    spool/<name>/tmp/                       scratch space for catalogs being written

A publish writes objects first (new names only), then catalogs (as objects),
history, meta-info and certificate objects, then the reflog, and the manifest
last by an atomic rename.  Until that rename the previous revision is what
every reader sees, so a crash at any moment leaves it intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import RepositoryError
from ..fileio import atomic_write
from ..locks import wait_lock
from .catalog import DIR_SIZE, Node
from .common import (
    fingerprint,
)
from .ingest import IngestOptions, overlay_stream
from .keys import create_keys, load_certificate_der, sign_raw_pkcs1
from .manifest import Manifest, assemble_signed, parse_manifest
from .objects import ObjectStore
from .paths import RepoPaths
from .tarcheck import DEFAULT_MAX_MEMBER_SIZE, CheckContext, parse_tarball_name
from .transaction import (
    DIRTAB_PATH,
    PublishResult,
    StepHook,
    Transaction,
    dirtab_match,
)
from .whitelist import Whitelist

__all__ = [
    "DEFAULT_DIRTAB",
    "DEFAULT_LOCK_TIMEOUT",
    "DIRTAB_PATH",
    "WHITELIST_DAYS",
    "PublishResult",
    "RepoPaths",
    "Repository",
    "StepHook",
    "Transaction",
    "check_name",
    "dirtab_match",
    "publisher_lock",
    "remove_repository",
]

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
MASTER_REPLICA_TEXT = "This file marks the repository as replicatable to stratum 1 servers\n"
WHITELIST_DAYS = 30
#: EESSI-style nesting: one catalog per installation and one for the module tree of each CPU
#: target (subdirs have two or three levels: x86_64/generic, x86_64/amd/zen3).
DEFAULT_DIRTAB = (
    "/versions/*/software/linux/*/*/software/*/*",
    "/versions/*/software/linux/*/*/*/software/*/*",
    "/versions/*/software/linux/*/*/modules/all",
    "/versions/*/software/linux/*/*/*/modules/all",
)
DEFAULT_LOCK_TIMEOUT = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or len(name) > 200:
        raise RepositoryError(
            f"invalid repository name {name!r}: use a fully qualified name of lower-case letters, digits, "
            "dashes and dots, e.g. software.eessi.local"
        )
    return name


@contextlib.contextmanager
def publisher_lock(paths: RepoPaths, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """One publisher at a time.  ``flock`` dies with its process, so a lock is never stale;
    the file records who holds it so a waiting publisher can say so."""
    paths.spool.mkdir(parents=True, exist_ok=True)
    with wait_lock(paths.lock, timeout, f"repository {paths.name} (another publisher)", RepositoryError):
        yield


class Repository:
    """An embedded Stratum 0 repository in ``state_dir``."""

    def __init__(self, state_dir: Path, name: str, workers: int | None = None) -> None:
        self.paths = RepoPaths(Path(state_dir), check_name(name))
        self.store = ObjectStore(self.paths.root, workers)

    # -- life cycle ---------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.paths.manifest.exists()

    def init(
        self, now: dt.datetime | None = None, dirtab: Sequence[str] | None = DEFAULT_DIRTAB
    ) -> PublishResult:
        """Create keys (never overwriting them) and revision 1: the root with ``/new_repository``
        and, unless ``dirtab`` is None, a ``/.cvmfsdirtab`` with those nesting patterns."""
        if self.exists:
            raise RepositoryError(
                f"repository {self.paths.name} already exists at {self.paths.root}; nothing changed"
            )
        now = now or _now()
        keys = self.paths.keys
        if not all(p.exists() for p in keys.all()):
            create_keys(keys, now)
        else:
            log.info("reusing the existing keys in %s", keys.directory)
        self.store.ensure_layout()
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        (self.paths.root / "stats").mkdir(exist_ok=True)
        atomic_write(self.paths.root / ".cvmfs_master_replica", MASTER_REPLICA_TEXT.encode())
        atomic_write(self.paths.root / ".cvmfs_status.json", b"{}\n")
        self.write_whitelist(WHITELIST_DAYS, now)
        with publisher_lock(self.paths):
            txn = Transaction(self, None, now)
            stamp = int(now.timestamp())
            txn.root_doc().entries[""] = Node("", stat.S_IFDIR | 0o755, stamp, DIR_SIZE, linkcount=2)
            welcome = f"New CernVM-FS repository for {self.paths.name}\n".encode()  # what mkfs writes
            node = Node(
                "new_repository", stat.S_IFREG | 0o644, stamp, len(welcome), hash=self.store.put(welcome)
            )
            txn.put("/new_repository", node)
            if dirtab is not None:
                text = "".join(f"{line}\n" for line in dirtab).encode()
                tab = Node(".cvmfsdirtab", stat.S_IFREG | 0o644, stamp, len(text), hash=self.store.put(text))
                txn.put(DIRTAB_PATH, tab)
            result = txn.commit()
        self.write_info_json()
        return result

    def manifest(self) -> Manifest:
        try:
            raw = self.paths.manifest.read_bytes()
        except FileNotFoundError as e:
            raise RepositoryError(
                f"no repository {self.paths.name} in {self.paths.state_dir}: run `eessi-pipeline repo init "
                f"{self.paths.name}` first"
            ) from e
        return parse_manifest(raw)[0]

    def write_whitelist(self, days: int = WHITELIST_DAYS, now: dt.datetime | None = None) -> Whitelist:
        """(Re)sign ``.cvmfswhitelist`` with the master key, valid for ``days``."""
        if days < 1:
            raise RepositoryError(f"whitelist validity must be at least 1 day, not {days}")
        now = now or _now()
        der = load_certificate_der(self.paths.keys.certificate)
        wl = Whitelist(now, now + dt.timedelta(days=days), self.paths.name, (fingerprint(der),))
        body = wl.body()
        signature = sign_raw_pkcs1(self.paths.keys.master_key, hashlib.sha1(body).hexdigest().encode())
        self.paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.paths.whitelist, assemble_signed(body, signature))
        return wl

    def write_info_json(self) -> None:
        """``info/v1/repositories.json`` and ``meta.json`` as a real Stratum 0 publishes them."""
        info = self.paths.web_root / "info" / "v1"
        info.mkdir(parents=True, exist_ok=True)
        repos = sorted(
            p.name
            for p in self.paths.web_root.iterdir()
            if (p / ".cvmfspublished").exists() and not (p / ".cvmfs_last_snapshot").exists()
        )
        os_release = _os_release()
        doc = {
            "schema": 1,
            "cvmfs_version": "2.12.0-eessi-pipeline",
            "os_id": os_release.get("ID", "linux"),
            "os_version_id": os_release.get("VERSION_ID", ""),
            "os_pretty_name": os_release.get("PRETTY_NAME", "Linux"),
            "repositories": [{"name": r, "url": f"/cvmfs/{r}"} for r in repos],
            "replicas": [],
        }
        atomic_write(info / "repositories.json", (json.dumps(doc, indent=2) + "\n").encode())
        if not (info / "meta.json").exists():
            meta = {
                "administrator": "eessi-pipeline",
                "email": "root@localhost",
                "organisation": "eessi-pipeline embedded Stratum 0",
                "custom": {"_comment": "edit this file to describe your service"},
            }
            atomic_write(info / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())

    # -- transactions ---------------------------------------------------------------------

    def transaction(self, now: dt.datetime | None = None, hook: StepHook | None = None) -> Transaction:
        self.repair_interrupted()
        return Transaction(self, self.manifest(), now or _now(), hook)

    def repair_interrupted(self) -> None:
        """Undo what an interrupted publish left in the web root (only the reflog can be ahead)."""
        backup = self.paths.reflog_backup
        if not backup.exists() or not self.exists:
            return
        manifest = self.manifest()
        current = self.paths.reflog.read_bytes() if self.paths.reflog.exists() else b""
        behind = manifest.reflog and hashlib.sha1(current).hexdigest() != manifest.reflog
        if behind and hashlib.sha1(backup.read_bytes()).hexdigest() == manifest.reflog:
            log.warning("restoring the reflog of revision %d after an interrupted publish", manifest.revision)
            atomic_write(self.paths.reflog, backup.read_bytes())
        backup.unlink(missing_ok=True)

    def ingest(
        self,
        tarball: Path | None,
        base_dir: str = "versions",
        deletes: Sequence[str] = (),
        make_catalog: bool = False,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        chunking: bool = True,
        apply_dirtab: bool = True,
        check: bool = False,
        expected_sha256: str | None = None,
        max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
        expected_version: str | None = None,
        hook: StepHook | None = None,
        now: dt.datetime | None = None,
    ) -> PublishResult:
        """``cvmfs_server ingest`` semantics: delete ``deletes``, then overlay the members at ``base_dir``.

        The tarball is read once (:mod:`.ingest`): every member is checked as it streams past —
        always for safety (:func:`.tarcheck.basic_member_problems`, symlinks by where they lead),
        with ``check`` by every EESSI rule of :func:`.tarcheck.check_tarball` too — and with
        ``expected_sha256`` (the gate record's) bytes with another SHA-256 are refused.  Any
        refusal or failure leaves the repository at its revision (objects this ingest created are
        removed again).  With ``apply_dirtab`` the repository's ``/.cvmfsdirtab`` then nests the
        directories this ingest added, as EESSI's empty transaction + publish after each ingest does.
        """
        base = "/" + base_dir.strip("/") if base_dir.strip("/") else ""
        if tarball is None and not deletes:
            raise RepositoryError("nothing to do: give a tarball, --delete PATH, or both")
        context = None
        if tarball is not None and check:
            context = CheckContext(
                parse_tarball_name(tarball.name), max_member_size, expected_version, self.paths.name
            )
        opts = IngestOptions(base, chunking, context, expected_sha256)
        with publisher_lock(self.paths, lock_timeout):
            txn = self.transaction(now, hook)
            self.store.record_new()
            try:
                for d in deletes:
                    txn.remove("/" + d.strip("/"), must_exist=True)
                streamed = overlay_stream(txn, tarball, opts) if tarball is not None else None
                if make_catalog and base and tarball is not None:
                    txn.make_nested(base)
                if apply_dirtab:
                    txn.apply_dirtab()
                result = txn.commit()
            except OSError as e:
                raise RepositoryError(
                    f"{tarball or self.paths.name}: ingest failed ({e}); the repository stays at its "
                    "revision: free space or fix permissions under the state directory and retry"
                ) from e
            finally:
                if txn.published:
                    self.store.stop_recording()
                else:
                    self.store.drop_recorded()
        if streamed is not None:
            result = dataclasses.replace(result, sha256=streamed.sha256)
        return result


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v.strip().strip('"')
    return out


def remove_repository(state_dir: Path, name: str) -> None:
    """Delete a repository's web root and spool (keys are kept)."""
    paths = RepoPaths(Path(state_dir), name)
    shutil.rmtree(paths.root, ignore_errors=True)
    shutil.rmtree(paths.spool, ignore_errors=True)
