"""Run a command with the repository mounted at ``/cvmfs/<repo>`` in a private mount namespace.

What ``eessi-pipeline client exec -- CMD`` does, like EESSI's container script for machines without a
system-wide client: ``unshare --mount`` (plus ``--user --map-root-user`` when not root) starts
:mod:`eessi_pipeline.nslaunch` with the plan :func:`mount_plan`, which covers ``/cvmfs`` with an empty
tmpfs (the host's ``/cvmfs`` stays as it is), mounts the verifying FUSE client at ``/cvmfs/<repo>``,
runs the command with the caller's terminal, and unmounts.  Modules and programs see exactly the
paths they were built for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .. import nslaunch
from ..errors import RepositoryError
from ..nslaunch import Mount, Spec
from .client import ClientConfig, open_client
from .mount import config_to_dict, fuse_support

COVER = "/cvmfs"
DEV_FUSE = "/dev/fuse"


def mount_plan(python: str, config_file: Path, mountpoint: str, log_file: Path) -> Spec:
    """The launcher's plan (pure): a tmpfs over ``/cvmfs``, then the client's FUSE daemon at
    ``mountpoint``."""
    daemon = (python, "-m", "eessi_pipeline.cvmfs.mount", str(config_file), mountpoint)
    return Spec(
        (Mount("tmpfs", COVER), Mount("fuse", mountpoint, argv=daemon, log=str(log_file), new_session=True)),
    )


def namespace_argv(
    python: str, config_file: Path, state_dir: Path, command: list[str], as_root: bool, repository: str
) -> list[str]:
    """The command line that runs ``command`` beside a private client mount (pure)."""
    user = [] if as_root else ["--user", "--map-root-user"]
    mountpoint = f"{COVER}/{repository}"
    log_file = state_dir / "client" / f"{mountpoint.strip('/').replace('/', '_')}.log"  # as mount.mount's
    plan = mount_plan(python, config_file, mountpoint, log_file)
    return [
        "unshare", "--mount", "--propagation", "private", *user, "--",
        *nslaunch.command_line(plan, command, python),
    ]  # fmt: skip


def write_config(config: ClientConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**config_to_dict(config), "refresh": None}, indent=2), encoding="utf-8")
    return path


def prepare_cover(as_root: bool) -> None:
    """``/cvmfs`` must exist as a mount point for the private tmpfs."""
    if os.path.isdir(COVER):
        return
    if not as_root:
        raise RepositoryError(
            f"{COVER} does not exist and only root can create it: ask for `mkdir {COVER}` once"
        )
    os.makedirs(COVER, exist_ok=True)


def run_mounted(
    config: ClientConfig,
    state_dir: Path,
    command: list[str],
    *,
    capture: bool = False,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``config``'s repository mounted privately at ``/cvmfs/<repo>``.

    The client is tried first (a refusal names its reason before any namespace is made); with
    ``capture`` the output is returned, else the command uses the caller's terminal.
    """
    as_root = os.geteuid() == 0
    prepare_cover(as_root)
    if not fuse_support():
        raise RepositoryError(
            "FUSE support is missing: install the Debian package fuse3 and `pip install mfusepy`"
        )
    if not Path(DEV_FUSE).exists():
        raise RepositoryError(f"{DEV_FUSE} does not exist: this machine cannot mount FUSE file systems")
    open_client(config)[0].close()
    cfg = write_config(config, state_dir / "client" / f"exec-{os.getpid()}.json")
    try:
        argv = namespace_argv(sys.executable, cfg, state_dir, command, as_root, config.repository)
        return subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, check=False)
    finally:
        cfg.unlink(missing_ok=True)
