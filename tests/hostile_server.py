"""A hostile HTTP server on loopback (127.0.0.1 only), shared by the client, replica and verify tests.

``hostile_server(mode, root)`` serves the files under ``root`` honestly, except that requests whose
path contains ``only`` (default ``/data/``: the content-addressed objects, so the signed manifest
still verifies and the attack hits the object reads) get the ``mode`` treatment:

``slow``          the right headers, then one byte every 0.5 s
``endless``       200 without a length, then zeros until the client hangs up
``truncated``     a Content-Length of the real size, half the bytes, then the connection closes
``wrong-length``  announces 64 GiB
``wrong-content`` the right length of other bytes
``redirect-loop`` 302 to a second URL, which redirects back
``ok``            nothing hostile

Every handler stops after 60 s or when the server shuts down, so a test never leaves it behind.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MODES = ("slow", "endless", "truncated", "wrong-length", "wrong-content", "redirect-loop")
_LIFETIME_S = 60.0


def _handler(
    mode: str, root: Path, only: str, stop: threading.Event
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes | None:
            path = (root / self.path.split("?")[0].lstrip("/")).resolve()
            if not path.is_relative_to(root.resolve()) or not path.is_file():
                return None
            return path.read_bytes()

        def do_GET(self) -> None:
            body = self._body()
            hostile = mode != "ok" and (only in self.path or "/data-loop/" in self.path)
            if mode == "redirect-loop" and hostile:  # /data/x -> /data-loop/x -> /data/x -> ...
                if "/data-loop/" in self.path:
                    target = self.path.replace("/data-loop/", "/data/")
                else:
                    target = (
                        self.path.replace("/data/", "/data-loop/") if "/data/" in self.path else self.path
                    )
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if body is None and not (hostile and mode in ("endless", "wrong-length")):
                self.send_error(404)
                return
            body = body or b""
            if not hostile:
                self._send(body)
            elif mode == "slow":
                self.send_response(200)
                self.send_header("Content-Length", str(max(len(body), 1000)))
                self.end_headers()
                self._dribble(body.ljust(1000, b"\0"), 0.5)
            elif mode == "endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                block = b"\0" * (1 << 16)
                deadline = time.monotonic() + _LIFETIME_S
                with contextlib.suppress(OSError):
                    while not stop.is_set() and time.monotonic() < deadline:
                        self.wfile.write(block)
                self.close_connection = True
            elif mode == "truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif mode == "wrong-length":
                self.send_response(200)
                self.send_header("Content-Length", str(64 << 30))
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body[:100])
                self.close_connection = True
            elif mode == "wrong-content":
                self._send(bytes(b ^ 0x5A for b in body))
            else:
                raise AssertionError(f"unknown hostile mode {mode!r}")

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def _dribble(self, body: bytes, pause: float) -> None:
            deadline = time.monotonic() + _LIFETIME_S
            with contextlib.suppress(OSError):
                for i in range(len(body)):
                    if stop.wait(pause) or time.monotonic() > deadline:
                        break
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
            self.close_connection = True

    return Handler


@contextlib.contextmanager
def serve_hostile(mode: str, root: Path, only: str = "/data/") -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) with ``mode`` applied; yields ``http://127.0.0.1:PORT``."""
    stop = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mode, root, only, stop))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(name="hostile_server")
def hostile_server_fixture() -> Iterator[Callable[..., str]]:
    """A factory: ``hostile_server(mode, root, only="/data/") -> base URL``; all stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(mode: str, root: Path, only: str = "/data/") -> str:
            return stack.enter_context(serve_hostile(mode, root, only))

        yield start
