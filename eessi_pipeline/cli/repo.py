"""``eessi-pipeline repo …``: the embedded Stratum 0 and readers for any CVMFS repository."""

from __future__ import annotations

import argparse
import logging
import stat
import sys
from pathlib import Path
from typing import Any, TextIO

from .. import inputs
from ..cvmfs.http import add_limit_options, apply_limit_options
from ..cvmfs.reader import RepositoryReader, open_repository
from ..cvmfs.repository import DEFAULT_LOCK_TIMEOUT, WHITELIST_DAYS, Repository
from ..cvmfs.tarcheck import DEFAULT_MAX_MEMBER_SIZE, check_tarball
from ..errors import RepositoryError, UsageError
from ..settings import resolve_settings
from ..trust import refuse_if_writable
from .options import add_json, add_setting
from .output import emit_json, write_bytes

log = logging.getLogger(__name__)


def _repo(args: argparse.Namespace, name: str | None = None) -> Repository:
    settings = resolve_settings(repository=name or getattr(args, "repo", None), state_dir=args.state_dir)
    return Repository(settings.state_dir, settings.repository)


def _progress(msg: str) -> None:
    sys.stderr.write(f"[repo] {msg}\n")


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    repo = _repo(args, args.name)
    result = repo.init()
    if args.json:
        emit_json({"name": result.name, "revision": result.revision, "directory": str(repo.paths.root),
               "keys": str(repo.paths.keys.directory)}, out)  # fmt: skip
    else:
        out.write(f"{repo.paths.root}\n")
        _progress(f"created {result.name} revision {result.revision}; keys in {repo.paths.keys.directory}")
    return 0


def cmd_ingest(args: argparse.Namespace, out: TextIO) -> int:
    repo = _repo(args)
    tarball = Path(args.tarball) if args.tarball else None
    report = None
    if tarball is not None:
        inputs.check_regular_file(tarball, "tarball", "pass the .tar.gz/.tar.zst/.tar to ingest")
        if args.dry_run or args.backend == "cvmfs_server":  # our ingest checks the stream it publishes
            _progress(f"checking {tarball.name}")
            report = check_tarball(tarball, max_member_size=args.max_member_size, repository=repo.paths.name)
    if args.dry_run:
        summary = {
            "repository": repo.paths.name,
            "tarball": str(tarball) if tarball else None,
            "members": report.member_count if report else 0,
            "bytes": report.total_size if report else 0,
            "base_dir": args.base_dir,
            "deletes": args.delete,
            "catalog": args.catalog,
        }
        if args.json:
            emit_json({"dry_run": True, **summary}, out)
        else:
            what = f"{summary['members']} members ({summary['bytes']} bytes)" if report else "no tarball"
            out.write(
                f"would ingest {what} into {repo.paths.name}:/{args.base_dir}; "
                f"deletes: {args.delete or 'none'}\n"
            )
        return 0
    if args.backend == "cvmfs_server":
        from ..cvmfs.cvmfs_server import CvmfsServerBackend

        if tarball is None:
            raise UsageError("the cvmfs_server backend needs --tarball")
        CvmfsServerBackend(repo.paths.name, ssh=args.ssh).ingest(
            tarball, args.base_dir, args.delete, args.catalog
        )
        out.write(f"ingested {tarball.name} into {repo.paths.name} through cvmfs_server\n")
        return 0
    _progress(f"ingesting into {repo.paths.name} (lock timeout {args.lock_timeout:.0f} s)")
    result = repo.ingest(
        tarball, args.base_dir, args.delete, args.catalog,
        lock_timeout=args.lock_timeout, chunking=not args.no_chunking, apply_dirtab=not args.no_dirtab,
        check=True, max_member_size=args.max_member_size,  # the bytes published are checked in the same pass
    )  # fmt: skip
    if args.json:
        summary = {"repository": result.name, "revision": result.revision,
                   "root_catalog": result.root_catalog, "catalogs_written": result.catalogs_written,
                   "objects_written": result.objects_written, "files_added": result.files_added,
                   "paths_deleted": result.paths_deleted}  # fmt: skip
        emit_json(summary, out)
    else:
        out.write(
            f"published {result.name} revision {result.revision}: {result.files_added} files, "
            f"{result.paths_deleted} deletions, {result.catalogs_written} catalogs and "
            f"{result.objects_written} objects written\n"
        )
    return 0


def _open(args: argparse.Namespace) -> RepositoryReader:
    """A reader for ``args.source`` (path, URL or name of a repository in the state dir)."""
    apply_limit_options(args)  # issue 16: --http-* flags
    target = getattr(args, "source", None)
    master = Path(args.master_key) if getattr(args, "master_key", None) else None
    if target is None or not (target.startswith(("http://", "https://")) or Path(target).exists()):
        repo = _repo(args, target)
        if not repo.exists:
            raise RepositoryError(
                f"{target or repo.paths.name}: not a URL, a repository directory, or a repository in "
                f"{repo.paths.state_dir}; run `eessi-pipeline repo init NAME` or pass a path or URL"
            )
        key = master or repo.paths.keys.master_public
        refuse_if_writable(key, "the master public key", RepositoryError)  # issue 16
        return open_repository(repo.paths.root, key.read_bytes())
    if master is None:
        raise UsageError(f"{target}: pass --master-key FILE, the repository's public master key (<name>.pub)")
    refuse_if_writable(master, "the master public key", RepositoryError)  # issue 16
    return open_repository(target, master.read_bytes())


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as reader:
        report = reader.verify()
    for warning in report.warnings:
        _progress(f"warning: {warning}")
    if args.json:
        emit_json({"ok": True, "revision": report.revision, "catalogs": report.catalogs,
               "objects": report.objects, "entries": report.entries,
               "warnings": list(report.warnings)}, out)  # fmt: skip
    else:
        out.write(f"revision {report.revision}\n")
        _progress(f"verified {report.catalogs} catalogs, {report.objects} objects, {report.entries} entries")
    return 0


def cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as reader:
        path = "/" + args.path.strip("/")
        entry = reader.lookup(path)
        if entry is None:
            raise RepositoryError(f"{path}: no such file or directory in the repository")
        entries = reader.listdir(path) if entry.is_dir else [entry]
    if args.json:
        emit_json([{"path": e.path, "mode": oct(e.mode), "size": e.size, "mtime": e.mtime,
                "symlink": e.symlink or None} for e in entries], out)  # fmt: skip
        return 0
    for e in entries:
        if args.long:
            target = f" -> {e.symlink}" if e.is_symlink else ""
            out.write(f"{stat.filemode(e.mode)} {e.size:>12} {e.mtime:>11} {e.name}{target}\n")
        else:
            out.write(e.name + ("/" if e.is_dir else "") + "\n")
    return 0


def cmd_cat(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as reader:
        write_bytes(out, reader.read_file("/" + args.path.strip("/")))
    return 0


def cmd_resign(args: argparse.Namespace, out: TextIO) -> int:
    repo = _repo(args)
    repo.manifest()  # the repository must exist
    wl = repo.write_whitelist(args.days)
    out.write(f"{repo.paths.whitelist}: valid until {wl.expires:%Y-%m-%d %H:%M} UTC\n")
    return 0


def add_repo_parser(sub: Any) -> None:
    repo = sub.add_parser("repo", help="the embedded CVMFS Stratum 0, and readers for any CVMFS repository")
    rsub = repo.add_subparsers(dest="repo_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, with_repo: bool = True) -> None:
        add_setting(p, "state_dir")
        if with_repo:
            add_setting(p, "repository")
        add_json(p)

    p = rsub.add_parser("init", help="create keys and an empty repository; print its directory")
    p.add_argument("name", metavar="NAME", help="fully qualified repository name, e.g. software.eessi.local")
    common(p, with_repo=False)
    p.set_defaults(handler=cmd_init)

    p = rsub.add_parser("ingest", help="delete paths, then overlay a tarball (cvmfs_server ingest semantics)")
    p.add_argument("--tarball", metavar="T", help="tarball to ingest (.tar.gz, .tar)")
    p.add_argument(
        "--base-dir", default="versions", metavar="DIR", help="where members land (default: versions)"
    )
    p.add_argument(
        "--delete", action="append", default=[], metavar="PATH", help="delete PATH first (repeatable)"
    )
    p.add_argument("--catalog", action="store_true", help="make --base-dir a nested catalog")
    p.add_argument("--no-chunking", action="store_true", help="store large files whole")
    p.add_argument("--no-dirtab", action="store_true", help="do not apply the repository's /.cvmfsdirtab")
    p.add_argument("--max-member-size", type=int, default=DEFAULT_MAX_MEMBER_SIZE, metavar="BYTES")
    p.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS")
    p.add_argument("--backend", choices=["embedded", "cvmfs_server"], default="embedded")
    p.add_argument("--ssh", metavar="HOST", help="run cvmfs_server on HOST over SSH (cvmfs_server backend)")
    p.add_argument("--dry-run", action="store_true", help="check the tarball and say what would happen")
    common(p)
    p.set_defaults(handler=cmd_ingest)

    for verb, helptext, handler in (
        ("verify", "verify signatures, catalogs and every object; print the revision", cmd_verify),
        ("ls", "list a directory of the repository", cmd_ls),
        ("cat", "print a file of the repository", cmd_cat),
    ):
        p = rsub.add_parser(verb, help=helptext)
        if verb == "verify":
            p.add_argument(
                "source", nargs="?", metavar="PATH_OR_URL", help="directory, URL or repository name"
            )
        else:
            p.add_argument("path", nargs="?" if verb == "ls" else None, default="/", metavar="PATH")
            p.add_argument("--source", metavar="PATH_OR_URL", help="directory, URL or repository name")
            if verb == "ls":
                p.add_argument("-l", "--long", action="store_true", help="mode, size, mtime and link targets")
        p.add_argument("--master-key", metavar="FILE", help="public master key verifying the whitelist")
        add_limit_options(p)  # issue 16: when reading from a URL
        common(p)
        p.set_defaults(handler=handler)

    p = rsub.add_parser("resign", help="renew the whitelist with the master key")
    p.add_argument(
        "--days", type=int, default=WHITELIST_DAYS, help=f"validity in days (default {WHITELIST_DAYS})"
    )
    common(p)
    p.set_defaults(handler=cmd_resign)
