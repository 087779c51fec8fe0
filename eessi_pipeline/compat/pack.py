"""Pack a staged layer as ``eessi-<version>-compat-linux-<family>-<epoch>.tar.gz`` with its ``.meta.txt``.

Members are ``<version>/compat/linux/<family>/…``, what ``repo ingest`` (base dir
``versions``) and EESSI's ``ingest-tarball.sh`` expect; owners are root, modes lose
setuid/setgid/sticky bits, hard links stay hard links.  The tarball is then checked
with :func:`eessi_pipeline.cvmfs.tarcheck.check_tarball`, the check every ingest runs,
so a layer that could not be published is refused here already.  The ``.meta.txt`` is
JSON as EESSI's upload writes it: ``payload`` (filename, size, ctime, sha256sum, url)
and ``uploader`` (username, ip, hostname).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import stat
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cvmfs.tarcheck import check_tarball
from ..errors import CompatError, TarballRejected
from ..fileio import file_sha256
from .layout import LayerSpec

log = logging.getLogger(__name__)

COMPRESSLEVEL = 6
_SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


@dataclass(frozen=True, slots=True)
class Uploader:
    username: str
    ip: str
    hostname: str

    @classmethod
    def from_host(cls) -> Uploader:
        hostname = socket.gethostname()
        try:
            ip = socket.gethostbyname(hostname)
        except OSError:
            ip = "127.0.0.1"
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(user, ip, hostname)


@dataclass(frozen=True, slots=True)
class Packed:
    tarball: Path
    meta: Path
    size: int
    sha256: str
    members: int


def meta_json(
    filename: str, size: int, ctime: int, sha256: str, url: str, uploader: Uploader
) -> dict[str, Any]:
    """The ``.meta.txt`` document (pure)."""
    return {
        "payload": {"filename": filename, "size": size, "ctime": ctime, "sha256sum": sha256, "url": url},
        "uploader": {"username": uploader.username, "ip": uploader.ip, "hostname": uploader.hostname},
    }


def meta_path(tarball: Path) -> Path:
    return tarball.with_name(tarball.name + ".meta.txt")


def _member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= ~_SPECIAL
    return info


def pack_layer(
    spec: LayerSpec,
    *,
    epoch: int | None = None,
    url_base: str | None = None,
    uploader: Uploader | None = None,
    into: Path | None = None,
) -> Packed:
    """Write the tarball and its ``.meta.txt`` for the staged layer of ``spec``; check the tarball."""
    if not (spec.staging / "startprefix").is_file():
        raise CompatError(f"no complete layer at {spec.staging}; run `eessi-pipeline compat build` first")
    stamp = int(time.time()) if epoch is None else epoch
    out_dir = into or spec.tarball_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tarball = out_dir / spec.tarball_name(stamp)
    tmp = tarball.with_name(tarball.name + ".part")
    parts = spec.relpath.split("/")
    with tarfile.open(tmp, "w:gz", compresslevel=COMPRESSLEVEL, format=tarfile.PAX_FORMAT) as tar:
        for depth in range(1, len(parts)):  # 2023.06, 2023.06/compat, 2023.06/compat/linux
            d = tarfile.TarInfo("/".join(parts[:depth]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, stamp
            tar.addfile(_member(d))
        tar.add(spec.staging, arcname=spec.relpath, recursive=True, filter=_member)
        count = len(tar.getmembers())
    tmp.replace(tarball)
    try:
        report = check_tarball(tarball, expected_version=spec.version)
    except TarballRejected as e:
        tarball.unlink(missing_ok=True)
        raise CompatError(
            f"the packed layer would be refused at ingest, so the tarball was deleted:\n{e}\n"
            "fix the layer's build (the package set or the relocation) and build again"
        ) from e
    size = tarball.stat().st_size
    digest = file_sha256(tarball)
    url = f"{url_base.rstrip('/')}/{tarball.name}" if url_base else tarball.resolve().as_uri()
    meta = meta_json(
        tarball.name, size, int(tarball.stat().st_ctime), digest, url, uploader or Uploader.from_host()
    )
    mpath = meta_path(tarball)
    mpath.write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")
    log.info("packed %s: %d members, %d bytes", tarball.name, report.member_count, size)
    return Packed(tarball, mpath, size, digest, count)


def read_meta(path: Path) -> Mapping[str, Any]:
    data: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
