"""EESSI's tarball names, written in one place (parsing and checking them is ``cvmfs.tarcheck``).

``eessi-<version>-<type>[-<os>-<arch…>]-<epoch>.tar.gz``, with a subdirectory's ``/`` written as
``-``: ``eessi-2023.06-software-linux-x86_64-amd-zen3-1700000000.tar.gz``,
``eessi-2023.06-software-linux-x86_64-amd-zen4-accel-nvidia-cc90-1700000000.tar.gz``,
``eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz``, ``eessi-2023.06-init-1700000000.tar.gz``.
"""

from __future__ import annotations

OS = "linux"
EPOCH_PLACEHOLDER = "<epoch seconds>"


def software_tarball(version: str, subdir: str, epoch: int | str) -> str:
    """A software layer's tarball for ``subdir`` (``x86_64/amd/zen3`` or ``…/accel/nvidia/cc90``)."""
    return f"eessi-{version}-software-{OS}-{subdir.replace('/', '-')}-{epoch}.tar.gz"


def compat_tarball(version: str, family: str, epoch: int | str) -> str:
    return f"eessi-{version}-compat-{OS}-{family}-{epoch}.tar.gz"


def init_tarball(version: str, epoch: int | str) -> str:
    return f"eessi-{version}-init-{epoch}.tar.gz"
