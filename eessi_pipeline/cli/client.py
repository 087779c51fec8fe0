"""``eessi-pipeline client …`` and ``eessi-pipeline init …``: reading the stack as a user does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..cvmfs.client import ClientConfig, open_client
from ..cvmfs.http import add_limit_options, apply_limit_options
from ..cvmfs.mount import mount, umount
from ..cvmfs.nsrun import run_mounted
from ..cvmfs.repository import Repository
from ..cvmfs.tarcheck import check_tarball
from ..errors import RepositoryError, UsageError
from ..initscript import build_init_tarball
from ..matrix import load_matrix
from ..settings import resolve_settings
from .options import add_json, add_setting, add_stack_version
from .output import write_bytes

STRATUM1_PORT_ENV = "EESSI_PIPELINE_STRATUM1_PORT"
PROXY_PORT_ENV = "EESSI_PIPELINE_PROXY_PORT"


def _config(args: argparse.Namespace) -> tuple[ClientConfig, Path]:
    apply_limit_options(args)  # issue 16: --http-* flags, exported for the FUSE mount process too
    settings = resolve_settings(repository=args.repo, state_dir=args.state_dir)
    urls = tuple(args.stratum1) or (f"http://127.0.0.1:{os.environ.get(STRATUM1_PORT_ENV, '18081')}/cvmfs",)
    proxy = (
        None if args.no_proxy else args.proxy or f"http://127.0.0.1:{os.environ.get(PROXY_PORT_ENV, '13128')}"
    )
    key = (
        Path(args.master_key)
        if args.master_key
        else settings.state_dir / "keys" / f"{settings.repository}.pub"
    )
    cache = Path(args.cache_dir) if args.cache_dir else settings.state_dir / "client-cache"
    return ClientConfig(settings.repository, urls, cache, key, proxy), settings.state_dir


def cmd_mount(args: argparse.Namespace, out: TextIO) -> int:
    config, state = _config(args)
    mountpoint = Path(args.mountpoint or f"/cvmfs/{config.repository}")
    try:
        pid = mount(config, mountpoint, state, refresh=args.refresh)
    except RepositoryError as e:
        raise RepositoryError(f"{e}; is the network up? (`eessi-pipeline stratum up`)") from e
    if args.json:
        out.write(
            json.dumps({"mountpoint": str(mountpoint), "pid": pid, "repository": config.repository}) + "\n"
        )
    else:
        out.write(f"{mountpoint}\n")
    return 0


def cmd_umount(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(repository=args.repo, state_dir=args.state_dir)
    mountpoint = Path(args.mountpoint or f"/cvmfs/{settings.repository}")
    umount(mountpoint, settings.state_dir)
    out.write(f"unmounted {mountpoint}\n")
    return 0


def cmd_exec(args: argparse.Namespace, out: TextIO) -> int:
    config, state = _config(args)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    if not command:
        raise UsageError("client exec: give the command to run, e.g. `eessi-pipeline client exec -- bash -l`")
    return run_mounted(config, state, command).returncode


def cmd_client_cat(args: argparse.Namespace, out: TextIO) -> int:
    config, _ = _config(args)
    reader, _source = open_client(config)
    with reader:
        write_bytes(out, reader.read_file("/" + args.path.strip("/")))
    return 0


def cmd_init_build(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(repository=args.repo, version=args.version, state_dir=args.state_dir)
    matrix = load_matrix(args.matrix)
    out_dir = Path(args.out) if args.out else settings.state_dir / "tarballs"
    tarball = build_init_tarball(
        matrix, settings.version or matrix.default_version, settings.repository, out_dir
    )
    if args.publish:
        check_tarball(tarball, repository=settings.repository)
        result = Repository(settings.state_dir, settings.repository).ingest(tarball, "versions")
        sys.stderr.write(f"[init] published into {result.name} revision {result.revision}\n")
    out.write(f"{tarball}\n")
    return 0


def add_client_parser(sub: Any) -> None:
    client = sub.add_parser(
        "client", help="mount and read a repository as a client (through Stratum 1 and squid)"
    )
    csub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_setting(p, "repository")
        add_setting(p, "state_dir")
        p.add_argument("--stratum1", action="append", default=[], metavar="URL",
                       help="Stratum 1 base URL serving /cvmfs (repeatable: fail-over in order)")  # fmt: skip
        p.add_argument("--proxy", metavar="URL", help="HTTP proxy (default: the embedded squid)")
        p.add_argument("--no-proxy", action="store_true", help="connect to the Stratum 1 directly")
        p.add_argument("--master-key", metavar="FILE", help="public master key (default: the state dir's)")
        p.add_argument(
            "--cache-dir", metavar="DIR", help="local object cache (default: <state>/client-cache)"
        )
        add_json(p)
        add_limit_options(p)  # issue 16

    p = csub.add_parser("mount", help="mount the repository read-only with FUSE (default /cvmfs/<repo>)")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    p.add_argument(
        "--refresh", type=float, metavar="SECONDS", help="check for a new revision this often (default: TTL)"
    )
    common(p)
    p.set_defaults(handler=cmd_mount)

    p = csub.add_parser("umount", help="unmount it")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    add_setting(p, "repository")
    add_setting(p, "state_dir")
    p.set_defaults(handler=cmd_umount)

    p = csub.add_parser(
        "exec", help="run a command with the repository mounted at /cvmfs/<repo> in a private namespace"
    )
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments"
    )
    common(p)
    p.set_defaults(handler=cmd_exec)

    p = csub.add_parser("cat", help="print a file, read through the mirrors and the cache")
    p.add_argument("path", metavar="PATH")
    common(p)
    p.set_defaults(handler=cmd_client_cat)

    init = sub.add_parser("init", help="the init scripts users source (versions/<version>/init/)")
    isub = init.add_subparsers(dest="init_command", metavar="ACTION", required=True)
    p = isub.add_parser("build", help="build eessi-<version>-init-<epoch>.tar.gz; print its path")
    add_stack_version(p)
    add_setting(p, "repository", "repository name the scripts point at")
    p.add_argument("--matrix", metavar="FILE")
    p.add_argument("--out", metavar="DIR", help="where to write it (default: <state>/tarballs)")
    p.add_argument("--publish", action="store_true", help="also ingest it into the embedded repository")
    p.add_argument(
        "--stamp", type=int, metavar="EPOCH", help="timestamp for the name and members (default: now)"
    )
    add_setting(p, "state_dir")
    p.set_defaults(handler=cmd_init_build)
