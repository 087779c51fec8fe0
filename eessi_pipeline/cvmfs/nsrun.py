"""Run a command with the repository mounted at ``/cvmfs/<repo>`` in a private mount namespace.

What ``eessi-pipeline client exec -- CMD`` does, like EESSI's container script for machines without a
system-wide client: ``unshare --mount`` (plus ``--user --map-root-user`` when not root) starts this
module, which covers ``/cvmfs`` with an empty tmpfs (the host's ``/cvmfs`` stays as it is), mounts
the verifying FUSE client at ``/cvmfs/<repo>``, runs the command with the caller's terminal, and
unmounts.  Modules and programs see exactly the paths they were built for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import RepositoryError
from .client import ClientConfig, open_client
from .mount import config_from_dict, config_to_dict, mount, umount

COVER = "/cvmfs"
USAGE = "usage: python -m eessi_pipeline.cvmfs.nsrun CONFIG.json STATE_DIR -- COMMAND..."


def namespace_argv(
    python: str, config_file: Path, state_dir: Path, command: list[str], as_root: bool
) -> list[str]:
    """The command line that runs ``command`` beside a private client mount (pure)."""
    user = [] if as_root else ["--user", "--map-root-user"]
    return [
        "unshare", "--mount", "--propagation", "private", *user, "--",
        python, "-m", "eessi_pipeline.cvmfs.nsrun", str(config_file), str(state_dir), "--", *command,
    ]  # fmt: skip


def write_config(config: ClientConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_to_dict(config), indent=2), encoding="utf-8")
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
    open_client(config)[0].close()
    cfg = write_config(config, state_dir / "client" / f"exec-{os.getpid()}.json")
    try:
        argv = namespace_argv(sys.executable, cfg, state_dir, command, as_root)
        return subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, check=False)
    finally:
        cfg.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write(USAGE + "\n")
        return 2
    config = config_from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    state_dir, command = Path(argv[1]), argv[3:]
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", COVER], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        sys.stderr.write(f"client exec: cannot cover {COVER} with a private tmpfs: {done.stderr.strip()}\n")
        return 126
    mountpoint = Path(COVER) / config.repository
    try:
        mount(config, mountpoint, state_dir)
    except RepositoryError as e:
        sys.stderr.write(f"client exec: {e}\n")
        return 126
    try:
        return subprocess.call(command)
    except OSError as e:
        sys.stderr.write(f"client exec: cannot run {command[0]}: {e.strerror}\n")
        return 127
    finally:
        umount(mountpoint, state_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
