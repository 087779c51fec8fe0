"""Pack what a build added: only the overlay's upper dir under ``<version>/software/linux/<subdir>/``.

Members are sorted, owned by root (uid/gid 0), relative to the repository's ``versions/`` directory;
overlayfs whiteouts (deletions cannot travel in a tarball, as in EESSI's create_tarball.sh), EasyBuild's
``software/.locks`` and Lmod's ``spiderT.old.*`` are left out.  The ``<tarball>.meta.txt`` file is
EESSI's upload metadata: payload (filename, size, ctime, sha256sum, url), uploader, and a link to the
pipeline run.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cvmfs.tarname import software_tarball
from ..errors import BuildError
from ..fileio import file_sha256

SKIPPED_DIRS = ("software/.locks",)


def tarball_name(version: str, subdir: str, epoch: int) -> str:
    """``eessi-<version>-software-linux-<subdir with / as ->-<epoch>.tar.gz`` (pure)."""
    return software_tarball(version, subdir, epoch)


def _skip(rel: str, st: os.stat_result) -> bool:
    base = rel.rsplit("/", 1)[-1]
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlayfs whiteout
        return True
    return base.startswith((".wh.", "spiderT.old"))


def new_members(upper: Path, version: str, subdir: str) -> Iterator[tuple[str, Path]]:
    """``(member name, path)`` of every entry the build added for the target, sorted by name."""
    top = upper / "versions"
    base = top / version / "software" / "linux" / subdir
    if not base.is_dir():
        raise BuildError(f"the build added nothing under {base}; check the EasyBuild log")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        rel_dir = d.relative_to(base).as_posix()
        dirnames[:] = [n for n in dirnames if (f"{rel_dir}/{n}" if rel_dir != "." else n) not in SKIPPED_DIRS]
        for name in [*dirnames, *filenames]:
            p = d / name
            st = p.lstat()
            if not _skip(name, st):
                found.append((p.relative_to(top).as_posix(), p))
    found.sort()
    yield from found


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def write_tarball(upper: Path, version: str, subdir: str, dest: Path) -> int:
    """Write the tarball; return its member count."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    count = 0
    with tarfile.open(part, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for name, path in new_members(upper, version, subdir):
            info = _normalise(tar.gettarinfo(str(path), arcname=name))
            if info.isfile():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir() or info.issym():
                tar.addfile(info)
            else:
                raise BuildError(f"{path}: neither file, directory nor symlink; remove it from the build")
            count += 1
    part.replace(dest)
    return count


def run_link(environ: Mapping[str, str]) -> str:
    """The pipeline run's URL on GitHub Actions, else ``$EESSI_PIPELINE_RUN_URL``, else empty (pure)."""
    if environ.get("GITHUB_RUN_ID") and environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{environ['GITHUB_REPOSITORY']}/actions/runs/{environ['GITHUB_RUN_ID']}"
    return environ.get("EESSI_PIPELINE_RUN_URL", "")


def metadata(tarball: Path, environ: Mapping[str, str], url: str = "") -> dict[str, Any]:
    st = tarball.stat()
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = "127.0.0.1"
    return {
        "meta_version": 1,
        "payload": {
            "filename": tarball.name,
            "size": str(st.st_size),
            "ctime": datetime.datetime.fromtimestamp(st.st_ctime, datetime.UTC).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            ),
            "sha256sum": file_sha256(tarball),
            "url": url,
        },
        "uploader": {"username": getpass.getuser(), "ip": ip, "hostname": socket.gethostname()},
        "link2run": {"url": run_link(environ)},
    }


@dataclass(frozen=True, slots=True)
class Packed:
    tarball: Path
    meta: Path
    members: int


def pack(
    upper: Path, version: str, subdir: str, outdir: Path, epoch: int, environ: Mapping[str, str]
) -> Packed:
    dest = outdir / tarball_name(version, subdir, epoch)
    members = write_tarball(upper, version, subdir, dest)
    meta = dest.with_name(dest.name + ".meta.txt")
    meta.write_text(json.dumps(metadata(dest, environ), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Packed(dest, meta, members)
