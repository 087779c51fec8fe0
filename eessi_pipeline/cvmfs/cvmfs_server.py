"""The production backend: ingest through a real ``cvmfs_server`` on a Stratum 0.

It does what EESSI's ``scripts/ingest-tarball.sh`` does (spec §6)::

    gunzip -c T | cvmfs_server ingest -t - -b versions <repo>
    cvmfs_server transaction <repo>
    cvmfs_server publish <repo>

``cvmfs_server ingest`` does not apply ``.cvmfsdirtab``; the empty transaction and
publish that follow do.  Either locally or, with ``ssh="user@stratum0"``, on the
Stratum 0 over ssh: the tarball is decompressed here and streamed to the remote
``cvmfs_server ingest -t -`` through ssh's stdin.

The argument vectors are built by pure functions (checked by tests without
running anything); :class:`CvmfsServerBackend` runs them through
:mod:`eessi_pipeline.proc`.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from eessi_pipeline import proc
from eessi_pipeline.errors import RepositoryError

log = logging.getLogger(__name__)

CVMFS_SERVER = "cvmfs_server"
SSH = "ssh"

INGEST_TIMEOUT = 6 * 3600.0
"""Seconds ``decompress | cvmfs_server ingest`` may take: large tarballs take hours."""
STEP_TIMEOUT = 3600.0
"""Seconds a ``transaction`` or ``publish`` may take."""
ABORT_TIMEOUT = 600.0

# A fully qualified repository name, as ``cvmfs_server mkfs`` wants it (same rule as the embedded backend).
_REPO_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
# [user@]host, or an alias from ssh_config; never starting with '-' (ssh would read an option).
_SSH_RE = re.compile(r"([A-Za-z0-9._][A-Za-z0-9._-]*@)?[A-Za-z0-9_\[][A-Za-z0-9._:\[\]-]*")

# Suffix -> decompressor that writes the tar stream to stdout.
_DECOMPRESSORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".tar.gz", ("gunzip", "-c")),
    (".tgz", ("gunzip", "-c")),
    (".tar.zst", ("zstd", "-dc")),
    (".tar", ("cat",)),
)


# --- validation --------------------------------------------------------------------------------------------


def check_repo(repo: str) -> str:
    """``repo`` if it is a fully qualified repository name, else RepositoryError."""
    if len(repo) > 200 or not _REPO_RE.fullmatch(repo):
        raise RepositoryError(
            f"invalid repository name {repo!r}: use a fully qualified name of lower-case letters, digits, "
            "dashes and dots, e.g. software.eessi.io"
        )
    return repo


def check_ssh_target(target: str) -> str:
    """``target`` if it is ``[user@]host`` (or an ssh_config alias), else RepositoryError."""
    if not _SSH_RE.fullmatch(target):
        raise RepositoryError(
            f"invalid ssh target {target!r}: give [user@]host of the Stratum 0, "
            "e.g. cvmfs@stratum0.example.org"
        )
    return target


def _check_relative(path: str, what: str, option: str) -> str:
    """A repository path relative to its root, without '.', '..' or empty components; trailing '/' dropped."""
    bad = next((c for c in ("\0", "\n", "\r") if c in path), None)
    if bad is not None:
        raise RepositoryError(f"invalid {what} {path!r}: it contains {bad!r}; give a plain path for {option}")
    if path.startswith("/"):
        raise RepositoryError(
            f"invalid {what} {path!r}: give a path relative to the repository root for {option}, "
            f"e.g. {path.lstrip('/') or 'versions'!r}"
        )
    trimmed = path.rstrip("/")
    parts = trimmed.split("/")
    if not trimmed or any(p in ("", ".", "..") for p in parts):
        raise RepositoryError(
            f"invalid {what} {path!r}: give a path relative to the repository root without '.', '..' or "
            f"empty components for {option}, e.g. versions/2023.06"
        )
    return str(PurePosixPath(trimmed))


def check_base_dir(base_dir: str) -> str:
    """The directory a tarball lands in, relative to the repository root (``versions``)."""
    return _check_relative(base_dir, "base directory", "-b")


def check_delete(path: str) -> str:
    """A path ``cvmfs_server ingest -d`` removes; ':' is refused because repeated ``-d`` are joined by ':'."""
    checked = _check_relative(path, "path to delete", "-d")
    if ":" in checked:
        raise RepositoryError(
            f"invalid path to delete {path!r}: cvmfs_server joins repeated -d paths with ':', so a path "
            "containing ':' cannot be deleted by ingest; remove it in a transaction instead"
        )
    return checked


# --- argument vectors --------------------------------------------------------------------------------------


def remote_argv(argv: Sequence[str], ssh: str | None) -> list[str]:
    """``argv`` itself, or ``ssh -o BatchMode=yes <ssh> -- '<quoted argv>'`` to run it on ``ssh``."""
    if ssh is None:
        return list(argv)
    return [SSH, "-o", "BatchMode=yes", check_ssh_target(ssh), "--", shlex.join(argv)]


def ingest_argv(
    repo: str,
    *,
    base_dir: str = "versions",
    deletes: Sequence[str] = (),
    catalog: bool = False,
    tar_from_stdin: bool = True,
    ssh: str | None = None,
) -> list[str]:
    """``cvmfs_server ingest [-t - -b BASE] [-d PATH]... [-c] REPO``; the repository name comes last.

    Without ``tar_from_stdin`` only deletes are done (a base_dir needs a tarball,
    so ``-b`` and ``-c`` are left out and at least one delete is required).  A
    gateway publisher accepts only one ``-d``.
    """
    if isinstance(deletes, str):
        raise RepositoryError(f"deletes must be a list of paths, not the string {deletes!r}")
    args = [CVMFS_SERVER, "ingest"]
    if tar_from_stdin:
        args += ["-t", "-", "-b", check_base_dir(base_dir)]
    elif catalog:
        raise RepositoryError("-c (nested catalog) needs a tarball: give one, or drop the catalog option")
    elif not deletes:
        raise RepositoryError("nothing to ingest: give a tarball, a path to delete, or both")
    for d in deletes:
        args += ["-d", check_delete(d)]
    if catalog:
        args.append("-c")
    args.append(check_repo(repo))
    return remote_argv(args, ssh)


def decompress_argv(tarball: Path) -> list[str]:
    """The command that writes ``tarball`` as a plain tar stream to stdout, chosen by its suffix."""
    name = tarball.name
    for suffix, tool in _DECOMPRESSORS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return [*tool, "--", str(tarball)]
    known = ", ".join(s for s, _ in _DECOMPRESSORS)
    raise RepositoryError(
        f"cannot tell how {tarball} is compressed: its name must end in one of {known}; rename it or "
        "recompress it"
    )


def transaction_argv(repo: str, ssh: str | None = None) -> list[str]:
    """``cvmfs_server transaction REPO``: open a transaction."""
    return remote_argv([CVMFS_SERVER, "transaction", check_repo(repo)], ssh)


def publish_argv(repo: str, ssh: str | None = None) -> list[str]:
    """``cvmfs_server publish REPO``: publish the open transaction (this applies .cvmfsdirtab)."""
    return remote_argv([CVMFS_SERVER, "publish", check_repo(repo)], ssh)


def abort_argv(repo: str, ssh: str | None = None) -> list[str]:
    """``cvmfs_server abort -f REPO``: throw the open transaction away without asking."""
    return remote_argv([CVMFS_SERVER, "abort", "-f", check_repo(repo)], ssh)


# --- the backend -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CvmfsServerBackend:
    """Ingest into ``repo`` with a real ``cvmfs_server``: here, or on ``ssh`` (``user@stratum0``)."""

    repo: str
    ssh: str | None = None
    ingest_timeout: float = INGEST_TIMEOUT
    step_timeout: float = STEP_TIMEOUT

    def __post_init__(self) -> None:
        check_repo(self.repo)
        if self.ssh is not None:
            check_ssh_target(self.ssh)

    def available(self) -> bool:
        """Whether the program needed here is on PATH: ``cvmfs_server``, or ``ssh`` when remote."""
        return shutil.which(SSH if self.ssh is not None else CVMFS_SERVER) is not None

    def plan(
        self,
        tarball: Path | None,
        base_dir: str = "versions",
        deletes: Sequence[str] = (),
        catalog: bool = False,
    ) -> list[list[str]]:
        """The argument vectors :meth:`ingest` runs, in order; runs nothing (for --dry-run).

        With a tarball the first two are one pipeline (decompress | ingest); then
        come the empty transaction and the publish that apply .cvmfsdirtab.
        """
        steps: list[list[str]] = []
        if tarball is not None:
            steps.append(decompress_argv(tarball))
        ingest = ingest_argv(
            self.repo,
            base_dir=base_dir,
            deletes=deletes,
            catalog=catalog,
            tar_from_stdin=tarball is not None,
            ssh=self.ssh,
        )
        steps.append(ingest)
        steps.append(transaction_argv(self.repo, self.ssh))
        steps.append(publish_argv(self.repo, self.ssh))
        return steps

    def ingest(
        self,
        tarball: Path | None,
        base_dir: str = "versions",
        deletes: Sequence[str] = (),
        catalog: bool = False,
    ) -> None:
        """Delete ``deletes``, overlay ``tarball`` at ``base_dir``, then publish once more for .cvmfsdirtab.

        A failed publish of the follow-up transaction is aborted (``abort -f``) and
        re-raised.  A failed ``ingest`` or ``transaction`` is not aborted: the open
        transaction may be another publisher's.
        """
        steps = self.plan(tarball, base_dir, deletes, catalog)
        if not self.available():
            if self.ssh is not None:
                raise RepositoryError(
                    f"ssh not found on this machine, so the Stratum 0 {self.ssh} cannot be reached; install "
                    "the OpenSSH client or run on the Stratum 0"
                )
            raise RepositoryError(
                "cvmfs_server not found on this machine; use the embedded backend (default) "
                "or run on a Stratum 0"
            )
        where = f" on {self.ssh}" if self.ssh else ""
        if tarball is not None:
            if not tarball.is_file():
                raise RepositoryError(f"tarball {tarball} does not exist or is not a file; check the path")
            log.info("ingesting %s into %s/%s%s", tarball.name, self.repo, base_dir, where)
            decompress, ingest, transaction, publish = steps
            proc.pipeline(decompress, ingest, timeout=self.ingest_timeout)
        else:
            log.info("deleting %s from %s%s", ", ".join(deletes), self.repo, where)
            ingest, transaction, publish = steps
            proc.run(ingest, timeout=self.ingest_timeout)
        log.info("applying .cvmfsdirtab of %s with an empty transaction and publish", self.repo)
        proc.run(transaction, timeout=self.step_timeout)
        try:
            proc.run(publish, timeout=self.step_timeout)
        except proc.CommandFailed as e:
            log.error("publish of %s failed; aborting its transaction", self.repo)
            try:
                proc.run(abort_argv(self.repo, self.ssh), timeout=ABORT_TIMEOUT)
            except proc.CommandFailed as abort_error:
                raise proc.CommandFailed(
                    f"{e}\nThe abort failed too, so {self.repo} is still in a transaction: run "
                    f"`{shlex.join(abort_argv(self.repo))}` on the Stratum 0 once the cause is fixed.\n"
                    f"{abort_error}",
                    argv=e.argv,
                    returncode=e.returncode,
                    output_tail=e.output_tail,
                ) from e
            raise
