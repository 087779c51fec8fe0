"""Bounded HTTP GET for everything that reads a repository from a server.

A server is not trusted with the reader's time or memory: every request has a per-read timeout,
a total deadline (covering redirects, headers and body), and a size cap (the object's known size
where the catalog gives it, the configured maximum otherwise). A body longer than the cap is
refused as soon as it passes the cap, a body shorter than its ``Content-Length`` is refused as
truncated, and redirects are limited and loops refused. Every refusal names the URL and the limit.

Limits, command line > environment > default (:meth:`HttpLimits.from_env`):

=========================  ==========================================  =========
limit                      environment variable                        default
=========================  ==========================================  =========
per-read timeout           ``EESSI_PIPELINE_HTTP_READ_TIMEOUT``        10 s
deadline per request       ``EESSI_PIPELINE_HTTP_DEADLINE``            120 s
deadline per operation     ``EESSI_PIPELINE_HTTP_OPERATION_DEADLINE``  300 s
largest object             ``EESSI_PIPELINE_HTTP_MAX_BYTES``           1 GiB
=========================  ==========================================  =========

An operation is one file or object fetched through every server in turn (fail-over).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

from ..errors import RepositoryError, UsageError

READ_TIMEOUT_ENV = "EESSI_PIPELINE_HTTP_READ_TIMEOUT"
DEADLINE_ENV = "EESSI_PIPELINE_HTTP_DEADLINE"
OPERATION_DEADLINE_ENV = "EESSI_PIPELINE_HTTP_OPERATION_DEADLINE"
MAX_BYTES_ENV = "EESSI_PIPELINE_HTTP_MAX_BYTES"
MAX_REDIRECTS = 5
_BLOCK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    read_timeout: float = 10.0  # seconds without a byte
    request_deadline: float = 120.0  # seconds for one request, redirects included
    operation_deadline: float = 300.0  # seconds for one fetch through every server
    max_bytes: int = 1 << 30  # the largest body accepted when the size is not known

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: float | int | None) -> HttpLimits:
        """Limits from ``given`` (command-line values; None: not given), else the environment, else
        the defaults."""
        env = os.environ if environ is None else environ
        limits = cls()
        for field, var, kind in (("read_timeout", READ_TIMEOUT_ENV, float),
                                 ("request_deadline", DEADLINE_ENV, float),
                                 ("operation_deadline", OPERATION_DEADLINE_ENV, float),
                                 ("max_bytes", MAX_BYTES_ENV, int)):  # fmt: skip
            value = given.get(field)
            source = "the command line"
            if value is None and env.get(var):
                source = f"${var}"
                try:
                    value = kind(env[var])
                except ValueError:
                    raise UsageError(f"{source}={env[var]!r} is not a number; unset it or give one") from None
            if value is None:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UsageError(
                    f"{field.replace('_', ' ')} {value!r} (from {source}) must be a positive number"
                )
            limits = replace(limits, **{field: kind(value)})  # type: ignore[arg-type]
        return limits

    @classmethod
    def with_read_timeout(cls, timeout: float) -> HttpLimits:
        """From the environment; a ``timeout`` other than the default 10 s (a caller's explicit
        choice) is the read timeout."""
        return cls.from_env(read_timeout=None if timeout == cls().read_timeout else timeout)


_OPTIONS = (("read_timeout", "--http-read-timeout", READ_TIMEOUT_ENV, float, "S", "seconds without a byte"),
            ("request_deadline", "--http-deadline", DEADLINE_ENV, float, "S", "seconds for one request"),
            ("operation_deadline", "--http-operation-deadline", OPERATION_DEADLINE_ENV, float, "S",
             "seconds for one file through every server"),
            ("max_bytes", "--http-max-bytes", MAX_BYTES_ENV, int, "N",
             "largest body accepted when the catalog gives no size"))  # fmt: skip


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The command-line flags of the HTTP limits (issue 16)."""
    group = parser.add_argument_group("HTTP limits")
    for field, flag, var, kind, metavar, what in _OPTIONS:
        default = getattr(HttpLimits(), field)
        group.add_argument(flag, type=kind, metavar=metavar, default=None,
                           help=f"{what} (default: ${var} or {default})")  # fmt: skip


def apply_limit_options(
    args: argparse.Namespace, environ: MutableMapping[str, str] | None = None
) -> HttpLimits:
    """Check the flags and export them as their environment variables, so every reader in this
    process and its children (the FUSE mount) keeps to them."""
    env = os.environ if environ is None else environ
    given = {field: getattr(args, flag[2:].replace("-", "_"), None) for field, flag, *_ in _OPTIONS}
    limits = HttpLimits.from_env(env, **given)
    for field, _flag, var, *_ in _OPTIONS:
        if given[field] is not None:
            env[var] = str(getattr(limits, field))
    return limits


class HttpFetchError(RepositoryError):
    """One URL could not be fetched within its limits; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread


def _connection(url: str, proxy: str | None, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpFetchError(f"{url}: not an http(s) URL")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if not p.hostname:
            raise HttpFetchError(f"{proxy}: not a proxy URL (http://host:port)")
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(p.hostname, p.port or 80,
                                                                            timeout=timeout)  # fmt: skip
            conn.set_tunnel(parts.hostname, parts.port or 443)
            return conn, target
        return http.client.HTTPConnection(p.hostname, p.port or 80, timeout=timeout), url
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout), target


def _one(
    url: str, proxy: str | None, headers: Mapping[str, str], limits: HttpLimits, cap: int, end: float
) -> tuple[str | None, bytes]:
    """One request: (redirect location, b"") or (None, body)."""
    remaining = end - time.monotonic()
    if remaining <= 0:
        raise HttpFetchError(f"{url}: no time left of the {limits.request_deadline:g} s deadline")
    conn, target = _connection(url, proxy, min(limits.read_timeout, remaining))
    watchdog = threading.Timer(remaining, _abort, (conn,))
    watchdog.daemon = True
    watchdog.start()
    chunks: list[bytes] = []  # what has arrived so far (the deadline message counts it)
    try:
        conn.request("GET", target, headers=dict(headers))
        response = conn.getresponse()
        location = _redirect(url, response)
        if location is not None:
            return location, b""
        return None, _read_body(url, conn, response, limits, cap, end, chunks)
    except HttpFetchError:
        raise
    except http.client.IncompleteRead as e:
        raise HttpFetchError(f"{url}: truncated: {len(e.partial)} bytes, then the connection closed") from e
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        raise _transport_error(url, e, limits, end, sum(len(c) for c in chunks)) from e
    finally:
        watchdog.cancel()
        conn.close()


def _redirect(url: str, response: http.client.HTTPResponse) -> str | None:
    """Where a redirect leads (None for a 200); HttpFetchError for any other status."""
    if response.status in _REDIRECTS:
        location = response.getheader("Location")
        if not location:
            raise HttpFetchError(f"{url}: HTTP {response.status} without a Location", response.status)
        return urljoin(url, location)
    if response.status != 200:
        raise HttpFetchError(f"{url}: HTTP {response.status} {response.reason}", response.status)
    return None


def _read_body(
    url: str,
    conn: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
    limits: HttpLimits,
    cap: int,
    end: float,
    chunks: list[bytes],
) -> bytes:
    """The body of a 200 response, read into ``chunks`` within ``cap`` bytes and before ``end``."""
    announced = response.getheader("Content-Length")
    length = int(announced) if announced and announced.strip().isdigit() else None
    if length is not None and length > cap:
        raise HttpFetchError(f"{url}: announces {length} bytes, more than the limit of {cap} bytes")
    total = 0
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(min(limits.read_timeout, left))
        block = response.read1(_BLOCK)
        if not block:
            break
        total += len(block)
        if total > cap:
            raise HttpFetchError(f"{url}: sent more than the limit of {cap} bytes; stopped reading there")
        chunks.append(block)
    if time.monotonic() >= end:
        raise TimeoutError
    if length is not None and total != length:
        raise HttpFetchError(f"{url}: truncated: {total} of the {length} bytes it announced")
    return b"".join(chunks)


def _transport_error(
    url: str, e: BaseException, limits: HttpLimits, end: float, total: int
) -> HttpFetchError:
    """What a timeout or connection failure after ``total`` bytes means: the deadline, a silent read..."""
    if time.monotonic() >= end - 0.01:
        return HttpFetchError(
            f"{url}: deadline of {limits.request_deadline:g} s passed after {total} bytes (${DEADLINE_ENV})"
        )
    if isinstance(e, TimeoutError):
        return HttpFetchError(f"{url}: no data for {limits.read_timeout:g} s (${READ_TIMEOUT_ENV})")
    return HttpFetchError(f"{url}: cannot be fetched ({e or type(e).__name__})")


def http_get(
    url: str,
    limits: HttpLimits,
    *,
    max_bytes: int | None = None,
    proxy: str | None = None,
    headers: Mapping[str, str] | None = None,
    until: float | None = None,
) -> bytes:
    """GET ``url`` within ``limits`` (and before the monotonic time ``until``); HttpFetchError names
    the URL and the limit that stopped it."""
    end = time.monotonic() + limits.request_deadline
    if until is not None:
        end = min(end, until)
    cap = limits.max_bytes if max_bytes is None else max_bytes
    seen: list[str] = []
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        if current in seen:
            raise HttpFetchError(f"{url}: redirect loop ({' -> '.join([*seen, current])})")
        seen.append(current)
        location, body = _one(current, proxy, headers or {}, limits, cap, end)
        if location is None:
            return body
        current = location
    raise HttpFetchError(f"{url}: more than {MAX_REDIRECTS} redirects (last to {current})")
