"""Stratum 1 replication over HTTP: what ``cvmfs_server snapshot`` (``cvmfs_swissknife pull``) does.

:func:`snapshot` copies a Stratum 0 (or another replica that serves ``.cvmfs_master_replica``)
into a local repository directory, in the order the real Stratum 1 replication uses:

1. refuse a source without ``.cvmfs_master_replica`` (404: not a replication source);
2. write ``.cvmfs_is_snapshotting``;
3. fetch and verify the manifest ensemble (whitelist signature with the master key, name,
   expiry, certificate fingerprint, manifest signature); refuse a rollback;
4. fetch the meta-info object M and the history object H (the tags);
5. pull catalogs from the root C and from every tagged root catalog: check each object's hash
   against its name, recurse into nested catalogs, follow ``previous_revision`` until a catalog
   the replica already has; queue every data object and chunk for ``workers`` parallel fetchers,
   skipping objects already present;
6. store the catalogs (each only after everything below it), then H, X and M, the raw
   ``.cvmfsreflog``, the raw ``.cvmfswhitelist`` and, last, the raw ``.cvmfspublished``,
   byte-identical to the source;
7. update ``.cvmfs_status.json`` ``last_snapshot`` and ``.cvmfs_last_snapshot`` (``date --utc``
   text), and remove ``.cvmfs_is_snapshotting``.

Every file is written to ``data/txn`` and renamed into place, so a failed or killed snapshot
leaves the replica serving its previous manifest, with at most some extra (valid) objects; the
next snapshot removes what it left in ``data/txn`` and skips the objects already there.

A whole snapshot has a deadline (``$EESSI_PIPELINE_SNAPSHOT_TIMEOUT``, 1800 s unless the caller
gives one): every request ends by then, and none starts after it, so a source that is merely slow
(each request within its own limits) cannot keep a snapshot running for ever.  A snapshot stopped
by its deadline fails like any other, before the manifest is replaced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import RepositoryError, UsageError
from .common import SUFFIX_CATALOG, SUFFIX_CERTIFICATE, SUFFIX_HISTORY, SUFFIX_METAINFO, object_path
from .http import HttpFetchError, HttpLimits
from .manifest import Manifest, parse_manifest
from .reader import (
    MANIFEST_NAME,
    REFLOG_NAME,
    WHITELIST_NAME,
    HttpSource,
    RepositoryReader,
    catalog_references,
)

log = logging.getLogger(__name__)

MASTER_REPLICA_NAME = ".cvmfs_master_replica"
SNAPSHOTTING_NAME = ".cvmfs_is_snapshotting"
LAST_SNAPSHOT_NAME = ".cvmfs_last_snapshot"
STATUS_NAME = ".cvmfs_status.json"
WHITELIST_PKCS7_NAME = ".cvmfswhitelist.pkcs7"
DEFAULT_WORKERS = 8
SNAPSHOT_TIMEOUT_ENV = "EESSI_PIPELINE_SNAPSHOT_TIMEOUT"
DEFAULT_SNAPSHOT_TIMEOUT_S = 1800.0
PROGRESS_INTERVAL_S = 5.0
_TMP_PREFIX = "replica."
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What one snapshot did."""

    name: str  # the repository's fully qualified name (manifest N)
    revision: int  # the revision the replica serves now
    previous_revision: int | None  # what it served before; None for an initial snapshot
    root_catalog: str  # manifest C
    catalogs_fetched: int  # catalog objects transferred (all revisions pulled)
    objects_fetched: int  # content-addressed objects transferred and stored: catalogs, data, chunks, H, X, M
    objects_skipped: int  # referenced objects the replica already had
    bytes_fetched: int  # every byte downloaded from the source, the signed files included
    last_snapshot: str  # the ``date --utc`` text written to the status files


def date_utc(when: dt.datetime) -> str:
    """``when`` as GNU ``date --utc`` prints it in the C locale: ``Sat Aug 26 22:02:03 UTC 2023``
    (the day of month padded with a space, ``Sat Aug  5 …``)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    w = when.astimezone(dt.UTC)
    return f"{_DAYS[w.weekday()]} {_MONTHS[w.month - 1]} {w.day:2d} {w:%H:%M:%S} UTC {w.year}"


# --------------------------------------------------------------------------- small helpers


def snapshot_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a whole snapshot may take: ``$EESSI_PIPELINE_SNAPSHOT_TIMEOUT``, else the default."""
    text = (os.environ if environ is None else environ).get(SNAPSHOT_TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_SNAPSHOT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(
            f"${SNAPSHOT_TIMEOUT_ENV}={text!r} is not a positive number of seconds; unset it or give one"
        )
    return value


class _CountingSource:
    """An :class:`HttpSource` that counts the bytes it downloads and keeps the raw bytes of the
    signed files and of the X/H/M objects, so the replica stores exactly what was verified.  No
    request starts after ``until`` (the snapshot's deadline, a ``time.monotonic()`` value), and
    the source ends every request by then."""

    def __init__(self, inner: HttpSource, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self.until = inner.until if inner.until is not None else math.inf
        self.bytes = 0
        self.kept: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        if time.monotonic() >= self.until:
            raise self._past_deadline(relpath)
        try:
            data = self.inner.fetch(relpath, max_bytes)
        except RepositoryError as e:
            if time.monotonic() >= self.until:  # cut short by the deadline, not by the source
                raise self._past_deadline(relpath) from e
            raise
        keep = not relpath.startswith("data/") or relpath.endswith(
            (SUFFIX_CERTIFICATE, SUFFIX_HISTORY, SUFFIX_METAINFO)
        )
        with self._lock:
            self.bytes += len(data)
            if keep:
                self.kept[relpath] = data
        return data

    def _past_deadline(self, relpath: str) -> RepositoryError:
        return RepositoryError(
            f"the snapshot ran past its deadline of {self.timeout:g} s (${SNAPSHOT_TIMEOUT_ENV}) before "
            f"{self.inner.url(relpath)} arrived; raise the deadline for a large first snapshot, or find "
            "out why the source is slow"
        )

    def __str__(self) -> str:
        return str(self.inner)


def _is_missing(error: RepositoryError) -> bool:
    """Whether the source answered 404 (as opposed to refusing or failing)."""
    cause = error.__cause__
    return isinstance(cause, HttpFetchError) and cause.status == 404


def _write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write via a temporary file in ``tmp_dir`` (same file system) and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One snapshot per replica at a time: an flock on the replica directory itself."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RepositoryError(
                f"{dest}: another snapshot into this replica is running; wait for it to finish "
                "(the lock is released when that process ends)"
            ) from e
        yield
    finally:
        os.close(fd)


def _local_manifest(dest: Path) -> Manifest | None:
    path = dest / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RepositoryError(f"{path}: cannot be read ({e.strerror or e})") from e
    try:
        return parse_manifest(raw)[0]
    except RepositoryError as e:
        raise RepositoryError(
            f"{path}: the replica's own manifest is unreadable ({e}); move the replica aside and "
            "take an initial snapshot"
        ) from e


def _check_progression(source: Manifest, local: Manifest | None, url: str, dest: Path) -> None:
    """Refuse another repository, a rollback, or a re-created repository at the same revision."""
    if local is None:
        return
    if source.name != local.name:
        raise RepositoryError(
            f"{url}: serves repository {source.name!r}, but the replica at {dest} is {local.name!r}; "
            "point the snapshot at the right source or destination"
        )
    if source.revision < local.revision:
        raise RepositoryError(
            f"{url}: serves revision {source.revision} of {source.name}, older than the replica's "
            f"revision {local.revision}; refusing to roll the replica back (if the Stratum 0 was really "
            "restored to an older state, publish a new revision there first)"
        )
    if source.revision == local.revision and source.root_catalog != local.root_catalog:
        raise RepositoryError(
            f"{url}: revision {source.revision} of {source.name} has root catalog {source.root_catalog}, "
            f"but the replica's revision {local.revision} has {local.root_catalog}; the Stratum 0 was "
            "re-created, so move the replica aside and take an initial snapshot"
        )


def _require_master_replica(source: _CountingSource) -> None:
    try:
        source.fetch(MASTER_REPLICA_NAME, 1 << 16)
    except RepositoryError as e:
        if _is_missing(e):
            raise RepositoryError(
                f"{source.inner.url(MASTER_REPLICA_NAME)}: not found, so {source.inner.base_url} is not a "
                "replication source; enable replication on the Stratum 0 (cvmfs_server alterfs -m on, or "
                f"create {MASTER_REPLICA_NAME} in its repository directory)"
            ) from e
        raise


def _update_status(dest: Path, stamp: str, tmp_dir: Path) -> None:
    """``last_snapshot`` in ``.cvmfs_status.json`` (other keys kept), and ``.cvmfs_last_snapshot``."""
    path = dest / STATUS_NAME
    status: dict[str, object] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); writing a new one", path, e)
        else:
            if isinstance(loaded, dict):
                status = loaded
            else:
                log.warning("%s: not a JSON object; writing a new one", path)
    status["last_snapshot"] = stamp
    _write_atomic(path, (json.dumps(status, indent=2) + "\n").encode(), tmp_dir)
    _write_atomic(dest / LAST_SNAPSHOT_NAME, (stamp + "\n").encode(), tmp_dir)


# --------------------------------------------------------------------------- the pull


class _Pull:
    """The state of one pull: catalogs staged in ``data/txn``, data objects on a thread pool."""

    def __init__(
        self, reader: RepositoryReader, dest: Path, pool: ThreadPoolExecutor, garbage_collectable: bool
    ) -> None:
        self.reader = reader
        self.dest = dest
        self.txn = dest / "data" / "txn"
        self.pool = pool
        self.garbage_collectable = garbage_collectable
        self.seen_catalogs: set[str] = set()
        self.staged: dict[str, Path] = {}  # catalog hash -> its compressed bytes in data/txn
        self.order: list[str] = []  # catalogs to store, each after its nested and previous ones
        self.queued: set[tuple[str, str]] = set()
        self.futures: list[Future[None]] = []
        self.skipped = 0
        self.stored = 0
        self._lock = threading.Lock()

    def has(self, hex_hash: str, suffix: str) -> bool:
        return (self.dest / object_path(hex_hash, suffix)).exists()

    # ----- data objects (worker threads)

    def queue(self, hex_hash: str, suffix: str) -> None:
        key = (hex_hash, suffix)
        if key in self.queued:
            return
        self.queued.add(key)
        if self.has(hex_hash, suffix):
            self.skipped += 1
            return
        self.futures.append(self.pool.submit(self._copy, hex_hash, suffix))

    def _copy(self, hex_hash: str, suffix: str) -> None:
        raw = self.reader.fetch_object(hex_hash, suffix, compressed=False)  # checks the hash
        _write_atomic(self.dest / object_path(hex_hash, suffix), raw, self.txn)
        with self._lock:
            self.stored += 1

    def drain(self, name: str) -> None:
        """Wait for the fetchers, logging progress; the first failure stops the rest."""
        pending: set[Future[None]] = set(self.futures)
        total = len(self.futures)
        while pending:
            done, pending = wait(pending, timeout=PROGRESS_INTERVAL_S, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
            log.info("snapshot of %s: %d/%d objects fetched", name, total - len(pending), total)

    # ----- catalogs (main thread)

    def pull_catalogs(self, roots: list[tuple[str, bool]]) -> None:
        """Pull every catalog reachable from ``roots`` (hash, optional): nested catalogs and previous
        revisions, depth first.  ``optional`` ones (tags, previous revisions and what lies below
        them) may be missing from a garbage-collected source."""
        stack: list[tuple[str, bool, bool]] = [(h, opt, False) for h, opt in reversed(roots)]
        next_report = time.monotonic() + PROGRESS_INTERVAL_S
        while stack:
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + PROGRESS_INTERVAL_S
                log.info(
                    "snapshot: %d catalogs pulled, %d objects queued, %d fetched so far",
                    len(self.staged), len(self.futures), self.stored,
                )  # fmt: skip
            hex_hash, optional, expanded = stack.pop()
            if expanded:  # everything below it is pulled: it may be stored now
                self.order.append(hex_hash)
                continue
            if hex_hash in self.seen_catalogs:
                continue
            self.seen_catalogs.add(hex_hash)
            if self.has(hex_hash, SUFFIX_CATALOG):
                self.skipped += 1  # stored only after all below it, so its subtree and past are here
                continue
            try:
                raw = self.reader.fetch_object(hex_hash, SUFFIX_CATALOG, compressed=False)
            except RepositoryError as e:
                if optional and self.garbage_collectable and _is_missing(e):
                    log.info(
                        "%s: gone from the garbage-collected source; skipped",
                        object_path(hex_hash, SUFFIX_CATALOG),
                    )
                    continue
                raise
            refs = catalog_references(raw, hex_hash)
            fd, tmp = tempfile.mkstemp(dir=self.txn, prefix=_TMP_PREFIX)
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            self.staged[hex_hash] = Path(tmp)
            for obj_hash, suffix in sorted(refs.objects):
                self.queue(obj_hash, suffix)
            stack.append((hex_hash, optional, True))
            below = [(h, optional) for _, h in refs.nested]
            if refs.previous_revision:
                below.append((refs.previous_revision, True))
            stack.extend((h, opt, False) for h, opt in reversed(below))

    def store_catalogs(self) -> None:
        for hex_hash in self.order:
            os.replace(self.staged.pop(hex_hash), self.dest / object_path(hex_hash, SUFFIX_CATALOG))
            self.stored += 1

    def store_kept(self, raw: bytes, hex_hash: str, suffix: str) -> None:
        """Store an object fetched (and checked) outside the pool: H, X, M."""
        if self.has(hex_hash, suffix):
            self.skipped += 1
            return
        _write_atomic(self.dest / object_path(hex_hash, suffix), raw, self.txn)
        self.stored += 1

    def discard_staged(self) -> None:
        for path in self.staged.values():
            path.unlink(missing_ok=True)
        self.staged.clear()


def _prepare(dest: Path) -> Path:
    """The ``data/00`` … ``data/ff`` and ``data/txn`` layout; leftovers of a failed snapshot removed."""
    data = dest / "data"
    for i in range(256):
        (data / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    txn = data / "txn"
    txn.mkdir(exist_ok=True)
    for stale in txn.glob(f"{_TMP_PREFIX}*"):
        stale.unlink(missing_ok=True)
    return txn


def _replicate(
    source: _CountingSource,
    dest: Path,
    master_public_key_pem: bytes,
    workers: int,
    now: dt.datetime | None,
    local: Manifest | None,
) -> tuple[Manifest, int, int, int]:
    """Steps 3 to 8: returns the source manifest, catalogs fetched, objects fetched and skipped."""
    txn = dest / "data" / "txn"
    url = str(source)
    with RepositoryReader(source, master_public_key_pem, now) as reader:
        reader.check_signatures()
        m = reader.manifest
        _check_progression(m, local, url, dest)
        log.info(
            "snapshot of %s from %s: revision %d (replica has %s)",
            m.name, url, m.revision, "nothing yet" if local is None else f"revision {local.revision}",
        )  # fmt: skip
        manifest_raw = source.kept[MANIFEST_NAME]
        whitelist_raw = source.kept[WHITELIST_NAME]
        metainfo = reader.fetch_object(m.metainfo, SUFFIX_METAINFO, compressed=False) if m.metainfo else None
        tags = reader.tags()  # fetches and checks H
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvmfs-snapshot") as pool:
            pull = _Pull(reader, dest, pool, m.garbage_collectable)
            try:
                roots = [(m.root_catalog, False)] + [(t.hash, True) for t in tags]
                pull.pull_catalogs(roots)
                pull.drain(m.name)
                pull.store_catalogs()
            except BaseException:
                for future in pull.futures:
                    future.cancel()
                pull.discard_staged()
                raise
        if m.history:
            pull.store_kept(source.kept[object_path(m.history, SUFFIX_HISTORY)], m.history, SUFFIX_HISTORY)
        pull.store_kept(
            source.kept[object_path(m.certificate, SUFFIX_CERTIFICATE)], m.certificate, SUFFIX_CERTIFICATE
        )
        if m.metainfo and metainfo is not None:
            pull.store_kept(metainfo, m.metainfo, SUFFIX_METAINFO)
        reflog = _fetch_optional(source, REFLOG_NAME, required=bool(m.reflog))
        if reflog is not None:
            if m.reflog and hashlib.sha1(reflog).hexdigest() != m.reflog:
                log.warning(
                    "%s: %s is not the one manifest Y names (the source is publishing); copied as served",
                    url, REFLOG_NAME,
                )  # fmt: skip
            _write_atomic(dest / REFLOG_NAME, reflog, txn)
        if b"\nVpkcs7\n" in whitelist_raw:
            pkcs7 = _fetch_optional(source, WHITELIST_PKCS7_NAME, required=True)
            if pkcs7 is not None:
                _write_atomic(dest / WHITELIST_PKCS7_NAME, pkcs7, txn)
        _write_atomic(dest / WHITELIST_NAME, whitelist_raw, txn)
        _write_atomic(dest / MANIFEST_NAME, manifest_raw, txn)  # last: now clients see the new revision
        return m, len(pull.order), pull.stored, pull.skipped


def _fetch_optional(source: _CountingSource, relpath: str, *, required: bool) -> bytes | None:
    try:
        return source.fetch(relpath)
    except RepositoryError as e:
        if required or not _is_missing(e):
            raise
        return None


# --------------------------------------------------------------------------- entry point


def snapshot(
    source_url: str,
    dest_root: Path,
    master_public_key_pem: bytes,
    *,
    workers: int = DEFAULT_WORKERS,
    proxy: str | None = None,
    now: dt.datetime | None = None,
    limits: HttpLimits | None = None,
    timeout: float | None = None,
) -> SnapshotResult:
    """Replicate the repository at ``source_url`` (``http://host/cvmfs/<name>``) into ``dest_root``
    (the replica's repository directory, ``/srv/cvmfs/<name>``), as ``cvmfs_server snapshot`` does.

    ``master_public_key_pem`` verifies the whitelist; ``workers`` parallel fetchers copy the data
    objects; ``proxy`` routes every request through that forward proxy; ``now`` (UTC) is the time
    used for the whitelist's expiry and written to the status files; ``timeout`` (seconds; None:
    :func:`snapshot_timeout`) is the deadline of the whole snapshot.  RepositoryError names what
    failed; the replica then still serves its previous revision.
    """
    if not source_url.startswith(("http://", "https://")):
        raise RepositoryError(
            f"{source_url!r}: not an HTTP URL; give the Stratum 0's repository URL, "
            "e.g. http://stratum0.example.org/cvmfs/software.eessi.io"
        )
    if workers < 1:
        raise RepositoryError(f"workers must be at least 1, not {workers}")
    if timeout is None:
        timeout = snapshot_timeout()
    elif not (math.isfinite(timeout) and timeout > 0):
        raise RepositoryError(f"the snapshot's timeout must be a positive number of seconds, not {timeout}")
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    dest = Path(dest_root)
    until = time.monotonic() + timeout
    source = _CountingSource(HttpSource(source_url, proxy=proxy, limits=limits, until=until), timeout)
    _require_master_replica(source)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RepositoryError(f"{dest}: cannot create the replica directory ({e.strerror or e})") from e
    with _exclusive(dest):
        local = _local_manifest(dest)
        still = "nothing" if local is None else f"revision {local.revision}"
        marker = dest / SNAPSHOTTING_NAME
        try:
            txn = _prepare(dest)
            _write_atomic(marker, (date_utc(now or dt.datetime.now(dt.UTC)) + "\n").encode(), txn)
            m, catalogs, stored, skipped = _replicate(
                source, dest, master_public_key_pem, workers, now, local
            )
            stamp = date_utc(now or dt.datetime.now(dt.UTC))
            _update_status(dest, stamp, txn)
        except RepositoryError as e:
            raise RepositoryError(
                f"snapshot of {source_url} into {dest} failed: {e} (the replica still serves {still}; "
                "run the snapshot again once the cause is fixed)"
            ) from e
        except OSError as e:
            raise RepositoryError(
                f"snapshot of {source_url} into {dest} failed: cannot write the replica "
                f"({e.filename or dest}: {e.strerror or e}); free space or fix permissions and run the "
                f"snapshot again (the replica still serves {still})"
            ) from e
        finally:
            marker.unlink(missing_ok=True)
    result = SnapshotResult(
        name=m.name,
        revision=m.revision,
        previous_revision=None if local is None else local.revision,
        root_catalog=m.root_catalog,
        catalogs_fetched=catalogs,
        objects_fetched=stored,
        objects_skipped=skipped,
        bytes_fetched=source.bytes,
        last_snapshot=stamp,
    )
    log.info(
        "snapshot of %s: revision %d, %d objects fetched (%d bytes downloaded), %d already present",
        m.name, m.revision, stored, source.bytes, skipped,
    )  # fmt: skip
    return result


__all__ = ["SnapshotResult", "date_utc", "snapshot"]
