"""A verifying CVMFS client: Stratum 1 mirrors with fail-over, an HTTP proxy, a local cache.

Objects under ``data/`` are content-addressed and immutable, so they are kept in a
local cache (``<cache>/<repo>/data/XX/…``) and checked against their name on every
read: a corrupt cached copy is dropped and fetched again, and a server that sends a
corrupt object is skipped for the next one.  The manifest and whitelist are always
fetched fresh; :func:`open_client` verifies them (whitelist signature with the master
key, expiry, certificate fingerprint, manifest signature) before anything is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RepositoryError
from ..trust import refuse_if_writable
from .http import HttpFetchError, HttpLimits, http_get
from .reader import RepositoryReader

log = logging.getLogger(__name__)

_OBJECT = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{38})(-rmd160|-shake128)?([CHXPMLT]?)$")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    repository: str
    stratum1_urls: tuple[str, ...]  # base URLs serving /cvmfs, e.g. http://127.0.0.1:18081/cvmfs
    cache_dir: Path
    master_public_key: Path
    proxy: str | None = None
    timeout: float = 10.0
    limits: HttpLimits | None = None  # None: from the environment, with ``timeout`` as read timeout

    def http_limits(self) -> HttpLimits:
        return self.limits or HttpLimits.with_read_timeout(self.timeout)

    def repo_urls(self) -> list[str]:
        return [f"{u.rstrip('/')}/{self.repository}" for u in self.stratum1_urls]


@dataclass
class MirrorSource:
    """A reader ``Source`` over several mirrors, through a proxy, with a local object cache."""

    urls: Sequence[str]
    cache_root: Path
    proxy: str | None = None
    timeout: float = 10.0
    limits: HttpLimits | None = None
    preferred: int = 0
    hits: int = 0
    downloads: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.urls:
            raise RepositoryError("no Stratum 1 URL given; pass --stratum1 URL (repeatable)")
        if self.limits is None:
            self.limits = HttpLimits.with_read_timeout(self.timeout)

    def _download(self, url: str, max_bytes: int | None, until: float) -> bytes:
        assert self.limits is not None
        return http_get(url, self.limits, max_bytes=max_bytes, proxy=self.proxy, until=until,
                        headers={"X-CVMFS2": "eessi-pipeline", "Pragma": ""})  # fmt: skip

    @staticmethod
    def _valid(relpath: str, data: bytes) -> bool:
        m = _OBJECT.match(relpath)
        return m is None or hashlib.sha1(data).hexdigest() == m.group(1) + m.group(2)

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        is_object = _OBJECT.match(relpath) is not None
        cached = self.cache_root / relpath
        if is_object and cached.exists():
            data = cached.read_bytes()
            if self._valid(relpath, data):
                with self._lock:
                    self.hits += 1
                return data
            log.warning("dropping corrupt cached object %s", relpath)
            cached.unlink(missing_ok=True)
        failures: list[str] = []
        order = list(range(self.preferred, len(self.urls))) + list(range(self.preferred))
        assert self.limits is not None
        until = time.monotonic() + self.limits.operation_deadline  # one fetch, every server included
        for i in order:
            url = f"{self.urls[i].rstrip('/')}/{relpath}"
            if time.monotonic() >= until:
                failures.append(f"{url}: not tried, the operation deadline of "
                                f"{self.limits.operation_deadline:g} s had passed")  # fmt: skip
                continue
            try:
                data = self._download(url, max_bytes, until)
            except HttpFetchError as e:  # status, deadline, size cap, truncation, redirects: next server
                failures.append(str(e))
                continue
            if not self._valid(relpath, data):
                failures.append(f"{url}: content does not match its hash (tampered or corrupt)")
                continue
            with self._lock:
                self.preferred = i
                self.downloads += 1
            if is_object:
                self._store(cached, data)
            return data
        via = f" via proxy {self.proxy}" if self.proxy else ""
        raise RepositoryError(f"{relpath}: no Stratum 1 could serve it{via}: " + "; ".join(failures))

    @staticmethod
    def _store(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)


def open_client(config: ClientConfig) -> tuple[RepositoryReader, MirrorSource]:
    """Open the repository through the mirrors and verify the manifest ensemble first."""
    refuse_if_writable(config.master_public_key, "the master public key", RepositoryError)
    try:
        master = config.master_public_key.read_bytes()
    except OSError as e:
        raise RepositoryError(
            f"{config.master_public_key}: cannot read the master public key ({e.strerror}); pass --master-key"
        ) from e
    source = MirrorSource(
        config.repo_urls(), config.cache_dir / config.repository, config.proxy, config.timeout,
        config.http_limits(),
    )  # fmt: skip
    reader = RepositoryReader(source, master)
    try:
        reader.check_signatures()
    except BaseException:
        reader.close()
        raise
    return reader, source
