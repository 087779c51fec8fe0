"""Helpers shared by the test modules: where the peer fixtures live, and cpuinfo text."""

from __future__ import annotations

import argparse
import io
import json
import socket
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


DATA_DIR = PROJECT_ROOT / "tests" / "data"  # peer fixtures kept in the project (tests/data/README.md)


def archdetect_dir() -> Path:
    return DATA_DIR / "archdetect"


def archdetect_cases() -> list[Path]:
    """EESSI's archdetect ``*.cpuinfo`` files, sorted (they are part of the checkout)."""
    return sorted(archdetect_dir().rglob("*.cpuinfo"))


def cpuinfo_text(vendor: str, flags: str | set[str] | frozenset[str], model: str = "Test CPU") -> str:
    """A minimal x86_64 /proc/cpuinfo block."""
    flag_text = flags if isinstance(flags, str) else " ".join(sorted(flags))
    return (
        f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\nmodel name\t: {model}\n"
        f"flags\t\t: {flag_text}\n\n"
    )


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def build_cli_parser() -> argparse.ArgumentParser:
    """The ``eessi-pipeline build`` command line alone (handlers called directly, errors raised)."""
    from eessi_pipeline.cli.build import add_build_parser

    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir")
    add_build_parser(parser.add_subparsers(dest="command"))
    return parser


def build_cli_json(argv: list[str]) -> Any:
    """Run ``eessi-pipeline build`` with ``argv`` (which asks for --json); it must succeed: its JSON."""
    args = build_cli_parser().parse_args(argv)
    out = io.StringIO()
    assert args.handler(args, out) == 0
    return json.loads(out.getvalue())
