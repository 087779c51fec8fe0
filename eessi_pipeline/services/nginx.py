"""nginx as a CVMFS Stratum 0 or Stratum 1 web server: configuration and argument vectors.

Pure functions: nothing here runs a program or touches the disk (``stack`` does).  One
:class:`NginxServer` is one nginx instance with one ``server`` block, so Stratum 0 and Stratum 1
start, stop and fail independently.  The URL ``/cvmfs/<repo>/<path>`` maps to
``<web_root>/cvmfs/<repo>/<path>``.

HTTP headers (those of the Apache configuration ``cvmfs_server`` writes):

- ``.cvmfs*`` files (manifest, whitelist, reflog, status) and ``*.json``: ``Cache-Control:
  max-age=61`` plus ``Expires``; 61 because squid does not cache anything that expires within 60 s;
- ``data/`` (content-addressed objects, immutable): ``max-age=259200`` (3 days), as is every
  other file (Apache's ``ExpiresDefault``);
- no ``ETag`` (``etag off``), no ``Last-Modified`` and no ``If-Modified-Since`` handling.  nginx's
  ``add_header Last-Modified ""`` does remove the header: the headers filter treats
  ``Last-Modified`` specially and an empty value clears it and the time behind it (the
  headers-more module is not needed, and Debian's plain ``nginx`` package lacks it).  The
  not-modified filter runs before that filter, so ``if_modified_since off`` is needed as well, or a
  request with ``If-Modified-Since`` would still get a 304.  ``add_header`` is inherited only by
  locations without one of their own, so every location repeats it.  Tests prove all of this with
  real requests.

The Stratum 1 also answers the geo API, ``/cvmfs/<repo>/api/v1.0/geo/<proxy>/<host1>,<host2>,…``,
with the 1-based order of the hosts, nearest first (``cvmfs_geo.py`` on a real Stratum 1).
On loopback there is no geography: every server of this stack runs on this machine, at the same
distance (zero) from the caller, and the real API's stable sort keeps equal distances in request
order.  So the answer is the request order, ``1,2,…,N``; with a ``+PXYSEP+`` separator the hosts
come first, then the proxies after it, then the separator's own index, as ``cvmfs_geo.py`` does.
nginx cannot count, so :func:`geo_patterns` lists one regular expression per list length (up
to :data:`GEO_MAX_NAMES` names); anything else is a 400 with ``max-age=300``.
cvmfs-server-scraper 0.0.4 expects ``2,1,3`` for its three far-away hosts (an order that "works for
bits of northern Europe"); from here it gets ``1,2,3`` and sets ``geoapi_status`` to
``LOCATION_ERROR``, which is not a fetch error.  Told where it stands (``geoapi_order = [1, 2, 3]``)
it reports ``OK``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServiceError
from .sockets import require_loopback_port

META_MAX_AGE = 61
"""Seconds: ``.cvmfs*`` files and JSON (squid caches nothing that expires within 60 s)."""
DATA_MAX_AGE = 259200
"""Seconds (3 days): content-addressed objects and everything else."""
GEO_MAX_AGE = 3600
GEO_ERROR_MAX_AGE = 300
GEO_MAX_NAMES = 16
"""Longest list (hosts, separator and proxies together) the geo API answers; CVMFS clients send
far fewer (a handful of Stratum 1s and proxies)."""
PROXY_SEPARATOR = "+PXYSEP+"
_NAME = r"[0-9A-Za-z.:-]+"  # cvmfs_geo.py's addr_pattern (non-empty)
_GEO_PREFIX = r"^/cvmfs/[^/]+/api/v[0-9.]+/geo/[^/]+/"
_UNSAFE = set("\"$\\;{}'") | {chr(c) for c in range(32)} | {chr(127)}


@dataclass(frozen=True, slots=True)
class NginxServer:
    """One nginx instance serving one web root on one loopback port."""

    name: str  # stratum0 or stratum1: server_name and what logs call it
    port: int
    web_root: Path  # holds cvmfs/: /cvmfs/<repo>/x is <web_root>/cvmfs/<repo>/x
    runtime_dir: Path  # configuration, pid, logs and temporary files
    geo_api: bool = False
    host: str = "127.0.0.1"
    user: str | None = None  # worker user when the master starts as root; None: no `user` line
    group: str | None = None
    worker_processes: int = 1

    def __post_init__(self) -> None:
        require_loopback_port(self.name, self.host, self.port, "the embedded servers bind")
        for path in (self.web_root, self.runtime_dir):
            if not path.is_absolute() or _UNSAFE & set(str(path)):
                raise ServiceError(
                    f"{self.name}: {str(path)!r} must be an absolute path without quotes, '$', ';', braces "
                    "or control characters (nginx configuration syntax); use another state directory"
                )

    @property
    def config_path(self) -> Path:
        return self.runtime_dir / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.runtime_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.runtime_dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.runtime_dir / "access.log"

    @property
    def temp_dir(self) -> Path:
        return self.runtime_dir / "tmp"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/cvmfs"


def _q(path: Path | str) -> str:
    return f'"{path}"'


def start_argv(server: NginxServer, binary: str = "nginx") -> tuple[str, ...]:
    """Start the daemon: ``-e`` sends start-up errors to our log, not /var/log/nginx."""
    return (
        binary,
        "-c",
        str(server.config_path),
        "-p",
        str(server.runtime_dir),
        "-e",
        str(server.error_log),
    )


def check_argv(server: NginxServer, binary: str = "nginx") -> tuple[str, ...]:
    """Test the configuration (``nginx -t``) without starting anything."""
    return (*start_argv(server, binary), "-q", "-t")


def geo_order(names: Sequence[str]) -> tuple[int, ...]:
    """The answer of a real geo API when every name is at the same distance (see module doc)."""
    if PROXY_SEPARATOR not in names:
        return tuple(range(1, len(names) + 1))
    sep = list(names).index(PROXY_SEPARATOR)
    hosts = range(1, sep + 1)
    proxies = range(sep + 2, len(names) + 1)
    return (*hosts, *proxies, sep + 1)


def geo_patterns(max_names: int = GEO_MAX_NAMES) -> tuple[tuple[str, str], ...]:
    """(regular expression on the URI, answer) for every list the geo API answers."""
    table: list[tuple[str, str]] = []

    def names(n: int) -> str:
        return _NAME + (f"(?:,{_NAME}){{{n - 1}}}" if n > 1 else "")

    for n in range(1, max_names + 1):
        table.append((f"{_GEO_PREFIX}{names(n)}$", ",".join(map(str, geo_order(["h"] * n)))))
    sep = r"\+PXYSEP\+"
    for hosts in range(1, max_names - 1):
        for proxies in range(1, max_names - hosts):
            answer = geo_order(["h"] * hosts + [PROXY_SEPARATOR] + ["p"] * proxies)
            table.append((f"{_GEO_PREFIX}{names(hosts)},{sep},{names(proxies)}$", ",".join(map(str, answer))))
    return tuple(table)


def _cvmfs_location(geo_api: bool) -> list[str]:
    no_validators = 'add_header Last-Modified "";'
    lines = [
        "        location /cvmfs/ {",
        f"            expires {DATA_MAX_AGE}s;  # Apache's ExpiresDefault: 3 days",
        f"            {no_validators}",
    ]
    if geo_api:
        lines += [
            "            # geo API: request order (every server is on this machine); see services/nginx.py",
            f'            location ~ "{_GEO_PREFIX}" {{',
            "                default_type text/plain;",
            "                expires off;  # the Cache-Control below is the only one",
            "                add_header Cache-Control $eessi_geo_cache_control always;",
            '                if ($eessi_geo_order = "") {',
            '                    return 400 "bad geo API request: expected /cvmfs/<repo>/api/v1.0/geo/'
            f'<proxy>/<host>[,<host>...] with at most {GEO_MAX_NAMES} names\\n";',
            "                }",
            '                return 200 "$eessi_geo_order\\n";',
            "            }",
        ]
    lines += [
        "            # manifest, whitelist, reflog, status: short-lived",
        r"            location ~ /\.cvmfs[^/]*$ {",
        "                types { }",
        "                default_type application/x-cvmfs;",
        f"                expires {META_MAX_AGE}s;",
        f"                {no_validators}",
        "            }",
        r"            location ~ \.json$ {",
        "                types { }",
        "                default_type application/json;",
        f"                expires {META_MAX_AGE}s;",
        f"                {no_validators}",
        "            }",
        "            # content-addressed objects: immutable",
        "            location ~ ^/cvmfs/[^/]+/data/ {",
        "                types { }",
        "                default_type application/octet-stream;",
        f"                expires {DATA_MAX_AGE}s;",
        f"                {no_validators}",
        "            }",
        "        }",
    ]
    return lines


def render_config(server: NginxServer) -> str:
    """The complete ``nginx.conf`` of ``server``: every path inside its runtime and web directories."""
    tmp = server.temp_dir
    lines = [
        f"# {server.name}: generated by eessi-pipeline; `eessi-pipeline stratum up` rewrites it",
        "daemon on;",
        "master_process on;",
        f"worker_processes {server.worker_processes};",
        f"pid {_q(server.pid_path)};",
        f"error_log {_q(server.error_log)} notice;",
    ]
    if server.user is not None:
        group = f" {server.group}" if server.group else ""
        lines.append(f"user {server.user}{group};  # workers read the state with the rights of its owner")
    lines += [
        "events {",
        "    worker_connections 1024;",
        "}",
        "http {",
        "    types {",
        "        application/json json;",
        "        text/plain txt;",
        "    }",
        "    default_type application/octet-stream;",
        "    log_format eessi '$remote_addr [$time_iso8601] \"$request\" $status $body_bytes_sent '",
        "                     '$request_time \"$http_user_agent\"';",
        f"    access_log {_q(server.access_log)} eessi;",
        f"    client_body_temp_path {_q(tmp / 'client_body')};",
        f"    proxy_temp_path {_q(tmp / 'proxy')};",
        f"    fastcgi_temp_path {_q(tmp / 'fastcgi')};",
        f"    uwsgi_temp_path {_q(tmp / 'uwsgi')};",
        f"    scgi_temp_path {_q(tmp / 'scgi')};",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_timeout 65;",
        "    server_tokens off;",
        "    charset off;",
        "    gzip off;",
        "    autoindex off;",
        "    etag off;  # no ETag (squid bugs, see the spec)",
        "    if_modified_since off;  # no 304s: CVMFS clients and squid revalidate by expiry only",
    ]
    if server.geo_api:
        lines.append("    map $uri $eessi_geo_order {")
        lines.append('        default "";')
        for regex, answer in geo_patterns():
            lines.append(f'        "~{regex}" "{answer}";')
        lines += [
            "    }",
            "    map $eessi_geo_order $eessi_geo_cache_control {",
            f'        "" "max-age={GEO_ERROR_MAX_AGE}";',
            f'        default "max-age={GEO_MAX_AGE}";',
            "    }",
        ]
    lines += [
        "    server {",
        f"        listen {server.host}:{server.port};",
        f"        server_name {server.name};",
        f"        root {_q(server.web_root)};",
        *_cvmfs_location(server.geo_api),
        "        location / {",
        "            return 404;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"
