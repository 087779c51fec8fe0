"""The filesystem layer's services: nginx Stratum 0/1 and the squid proxy (eessi_pipeline.services).

First the generators, checked without running anything; then real nginx and squid on free
loopback ports, each stack in its own state directory under pytest's temporary directory (a
0700 directory, so the privilege drop of squid and nginx is exercised too), always stopped in
teardown.  Read-only HTTP checks share one module-scoped stack, which saves a squid start and
stop (about 4 s) per check; everything that starts, stops or caches gets a stack of its own.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cvmfs_helpers import software_tarball

from eessi_pipeline.cli.stratum import add_stratum_parser
from eessi_pipeline.cvmfs.common import SUFFIX_CATALOG, object_path
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import PipelineError, ServiceError
from eessi_pipeline.services import nginx, sockets, squid, stratum1
from eessi_pipeline.services.plans import (
    DEFAULT_PORTS,
    PORT_ENV,
    Ports,
    RunAs,
    find_binary,
    plan_services,
    resolve_ports,
)
from eessi_pipeline.services.stack import ServiceStatus, Stack

NAME = "software.eessi.local"
LOOPBACK = "127.0.0.1"
PORT_RANGE = range(20000, 30000)  # below the ephemeral range, so no client socket takes one of ours
SCRAPER_GEO_HOSTS = "cvmfs-s1fnal.opensciencegrid.org,cvmfs-stratum-one.cern.ch,cvmfs-stratum-one.ihep.ac.cn"


# --- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pick_ports() -> Callable[[int], list[int]]:
    """Factory: n free loopback ports, never the same twice in this process."""
    handed_out: set[int] = set()
    rng = random.Random()

    def pick(n: int) -> list[int]:
        found: list[int] = []
        for _ in range(10000):
            port = rng.choice(PORT_RANGE)
            if port not in handed_out and sockets.tcp_port_free(LOOPBACK, port):
                handed_out.add(port)
                found.append(port)
                if len(found) == n:
                    return found
        raise RuntimeError("no free ports in 20000-29999")

    return pick


def require_servers() -> None:
    missing = [b for b in ("nginx", "squid") if find_binary(b) == b]
    if missing:
        message = f"{' and '.join(missing)} not installed (Debian: apt-get install nginx squid)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def fetch(url: str, *, proxy_port: int | None = None, headers: dict[str, str] | None = None) -> Reply:
    """GET ``url`` directly or through the proxy on ``proxy_port`` (never an environment proxy)."""
    parts = urlsplit(url)
    host, port = parts.hostname or LOOPBACK, parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if proxy_port is not None:
        host, port, target = LOOPBACK, proxy_port, url
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def stop_all(stacks: list[Stack]) -> None:
    errors = []
    for stack in stacks:
        try:
            stack.down()
        except ServiceError as e:  # pragma: no cover - reported, the other stacks still stop
            errors.append(str(e))
    assert not errors, errors


def new_stack(state: Path, ports: list[int], *, repo: bool = True) -> Stack:
    if repo:
        Repository(state, NAME).init()
    return Stack(state, Ports(*ports), ready_timeout=30, stop_timeout=30)


@pytest.fixture
def make_stack(tmp_path: Path, pick_ports: Callable[[int], list[int]]) -> Iterator[Callable[..., Stack]]:
    """Factory: a Stack (not started) on fresh ports with an initialised repository; stopped at teardown."""
    require_servers()
    stacks: list[Stack] = []

    def make(*, repo: bool = True) -> Stack:
        stack = new_stack(tmp_path / f"state{len(stacks)}", pick_ports(3), repo=repo)
        stacks.append(stack)
        return stack

    yield make
    stop_all(stacks)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, pick_ports: Callable[[int], list[int]]
) -> Iterator[tuple[Stack, tuple[ServiceStatus, ...]]]:
    """One running stack for the read-only checks of this module."""
    require_servers()
    stack = new_stack(tmp_path_factory.mktemp("served") / "state", pick_ports(3))
    try:
        statuses = stack.up()
        yield stack, statuses
    finally:
        stop_all([stack])


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``eessi-pipeline stratum …`` through add_stratum_parser, with the CLI's error boundary."""
    parser = argparse.ArgumentParser(prog="eessi-pipeline")
    parser.add_argument("--state-dir")
    add_stratum_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stratum", *argv])
    out = io.StringIO()
    try:
        return args.handler(args, out), out.getvalue()
    except PipelineError as e:
        return e.exit_code, str(e)


def root_catalog_path(stack: Stack) -> str:
    manifest = Repository(stack.state_dir, NAME).manifest()
    return object_path(manifest.root_catalog, SUFFIX_CATALOG)


def access_log(path: Path, url: str, count: int) -> list[squid.AccessLogEntry]:
    """The access-log entries for ``url``, waiting (5 s at most) until there are ``count``."""
    deadline = time.monotonic() + 5
    while True:
        entries = squid.parse_access_log(path.read_text().splitlines())
        mine = [e for e in entries if e.url == url]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


# --- generators, nothing runs ------------------------------------------------------------------------------


def _nginx_server(tmp_path: Path, name: str = "stratum1", **kw: object) -> nginx.NginxServer:
    state = tmp_path / "state"
    return nginx.NginxServer(
        name=name,
        port=18081,
        web_root=state / "stratum1" / "srv",
        runtime_dir=state / "services" / name,
        geo_api=name == "stratum1",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("name", ["stratum0", "stratum1"])
def test_nginx_config_listens_on_loopback_port_only(tmp_path: Path, name: str) -> None:
    conf = nginx.render_config(_nginx_server(tmp_path, name))
    assert re.findall(r"^\s*listen\s+(\S+);", conf, re.M) == ["127.0.0.1:18081"]


def test_nginx_config_paths_stay_inside_state_dir(tmp_path: Path) -> None:
    conf = nginx.render_config(_nginx_server(tmp_path))
    paths = re.findall(r'"(/[^"]*)"', conf)
    assert len(paths) >= 9  # pid, error and access logs, five temp paths, root
    assert all(Path(p).is_relative_to(tmp_path / "state") for p in paths), paths
    for directive in ("pid", "error_log", "access_log", "root", "client_body_temp_path", "proxy_temp_path"):
        assert re.search(rf'^\s*{directive} "{re.escape(str(tmp_path / "state"))}/', conf, re.M), directive


def _location_blocks(conf: str) -> dict[str, str]:
    """Innermost ``location`` blocks: pattern -> body."""
    return {m[0].strip(): m[1] for m in re.findall(r"location ([^{]+)\{((?:[^{}]|\{[^{}]*\})*)\}", conf)}


def test_nginx_config_sets_cvmfs_cache_headers_and_no_validators(tmp_path: Path) -> None:
    conf = nginx.render_config(_nginx_server(tmp_path, "stratum0"))
    assert re.search(r"^\s*etag off;", conf, re.M)
    assert re.search(r"^\s*if_modified_since off;", conf, re.M)
    blocks = _location_blocks(conf)
    expected = {r"~ /\.cvmfs[^/]*$": "61s", r"~ \.json$": "61s", "~ ^/cvmfs/[^/]+/data/": "259200s"}
    for pattern, max_age in expected.items():
        body = blocks[pattern]
        assert f"expires {max_age};" in body, pattern
        assert 'add_header Last-Modified "";' in body, pattern  # add_header is not inherited past one
    assert "geo" not in conf  # only the Stratum 1 answers the geo API


def test_nginx_config_geo_api_only_on_stratum1(tmp_path: Path) -> None:
    conf = nginx.render_config(_nginx_server(tmp_path, "stratum1"))
    geo = next(body for pattern, body in _location_blocks(conf).items() if "/geo/" in pattern)
    assert "expires off;" in geo and "add_header Cache-Control $eessi_geo_cache_control always;" in geo
    assert '"" "max-age=300";' in conf and 'default "max-age=3600";' in conf


@pytest.mark.parametrize(
    ("user", "group", "line"),
    [(None, None, None), ("root", "root", "user root root;"), ("alice", None, "user alice;")],
    ids=["not-root", "root", "user-only"],
)
def test_nginx_config_user_line_only_when_given(
    tmp_path: Path, user: str | None, group: str | None, line: str | None
) -> None:
    conf = nginx.render_config(_nginx_server(tmp_path, user=user, group=group))
    users = [ln.split("#")[0].strip() for ln in conf.splitlines() if ln.startswith("user ")]
    assert users == ([line] if line else [])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"host": "0.0.0.0"}, "loopback only"),
        ({"host": "10.0.0.1"}, "loopback only"),
        ({"port": 0}, "not in 1-65535"),
        ({"web_root": Path("relative")}, "absolute path"),
        ({"web_root": Path("/srv/$x")}, "absolute path"),
        ({"runtime_dir": Path('/tmp/a"b')}, "absolute path"),
    ],
    ids=["wildcard", "private", "port", "relative", "dollar", "quote"],
)
def test_nginx_server_refuses_unsafe_settings(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "stratum0", "port": 1, "web_root": tmp_path, "runtime_dir": tmp_path}
    with pytest.raises(ServiceError, match=message):
        nginx.NginxServer(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "order"),
    [
        (["a"], (1,)),
        (["a", "b", "c"], (1, 2, 3)),
        (["h1", "h2", "+PXYSEP+", "p1"], (1, 2, 4, 3)),
        (["h1", "+PXYSEP+", "p1", "p2"], (1, 3, 4, 2)),
    ],
    ids=["one", "three", "two-hosts-one-proxy", "one-host-two-proxies"],
)
def test_geo_order_keeps_request_order_like_cvmfs_geo_at_equal_distance(
    names: list[str], order: tuple[int, ...]
) -> None:
    assert nginx.geo_order(names) == order


def _geo_answer(uri: str) -> str | None:
    """What nginx's map answers: the first regular expression that matches, in order."""
    for regex, answer in nginx.geo_patterns():
        if re.search(regex, uri):
            return answer
    return None


def test_geo_patterns_answer_like_geo_order_for_every_length() -> None:
    for n in range(1, nginx.GEO_MAX_NAMES + 1):
        names = [f"s{i}.example.org" for i in range(n)]
        assert _geo_answer(f"/cvmfs/r.x/api/v1.0/geo/x/{','.join(names)}") == ",".join(
            map(str, nginx.geo_order(names))
        )
    for hosts in range(1, 6):
        for proxies in range(1, 6):
            names = [f"h{i}" for i in range(hosts)] + ["+PXYSEP+"] + [f"p{i}:3128" for i in range(proxies)]
            expected = ",".join(map(str, nginx.geo_order(names)))
            assert _geo_answer(f"/cvmfs/r.x/api/v1.0/geo/proxy.example/{','.join(names)}") == expected


@pytest.mark.parametrize(
    "uri",
    [
        "/cvmfs/r.x/api/v1.0/geo/x/a,,b",
        "/cvmfs/r.x/api/v1.0/geo/x/" + ",".join(["h"] * (nginx.GEO_MAX_NAMES + 1)),
        "/cvmfs/r.x/api/v1.0/geo/x/a/b",
        "/cvmfs/r.x/api/v1.0/geo/x/a;b",
        "/cvmfs/r.x/api/v1.0/geo/x/+PXYSEP+,p",
    ],
    ids=["empty-name", "too-many", "slash", "bad-char", "no-host-before-separator"],
)
def test_geo_patterns_reject_malformed_lists(uri: str) -> None:
    assert _geo_answer(uri) is None


def _squid_proxy(tmp_path: Path, **kw: object) -> squid.SquidProxy:
    return squid.SquidProxy(port=13128, runtime_dir=tmp_path / "state" / "services" / "proxy", **kw)  # type: ignore[arg-type]


def _directives(conf: str) -> list[tuple[str, str]]:
    pairs = []
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            pairs.append((key, value))
    return pairs


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("http_port", "127.0.0.1:13128"),
        ("collapsed_forwarding", "on"),
        ("minimum_expiry_time", "0 seconds"),
        ("maximum_object_size", "1024 MB"),
        ("cache_mem", "128 MB"),
        ("maximum_object_size_in_memory", "128 KB"),
        ("cache_dir", "ufs cache 2048 16 256"),
        ("access_log", "stdio:access.log squid"),
        ("icp_port", "0"),
        ("htcp_port", "0"),
        ("snmp_port", "0"),
        ("pinger_enable", "off"),
        ("udp_incoming_address", "127.0.0.1"),
        ("udp_outgoing_address", "127.0.0.1"),
        ("dns_nameservers", "127.0.0.1"),
    ],
)
def test_squid_config_has_cvmfs_and_loopback_settings(tmp_path: Path, key: str, value: str) -> None:
    directives = _directives(squid.render_config(_squid_proxy(tmp_path)))
    assert [v for k, v in directives if k == key] == [value]


def test_squid_config_allows_localhost_only_and_orders_limits(tmp_path: Path) -> None:
    directives = _directives(squid.render_config(_squid_proxy(tmp_path)))
    keys = [k for k, _ in directives]
    assert [v for k, v in directives if k == "http_access"] == ["allow localhost eessi_servers", "deny all"]
    assert ("acl", "eessi_servers dst 127.0.0.0/8 ::1") in directives
    assert keys.index("maximum_object_size") < keys.index("cache_dir")  # cache_dir takes its limit
    assert [k for k in keys if k == "http_port"] == ["http_port"]


def test_squid_config_paths_are_relative_and_stay_inside(tmp_path: Path) -> None:
    proxy = _squid_proxy(tmp_path)
    values = dict(_directives(squid.render_config(proxy)))
    paths = [values["pid_filename"], values["cache_log"], values["cache_dir"].split()[1]]
    paths.append(values["access_log"].split(":", 1)[1].split()[0])
    for p in paths:
        assert not Path(p).is_absolute() and ".." not in Path(p).parts
        assert (proxy.runtime_dir / p).is_relative_to(tmp_path / "state")
    assert values["coredump_dir"] == "none" and values["cache_store_log"] == "none"


def test_squid_config_effective_user_only_when_given(tmp_path: Path) -> None:
    assert "cache_effective_user" not in squid.render_config(_squid_proxy(tmp_path))
    assert ("cache_effective_user", "proxy") in _directives(
        squid.render_config(_squid_proxy(tmp_path, effective_user="proxy"))
    )


def test_squid_service_name_is_alphanumeric_and_per_directory(tmp_path: Path) -> None:
    a = squid.SquidProxy(port=1, runtime_dir=tmp_path / "a")
    b = squid.SquidProxy(port=1, runtime_dir=tmp_path / "b")
    assert a.service_name.isalnum() and a.service_name != b.service_name
    assert squid.start_argv(a) == ("squid", "-n", a.service_name, "-f", "squid.conf")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"host": "0.0.0.0"}, "loopback only"),
        ({"cache_dir_mb": 100}, "1024"),
        ({"destinations": ("x",)}, "network"),
    ],
    ids=["wildcard", "small-cache", "bad-destination"],
)
def test_squid_proxy_refuses_unsafe_settings(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ServiceError, match=message):
        _squid_proxy(tmp_path, **kw)


RECORDED_ACCESS_LOG = """\
1795621423.792      0 127.0.0.1 NONE_NONE/400 3616 GET / - HIER_NONE/- text/html
1795621431.566      0 127.0.0.1 TCP_MISS/200 2173 GET http://127.0.0.1:21080/cvmfs/r.x/data/9f/dffC - HIER_DIRECT/127.0.0.1 application/octet-stream
1795621431.578      0 127.0.0.1 TCP_MEM_HIT/200 2179 GET http://127.0.0.1:21080/cvmfs/r.x/data/9f/dffC - HIER_NONE/- application/octet-stream
1795621431.614      0 127.0.0.1 TCP_DENIED/403 3459 GET http://192.0.2.1/ - HIER_NONE/- text/html
"""


def test_parse_access_log_reads_squid_native_format() -> None:
    entries = squid.parse_access_log(RECORDED_ACCESS_LOG.splitlines())
    assert [(e.result, e.status, e.is_hit) for e in entries] == [
        ("NONE_NONE", 400, False),
        ("TCP_MISS", 200, False),
        ("TCP_MEM_HIT", 200, True),
        ("TCP_DENIED", 403, False),
    ]
    assert entries[1].url.endswith("/data/9f/dffC") and entries[1].hierarchy == "HIER_DIRECT/127.0.0.1"
    assert entries[1].content_type == "application/octet-stream" and entries[1].size == 2173


def test_parse_access_log_malformed_line_is_an_error() -> None:
    with pytest.raises(ServiceError, match="line 2"):
        squid.parse_access_log(["", "1795621423.792 0 127.0.0.1 TCP_MISS"])


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4A38 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 38925 1 0 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1161 1 0 100 0 0 10 0
   2: 0100007F:4A38 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 40000 1 0 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0
"""


def test_parse_proc_net_finds_listeners_and_their_addresses() -> None:
    tcp = sockets.parse_proc_net(PROC_NET_TCP, "tcp")
    assert [(s.address, s.port, s.inode, s.is_loopback) for s in tcp] == [
        ("127.0.0.1", 0x4A38, 38925, True),
        ("0.0.0.0", 2024, 1161, False),
    ]
    (v6,) = sockets.parse_proc_net(PROC_NET_TCP6, "tcp6")
    assert (v6.address, v6.port, v6.is_loopback, str(v6)) == ("::1", 8080, True, "tcp6 [::1]:8080")


def test_port_holder_is_named(pick_ports: Callable[[int], list[int]]) -> None:
    (port,) = pick_ports(1)
    with socket.socket() as s:
        s.bind((LOOPBACK, port))
        s.listen()
        assert not sockets.tcp_port_free(LOOPBACK, port)
        assert f"pid {os.getpid()} (" in sockets.describe_port_owner(port)
        assert sockets.tcp_port_listening(LOOPBACK, port)
    assert sockets.tcp_port_free(LOOPBACK, port)


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        ({}, {}, (18080, 18081, 13128)),
        (
            {},
            {"EESSI_PIPELINE_STRATUM0_PORT": "19000", "EESSI_PIPELINE_PROXY_PORT": "19128"},
            (19000, 18081, 19128),
        ),
        ({"stratum0": 20000}, {"EESSI_PIPELINE_STRATUM0_PORT": "19000"}, (20000, 18081, 13128)),
        ({"stratum1": 20001, "proxy": 20002}, {}, (18080, 20001, 20002)),
    ],
    ids=["defaults", "environment", "cli-beats-environment", "cli"],
)
def test_resolve_ports_cli_beats_environment_beats_default(
    cli: dict[str, int], env: dict[str, str], expected: tuple[int, int, int]
) -> None:
    assert resolve_ports(**cli, environ=env) == Ports(*expected)  # type: ignore[arg-type]
    assert tuple(DEFAULT_PORTS.values()) == (18080, 18081, 13128)


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({}, {"EESSI_PIPELINE_STRATUM1_PORT": "http"}, "EESSI_PIPELINE_STRATUM1_PORT='http' is not a port"),
        ({"proxy": 70000}, {}, "--proxy-port=70000 is not in 1-65535"),
        ({"stratum0": 18081}, {}, "stratum0 and stratum1 would both use port 18081"),
    ],
    ids=["not-a-number", "out-of-range", "duplicate"],
)
def test_resolve_ports_bad_values_say_which_setting(
    cli: dict[str, int], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ServiceError, match=re.escape(message)):
        resolve_ports(**cli, environ=env)  # type: ignore[arg-type]


def test_plan_services_as_root_drops_squid_to_its_user_and_identifies_each_daemon(tmp_path: Path) -> None:
    run_as = RunAs("alice", "staff", "proxy", 13, 13)
    s0, s1, proxy = plan_services(tmp_path, Ports(1, 2, 3), run_as)
    assert (s0.name, s1.name, proxy.name) == ("stratum0", "stratum1", "proxy")
    assert "user alice staff;" in s0.config_text and "cache_effective_user proxy" in proxy.config_text
    assert proxy.owner == (13, 13) and s0.owner is None
    assert s0.marker == str(tmp_path / "services" / "stratum0" / "nginx.conf") and proxy.marker.startswith(
        "-n eessi"
    )
    assert proxy.cwd == tmp_path / "services" / "proxy" and proxy.stop_signal == signal.SIGTERM
    assert s1.url == "http://127.0.0.1:2/cvmfs" and proxy.url == "http://127.0.0.1:3"
    assert 'root "' + str(tmp_path / "stratum1" / "srv") + '";' in s1.config_text


def test_stratum1_repositories_json_lists_replicas_only(tmp_path: Path) -> None:
    paths = stratum1.Stratum1Paths(tmp_path)
    for name in ("b.example.org", "a.example.org", "not-a-replica.org"):
        paths.replica(name).mkdir(parents=True)
    for name in ("b.example.org", "a.example.org"):
        (paths.replica(name) / ".cvmfspublished").write_bytes(b"C\n")
    assert stratum1.write_info(tmp_path) == ["a.example.org", "b.example.org"]
    doc = json.loads(paths.repositories_json.read_text())
    assert doc["repositories"] == []
    assert doc["replicas"] == [
        {"name": "a.example.org", "url": "/cvmfs/a.example.org"},
        {"name": "b.example.org", "url": "/cvmfs/b.example.org"},
    ]
    assert json.loads(paths.meta_json.read_text())["administrator"] == "eessi-pipeline"
    models = pytest.importorskip(
        "cvmfsscraper.http_get_models", reason="cvmfs-server-scraper is not installed"
    )
    parsed = models.GetCVMFSRepositoriesJSON(**doc)  # the scraper's own validation
    assert [r.name for r in parsed.replicas] == ["a.example.org", "b.example.org"]


# --- real nginx and squid --------------------------------------------------------------------------------


HEADER_CASES = [
    (".cvmfspublished", "max-age=61", "application/x-cvmfs"),
    (".cvmfswhitelist", "max-age=61", "application/x-cvmfs"),
    (".cvmfs_status.json", "max-age=61", "application/x-cvmfs"),
    ("../info/v1/repositories.json", "max-age=61", "application/json"),
    ("ROOT_CATALOG", "max-age=259200", "application/octet-stream"),
]


@pytest.mark.parametrize(
    ("relpath", "cache_control", "content_type"),
    HEADER_CASES,
    ids=["manifest", "whitelist", "status-json", "repositories-json", "data-object"],
)
def test_stratum0_serves_with_cvmfs_headers_and_no_validators(
    served: tuple[Stack, tuple[ServiceStatus, ...]], relpath: str, cache_control: str, content_type: str
) -> None:
    stack, statuses = served
    s0 = statuses[0]
    if relpath == "ROOT_CATALOG":
        relpath = root_catalog_path(stack)
    url = f"{s0.url}/{NAME}/{relpath}".replace(f"/{NAME}/../", "/")
    on_disk = stack.state_dir / "srv" / urlsplit(url).path.lstrip("/")
    # nginx answers 304 to an If-Modified-Since equal to the file's mtime, unless told not to.
    since = email.utils.formatdate(on_disk.stat().st_mtime, usegmt=True)
    reply = fetch(url, headers={"If-Modified-Since": since})
    assert reply.status == 200 and reply.body == on_disk.read_bytes()
    assert reply.headers.get_all("Cache-Control") == [cache_control]
    assert reply.headers["Content-Type"] == content_type
    assert reply.headers["Expires"]
    assert "ETag" not in reply.headers and "Last-Modified" not in reply.headers


@pytest.mark.parametrize(
    ("hosts", "status", "body", "cache_control"),
    [
        ("s1.example.org", 200, b"1\n", "max-age=3600"),
        (SCRAPER_GEO_HOSTS, 200, b"1,2,3\n", "max-age=3600"),
        ("h1,h2,+PXYSEP+,proxy.example:3128", 200, b"1,2,4,3\n", "max-age=3600"),
        ("a,,b", 400, None, "max-age=300"),
    ],
    ids=["one", "scraper-hosts", "proxy-separator", "malformed"],
)
def test_stratum1_geo_api_answers_request_order(
    served: tuple[Stack, tuple[ServiceStatus, ...]],
    hosts: str,
    status: int,
    body: bytes | None,
    cache_control: str,
) -> None:
    s1 = served[1][1]
    reply = fetch(f"{s1.url}/{NAME}/api/v1.0/geo/x/{hosts}")
    assert reply.status == status
    assert reply.headers.get_all("Cache-Control") == [cache_control]
    assert "Expires" not in reply.headers
    if body is not None:
        assert reply.body == body and reply.headers["Content-Type"] == "text/plain"


def test_stratum0_has_no_geo_api(served: tuple[Stack, tuple[ServiceStatus, ...]]) -> None:
    s0 = served[1][0]
    assert fetch(f"{s0.url}/{NAME}/api/v1.0/geo/x/a,b").status == 404


def test_services_listen_on_loopback_only(served: tuple[Stack, tuple[ServiceStatus, ...]]) -> None:
    for status in served[1]:
        assert status.pid is not None
        found = sockets.listeners_of(sockets.process_tree(status.pid))
        assert [str(s) for s in found if not s.is_loopback] == [], status.name
        tcp = {(s.address, s.port) for s in found if s.protocol.startswith("tcp")}
        assert tcp == {(LOOPBACK, status.port)}, status.name


def test_status_reports_running_services_with_pid_and_url(
    served: tuple[Stack, tuple[ServiceStatus, ...]],
) -> None:
    stack, started = served
    statuses = stack.status()
    assert [(s.name, s.running, s.listening, s.pid, s.url) for s in statuses] == [
        (s.name, True, True, s.pid, s.url) for s in started
    ]
    assert [s.action for s in started] == ["started"] * 3
    record = json.loads((stack.state_dir / "services" / "proxy" / "service.json").read_text())
    assert record["pid"] == started[2].pid and record["port"] == started[2].port


def test_scraper_stratum0_reports_no_fetch_errors(served: tuple[Stack, tuple[ServiceStatus, ...]]) -> None:
    scraper = pytest.importorskip("cvmfsscraper", reason="cvmfs-server-scraper is not installed")
    stack, statuses = served
    host = urlsplit(statuses[0].url).netloc
    (server,) = scraper.scrape(stratum0_servers=[host], stratum1_servers=[], repos=[], ignore_repos=[])
    assert server.fetch_errors == [] and server.is_stratum0()
    (repo,) = server.repositories
    assert (repo.name, repo.fetch_errors) == (NAME, [])
    assert repo.revision == Repository(stack.state_dir, NAME).manifest().revision


@pytest.mark.slow
def test_proxy_second_read_of_data_object_is_a_cache_hit(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    s0, _, proxy = stack.up()
    url = f"{s0.url}/{NAME}/{root_catalog_path(stack)}"
    first = fetch(url, proxy_port=proxy.port)
    second = fetch(url, proxy_port=proxy.port)
    assert first.status == second.status == 200 and first.body == second.body
    entries = access_log(stack.proxy_access_log, url, 2)
    assert [e.result for e in entries][:1] == ["TCP_MISS"]
    assert len(entries) == 2 and entries[1].is_hit, [e.result for e in entries]
    assert entries[0].hierarchy == f"HIER_DIRECT/{LOOPBACK}"
    # The origin saw exactly one request for it: the hit never left squid.
    origin_log = (stack.state_dir / "services" / "stratum0" / "access.log").read_text()
    assert origin_log.count(urlsplit(url).path) == 1


@pytest.mark.slow
def test_up_twice_is_a_noop_and_a_changed_port_restarts_only_that_service(
    make_stack: Callable[..., Stack], pick_ports: Callable[[int], list[int]]
) -> None:
    stack = make_stack()
    first = stack.up()
    config = stack.state_dir / "services" / "proxy" / "squid.conf"
    mtime = config.stat().st_mtime_ns
    again = stack.up()
    assert [(s.pid, s.action) for s in again] == [(s.pid, "already running") for s in first]
    assert config.stat().st_mtime_ns == mtime
    (new_port,) = pick_ports(1)
    moved = Stack(stack.state_dir, Ports(new_port, stack.ports.stratum1, stack.ports.proxy))
    result = moved.up()
    assert [s.action for s in result] == ["restarted", "already running", "already running"]
    assert result[0].port == new_port and result[0].pid != first[0].pid
    assert not sockets.is_alive(first[0].pid or 0) and sockets.tcp_port_free(LOOPBACK, first[0].port)
    assert fetch(f"{result[0].url}/{NAME}/.cvmfspublished").status == 200
    stack.ports = moved.ports  # so teardown stops the moved stratum0


@pytest.mark.slow
def test_concurrent_ups_start_each_service_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(Stack(stack.state_dir, stack.ports).up) for _ in range(2)]
        results = [f.result() for f in futures]
    assert sorted(tuple(s.action for s in r) for r in results) == [
        ("already running",) * 3,
        ("started",) * 3,
    ]
    assert [s.pid for s in results[0]] == [s.pid for s in results[1]]


@pytest.mark.slow
def test_up_on_taken_port_names_port_and_holder_and_leaves_nothing_running(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, stack.ports.stratum1))
        blocker.listen()
        with pytest.raises(ServiceError) as excinfo:
            stack.up()
    message = str(excinfo.value)
    assert (
        f"stratum1: port {stack.ports.stratum1} on 127.0.0.1 is already in use by pid {os.getpid()} ("
        in message
    )
    assert "--stratum1-port" in message and PORT_ENV["stratum1"] in message
    # stratum0 had started first; the failed up stopped it again.
    assert [s.running for s in stack.status()] == [False, False, False]
    assert sockets.tcp_port_free(LOOPBACK, stack.ports.stratum0)


@pytest.mark.slow
def test_port_taken_between_check_and_start_is_still_named(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack()
    monkeypatch.setattr(sockets, "tcp_port_free", lambda host, port: True)  # lose the race on purpose
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, stack.ports.stratum0))
        blocker.listen()
        with pytest.raises(
            ServiceError, match=rf"stratum0: port {stack.ports.stratum0} .* pid {os.getpid()} "
        ):
            stack.up()  # nginx itself fails to bind (after its five tries)
    assert not any(s.running for s in stack.status())


def test_daemon_that_never_appears_is_reported_with_its_log(
    tmp_path: Path, pick_ports: Callable[[int], list[int]]
) -> None:
    fake = tmp_path / "fake-nginx"
    fake.write_text("#!/bin/sh\necho 'fake nginx: pretending to start' >&2\nexit 0\n")
    fake.chmod(0o755)
    stack = Stack(tmp_path / "state", Ports(*pick_ports(3)), nginx_binary=str(fake), squid_binary=str(fake))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="stratum0: nginx exited during start-up; fix what its log"):
        stack.up()
    assert time.monotonic() - started < 10  # noticed after the grace, not at the 30 s deadline


@pytest.mark.slow
def test_down_stops_every_process_and_closes_ports(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    statuses = stack.up()
    trees = {s.name: sockets.process_tree(s.pid or 0) for s in statuses}
    assert all(len(tree) >= 2 for tree in trees.values()), trees  # master and workers / kid
    shm = squid.SquidProxy(port=stack.ports.proxy, runtime_dir=stack.state_dir / "services" / "proxy")
    assert shm.shm_segments()  # squid uses shared memory while it runs
    stopped = stack.down()
    assert [(s.action, s.running) for s in stopped] == [("stopped", False)] * 3
    assert [s.pid for s in stopped] == [s.pid for s in statuses]
    for name, tree in trees.items():
        assert [p for p in tree if sockets.is_alive(p)] == [], name
    for port in (stack.ports.stratum0, stack.ports.stratum1, stack.ports.proxy):
        assert sockets.tcp_port_free(LOOPBACK, port) and not sockets.tcp_port_listening(LOOPBACK, port)
    assert shm.shm_segments() == [] and not shm.pid_path.exists()
    assert [s.action for s in stack.down()] == ["not running"] * 3


@pytest.mark.slow
def test_up_after_kill_9_starts_a_fresh_proxy(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    s0, _, proxy = stack.up()
    for pid in sockets.process_tree(proxy.pid or 0):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sockets.is_alive(proxy.pid or 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stack.status()[2].running
    after = stack.up()
    assert [s.action for s in after] == ["already running", "already running", "started"]
    url = f"{s0.url}/{NAME}/.cvmfspublished"
    assert fetch(url, proxy_port=after[2].port).status == 200


@pytest.mark.slow
def test_cli_up_status_down(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    state = str(stack.state_dir)
    p0, p1, px = stack.ports.stratum0, stack.ports.stratum1, stack.ports.proxy
    ports = ["--stratum0-port", str(p0), "--stratum1-port", str(p1), "--proxy-port", str(px)]
    rc, out = run_cli(["up", "--state-dir", state, *ports])
    assert rc == 0, out
    assert out.splitlines() == [
        f"stratum0 http://127.0.0.1:{p0}/cvmfs",
        f"stratum1 http://127.0.0.1:{p1}/cvmfs",
        f"proxy http://127.0.0.1:{px}",
    ]
    rc, out = run_cli(["status", "--state-dir", state, "--json"])
    services = json.loads(out)["services"]
    assert rc == 0 and [(s["name"], s["running"], s["port"]) for s in services] == [
        ("stratum0", True, p0),
        ("stratum1", True, p1),
        ("proxy", True, px),
    ]
    assert all(isinstance(s["pid"], int) for s in services)
    rc, out = run_cli(["down", "--state-dir", state, "--json"])
    assert rc == 0 and [s["action"] for s in json.loads(out)["services"]] == ["stopped"] * 3
    rc, out = run_cli(["status", "--state-dir", state, "--json"])
    assert rc == 1
    assert [(s["running"], s["pid"], s["url"]) for s in json.loads(out)["services"]] == [
        (False, None, f"http://127.0.0.1:{p0}/cvmfs"),
        (False, None, f"http://127.0.0.1:{p1}/cvmfs"),
        (False, None, f"http://127.0.0.1:{px}"),
    ]


def test_cli_snapshot_without_stratum0_says_what_to_do(tmp_path: Path) -> None:
    Repository(tmp_path / "state", NAME).init()
    rc, message = run_cli(["snapshot", "--state-dir", str(tmp_path / "state"), "--repo", NAME])
    assert rc == 1 and "stratum0 is not running" in message and "eessi-pipeline stratum up" in message


def _replica_available() -> None:
    try:
        import eessi_pipeline.cvmfs.replica  # noqa: F401
    except ImportError as e:
        pytest.skip(
            f"eessi_pipeline.cvmfs.replica is not importable yet ({e}); the Stratum 1 scrape needs it"
        )


@pytest.mark.slow
def test_snapshot_then_scraper_stratum1_reports_no_fetch_errors(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    scraper = pytest.importorskip("cvmfsscraper", reason="cvmfs-server-scraper is not installed")
    from cvmfsscraper.constants import GeoAPIStatus
    from cvmfsscraper.server import Stratum1Server

    _replica_available()
    stack = make_stack()
    repo = Repository(stack.state_dir, NAME)
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"#!/bin/sh\n"}))
    _, s1, _ = stack.up()
    rc, out = run_cli(["snapshot", "--state-dir", str(stack.state_dir), "--repo", NAME, "--json"])
    assert rc == 0, out
    result = json.loads(out)
    assert result["revision"] == repo.manifest().revision == 2 and result["objects_fetched"] > 0
    assert result["replicas"] == [NAME] and result["stratum1_url"] == f"{s1.url}/{NAME}"
    reply = fetch(f"{s1.url}/{NAME}/.cvmfspublished")
    assert reply.status == 200 and reply.body == repo.paths.manifest.read_bytes()
    assert reply.headers["Cache-Control"] == "max-age=61" and "Last-Modified" not in reply.headers

    host = urlsplit(s1.url).netloc
    (server,) = scraper.scrape(stratum0_servers=[], stratum1_servers=[host], repos=[], ignore_repos=[])
    assert server.fetch_errors == [] and server.is_stratum1()
    (replica,) = server.repositories
    assert (replica.name, replica.fetch_errors, replica.revision) == (NAME, [], 2)
    assert replica.last_snapshot is not None
    # The scraper's geo check assumes a server in northern Europe ([2, 1, 3]); ours has no
    # geography and answers 1,2,3: a location mismatch, not a fetch error.
    assert server.geoapi_status == GeoAPIStatus.LOCATION_ERROR
    here = Stratum1Server(host, [], [], scrape_on_init=False)
    here.geoapi_order = [1, 2, 3]
    here.scrape()
    assert here.fetch_errors == [] and here.geoapi_status == GeoAPIStatus.OK

    # A second snapshot with nothing new fetches no objects.
    rc, out = run_cli(["snapshot", "--state-dir", str(stack.state_dir), "--repo", NAME, "--json"])
    again = json.loads(out)
    assert rc == 0 and again["objects_fetched"] == 0 and again["objects_skipped"] > 0


def test_find_binary_looks_in_sbin_too(tmp_path: Path) -> None:
    sbin = Path("/usr/sbin/nginx")
    if not sbin.exists():
        pytest.skip("no /usr/sbin/nginx here")
    assert find_binary("nginx", {"PATH": str(tmp_path)}) == str(sbin)
    assert find_binary("no-such-program-here", {"PATH": str(tmp_path)}) == "no-such-program-here"
