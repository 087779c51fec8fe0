"""Where a repository's files come from: a directory on disk or an HTTP server.

Moved here from :mod:`.reader`, which still exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import RepositoryError
from .http import HttpFetchError, HttpLimits, http_get

__all__ = ["HTTP_TIMEOUT_S", "DirSource", "HttpSource", "Source", "open_source"]

HTTP_TIMEOUT_S = 10.0


class Source(Protocol):
    """Where a repository's files come from; ``relpath`` is relative to the repository root."""

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; RepositoryError naming the path or URL when it is missing.

        ``max_bytes``: refuse more than this (the object's size when known; else a configured cap).
        """
        ...


@dataclass(frozen=True, slots=True)
class DirSource:
    """A repository directory on disk (``/srv/cvmfs/<name>``)."""

    root: Path

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        path = self.root / relpath
        try:
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise RepositoryError(f"{path}: larger than the {max_bytes} bytes expected of it")
            return path.read_bytes()
        except FileNotFoundError as e:
            raise RepositoryError(f"{path}: missing from the repository at {self.root}") from e
        except OSError as e:
            raise RepositoryError(f"{path}: cannot be read ({e.strerror or e})") from e

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True, slots=True)
class HttpSource:
    """A repository served over HTTP; ``base_url`` like ``http://127.0.0.1:8080/cvmfs/<name>``.

    ``proxy`` (``http://squid:3128``) sends every request through that forward proxy. Every request
    is bounded by ``limits`` (:mod:`eessi_pipeline.cvmfs.http`: read timeout, deadline, size cap);
    ``timeout`` is the per-read timeout; ``until`` (a ``time.monotonic()`` value) ends every request by then.
    """

    base_url: str
    timeout: float = HTTP_TIMEOUT_S
    proxy: str | None = None
    limits: HttpLimits | None = None  # None: from the environment
    until: float | None = None  # None: each request has only its own deadline

    def url(self, relpath: str) -> str:
        return f"{self.base_url.rstrip('/')}/{relpath}"

    def fetch(self, relpath: str, max_bytes: int | None = None) -> bytes:
        url = self.url(relpath)
        limits = self.limits or HttpLimits.with_read_timeout(self.timeout)
        via = f" via proxy {self.proxy}" if self.proxy else ""
        try:
            return http_get(url, limits, max_bytes=max_bytes, proxy=self.proxy, until=self.until,
                            headers={"User-Agent": "eessi-pipeline-cvmfs-reader"})  # fmt: skip
        except HttpFetchError as e:
            if e.status == 404:
                raise RepositoryError(f"{url}: missing from the repository (HTTP 404{via})") from e
            raise RepositoryError(f"{e}{via}") from e

    def __str__(self) -> str:
        return self.base_url


def open_source(path_or_url: str | Path) -> Source:
    """An :class:`HttpSource` for ``http://``/``https://`` URLs, else a :class:`DirSource`."""
    text = str(path_or_url)
    if text.startswith(("http://", "https://")):
        return HttpSource(text)
    return DirSource(Path(path_or_url))
