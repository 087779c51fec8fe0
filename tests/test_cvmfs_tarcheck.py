"""Tarball validation before ingestion: names, layout, hostile members, archive structure."""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.tarcheck import (
    DEFAULT_MAX_MEMBER_SIZE,
    CheckContext,
    Problem,
    TarballProblems,
    check_member,
    check_tarball,
    normalise_member_name,
    parse_tarball_name,
    printable,
    scan_members,
)
from eessi_pipeline.errors import PipelineError, TarballRejected

VERSION = "2023.06"
SW = f"{VERSION}/software/linux/x86_64/generic"
SW_NAME = f"eessi-{VERSION}-software-linux-x86_64-generic-1700000000.tar.gz"


# -- building tarballs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class M:
    """One member to write: kind is file, dir, sym, link, chr, blk, fifo or raw (``raw_type``)."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int | None = None
    raw_type: bytes = b"V"


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "link": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(members: list[M], *, fmt: int = tarfile.GNU_FORMAT, pax: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape", pax_headers=pax
    ) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES.get(m.kind, m.raw_type)
            info.mode = m.mode if m.mode is not None else (0o755 if m.kind == "dir" else 0o644)
            info.linkname = m.target
            info.mtime = 1700000000
            if m.kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            info.size = len(m.data) if m.kind in ("file", "raw") else 0
            tar.addfile(info, io.BytesIO(m.data) if info.size else None)
    return buf.getvalue()


def write_tarball(
    directory: Path,
    name: str,
    members: list[M],
    *,
    fmt: int = tarfile.GNU_FORMAT,
    pax: dict[str, str] | None = None,
) -> Path:
    data = tar_bytes(members, fmt=fmt, pax=pax)
    path = directory / name
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".tar.gz") else data)
    return path


def software_base() -> list[M]:
    return [
        M(f"{VERSION}", "dir"),
        M(f"{VERSION}/software", "dir"),
        M(f"{VERSION}/software/linux", "dir"),
        M(f"{VERSION}/software/linux/x86_64", "dir"),
        M(SW, "dir"),
        M(f"{SW}/modules/all/GCC", "dir"),
        M(f"{SW}/modules/all/GCC/13.2.0.lua", data=b"-- module\n"),
        M(f"{SW}/software/GCC/13.2.0/bin/gcc", data=b"\x7fELF....", mode=0o755),
    ]


def rejection(path: Path, **kwargs: Any) -> TarballRejected:
    with pytest.raises(TarballRejected) as excinfo:
        check_tarball(path, **kwargs)
    return excinfo.value


def assert_names(message: str, member: str, reason: str) -> None:
    """Some line of ``message`` names ``member`` (as printed) and contains ``reason``."""
    marker = f": {printable(member)}: "
    lines = message.splitlines()
    assert any(marker in line and reason in line for line in lines), (
        f"{marker!r} / {reason!r} not in:\n{message}"
    )


# -- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        (SW_NAME, (VERSION, "software", "linux", "x86_64", ("generic",), 1700000000, ".tar.gz")),
        (
            "eessi-2023.06-software-linux-x86_64-amd-zen4-accel-nvidia-cc90-1700000000.tar.zst",
            (VERSION, "software", "linux", "x86_64", ("amd", "zen4", "accel", "nvidia", "cc90"), 1700000000, ".tar.zst"),
        ),
        (
            "eessi-2023.06-software-linux-aarch64-neoverse_v1-myproject-1744725142.tar",
            (VERSION, "software", "linux", "aarch64", ("neoverse_v1", "myproject"), 1744725142, ".tar"),
        ),
        ("eessi-2023.06-compat-linux-riscv64-1.tar.gz", (VERSION, "compat", "linux", "riscv64", (), 1, ".tar.gz")),
        ("eessi-20240102-compat-macos-aarch64-5.tar.gz", ("20240102", "compat", "macos", "aarch64", (), 5, ".tar.gz")),
        ("eessi-2025.06-init-1700000000.tar.gz", ("2025.06", "init", None, None, (), 1700000000, ".tar.gz")),
        ("eessi-2025.06-scripts-gpu-1700000000.tar.gz", ("2025.06", "scripts", None, None, ("gpu",), 1700000000, ".tar.gz")),
        (
            "eessi-2025.06-init-linux-ppc64le-1700000000.tar.gz",
            ("2025.06", "init", "linux", "ppc64le", (), 1700000000, ".tar.gz"),
        ),
    ],
    ids=["software-generic", "software-accel-zst", "software-dev-project-tar", "compat", "dated-version-macos",
         "init-no-arch", "scripts-rest", "init-with-arch"],
)  # fmt: skip
def test_parse_tarball_name_valid_names_split_into_parts(name: str, fields: tuple[object, ...]) -> None:
    parsed = parse_tarball_name(name)
    got = (parsed.version, parsed.content_type, parsed.os, parsed.arch, parsed.rest, parsed.timestamp)
    assert (*got, parsed.extension) == fields
    assert parsed.filename == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.bz2", "unknown extension"),
        ("eessi-2023.06-software-linux-x86_64-generic-1700000000.tgz", "unknown extension"),
        ("easi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz", "prefix 'easi'"),
        ("eessi-2023.6-software-linux-x86_64-generic-1700000000.tar.gz", "version '2023.6'"),
        ("eessi-2023.13-software-linux-x86_64-generic-1700000000.tar.gz", "version '2023.13'"),
        ("eessi-2023.00-software-linux-x86_64-generic-1700000000.tar.gz", "version '2023.00'"),
        ("eessi-1999.06-software-linux-x86_64-generic-1700000000.tar.gz", "version '1999.06'"),
        ("eessi-20230231-software-linux-x86_64-generic-1700000000.tar.gz", "version '20230231'"),
        ("eessi-2025.06-001-software-linux-x86_64-generic-1700000000.tar.gz", "content type '001'"),
        ("eessi-2023.06-docs-linux-x86_64-1700000000.tar.gz", "content type 'docs'"),
        ("eessi-2023.06-software-windows-x86_64-generic-1700000000.tar.gz", "os 'windows'"),
        ("eessi-2023.06-software-linux-sparc64-generic-1700000000.tar.gz", "arch 'sparc64'"),
        ("eessi-2023.06-compat-1700000000.tar.gz", "no os after 'compat'"),
        ("eessi-2023.06-software-linux-1700000000.tar.gz", "no arch after os 'linux'"),
        ("eessi-2023.06-init-macos-1700000000.tar.gz", "no arch after os 'macos'"),
        ("eessi-2023.06-software-linux-x86_64-generic-17000abc.tar.gz", "timestamp '17000abc'"),
        ("eessi-2023.06-software-linux-x86_64--1700000000.tar.gz", "empty field"),
        ("eessi-2023.06-software-linux-x86_64-gen!ric-1700000000.tar.gz", "part 'gen!ric'"),
        ("eessi-2023.06-1700000000.tar.gz", "too few"),
        ("sub/eessi-2023.06-init-1700000000.tar.gz", "not a plain file name"),
        ("eessi-2023.06-init-17000\n00000.tar.gz", "not a plain file name"),
    ],
    ids=["bz2", "tgz", "prefix", "short-month", "month-13", "month-00", "old-year", "bad-date", "suffix-in-name",
         "unknown-type", "unknown-os", "unknown-arch", "compat-without-os", "os-without-arch",
         "init-os-without-arch", "bad-epoch", "empty-field", "odd-rest", "too-few", "directory", "control-char"],
)  # fmt: skip
def test_parse_tarball_name_bad_name_rejected_with_part_and_form(name: str, fragment: str) -> None:
    with pytest.raises(TarballRejected) as excinfo:
        parse_tarball_name(name)
    message = str(excinfo.value)
    assert printable(name) in message
    assert fragment in message
    assert "expected" in message and "eessi-<version>-<type>" in message
    assert "\n" not in message
    assert isinstance(excinfo.value, PipelineError)


# -- good tarballs --------------------------------------------------------------------------------------


def test_check_tarball_software_tarball_passes_with_counts(tmp_path: Path) -> None:
    members = [
        *software_base(),
        M(f"{SW}/modules/all/GCC/default.lua", "sym", target="13.2.0.lua"),
        M(f"{SW}/software/GCC/13.2.0/bin/cc", "link", target=f"{SW}/software/GCC/13.2.0/bin/gcc"),
        M(f"{SW}/software/GCC/.cvmfscatalog", data=b""),
        M(
            f"{SW}/software/GCC/13.2.0/lib",
            "sym",
            target=f"/cvmfs/software.eessi.io/versions/{VERSION}/compat",
        ),
        M(f"{SW}/top", "sym", target="../../../../../2023.06"),
        M(f"{VERSION}/init", "dir"),
        M(f"{VERSION}/init/bash", data=b"# init\n"),
    ]
    path = write_tarball(tmp_path, SW_NAME, members)
    report = check_tarball(path, repository="software.eessi.io")
    assert report.path == path
    assert report.name == parse_tarball_name(SW_NAME)
    assert report.top_dir == VERSION
    assert report.member_count == len(members)
    assert report.total_size == len(b"-- module\n") + len(b"\x7fELF....") + len(b"# init\n")
    assert report.top_level_paths == (VERSION,)
    assert report.content_roots == (f"{VERSION}/init", f"{VERSION}/software/linux/x86_64")
    assert report.has_cvmfscatalog is True


def test_check_tarball_compat_tarball_passes(tmp_path: Path) -> None:
    prefix = f"{VERSION}/compat/linux/aarch64"
    members = [
        M(prefix, "dir"),
        M(f"{prefix}/startprefix", data=b"#!/bin/sh\n", mode=0o755),
        M(f"{prefix}/usr", "dir"),
    ]
    path = write_tarball(tmp_path, f"eessi-{VERSION}-compat-linux-aarch64-1700000000.tar.gz", members)
    report = check_tarball(path, expected_version=VERSION)
    assert (report.member_count, report.total_size, report.has_cvmfscatalog) == (3, 10, False)
    assert report.content_roots == (prefix,)


def test_check_tarball_init_tarball_without_arch_passes(tmp_path: Path) -> None:
    members = [
        M(f"{VERSION}/init/bash", data=b"x"),
        M(f"{VERSION}/init/arch_specs/eessi_arch_x86.spec", data=b"yz"),
    ]
    path = write_tarball(tmp_path, f"eessi-{VERSION}-init-1700000000.tar.gz", members)
    report = check_tarball(path)
    assert (report.name.os, report.name.arch) == (None, None)
    assert (report.member_count, report.total_size, report.content_roots) == (2, 3, (f"{VERSION}/init",))


def test_check_tarball_plain_scripts_tar_with_dot_slash_names_passes(tmp_path: Path) -> None:
    members = [M(f"./{VERSION}/scripts/", "dir"), M(f"./{VERSION}/scripts/utils.sh", data=b"true\n")]
    path = write_tarball(tmp_path, f"eessi-{VERSION}-scripts-1700000000.tar", members)
    report = check_tarball(path)
    assert report.top_level_paths == (VERSION,)
    assert report.member_count == 2


def test_check_tarball_suffixed_version_directory_passes(tmp_path: Path) -> None:
    members = [M("2025.06-001/init/bash", data=b"x")]
    path = write_tarball(tmp_path, "eessi-2025.06-init-1700000000.tar.gz", members)
    assert check_tarball(path).top_dir == "2025.06-001"
    assert check_tarball(path, expected_version="2025.06-001").top_dir == "2025.06-001"
    assert_names(
        str(rejection(path, expected_version="2025.06")), "2025.06-001/init/bash", "top-level directory"
    )


def test_check_tarball_pax_format_passes(tmp_path: Path) -> None:
    members = [*software_base(), M(f"{SW}/" + "d" * 150 + "/long.lua", data=b"x")]
    path = write_tarball(tmp_path, SW_NAME, members, fmt=tarfile.PAX_FORMAT)
    assert check_tarball(path).member_count == len(members)


# -- whole-tarball rejections ---------------------------------------------------------------------------


def test_check_tarball_expected_version_differs_from_name_rejected(tmp_path: Path) -> None:
    path = write_tarball(tmp_path, SW_NAME, software_base())
    message = str(rejection(path, expected_version="2025.06"))
    assert SW_NAME in message and "'2025.06'" in message and "'2023.06'" in message


def test_check_tarball_empty_tarball_rejected(tmp_path: Path) -> None:
    path = write_tarball(tmp_path, SW_NAME, [])
    error = rejection(path)
    assert isinstance(error, TarballProblems)
    assert error.problems == (Problem(None, "the tarball has no members"),)
    assert f"{SW_NAME}: the tarball has no members" in str(error)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"this is not gzip at all", "cannot be read"),
        (gzip.compress(tar_bytes(software_base()))[:200], "cannot be read"),
        (b"", "cannot be read"),
    ],
    ids=["not-gzip", "truncated", "zero-bytes"],
)
def test_check_tarball_unreadable_archive_rejected(tmp_path: Path, payload: bytes, fragment: str) -> None:
    path = tmp_path / SW_NAME
    path.write_bytes(payload)
    message = str(rejection(path))
    assert SW_NAME in message and fragment in message


def test_check_tarball_plain_tar_truncated_at_member_boundary_rejected(tmp_path: Path) -> None:
    data = tar_bytes([M(f"{VERSION}/init/a", data=b"a"), M(f"{VERSION}/init/b", data=b"b")])
    path = tmp_path / f"eessi-{VERSION}-init-1.tar"
    path.write_bytes(data[: 4 * 512])  # two headers and their data blocks, no end-of-archive marker
    assert "no end-of-archive marker" in str(rejection(path))


def test_check_tarball_trailing_garbage_rejected(tmp_path: Path) -> None:
    data = tar_bytes([M(f"{VERSION}/init/a", data=b"a")])
    path = tmp_path / f"eessi-{VERSION}-init-1.tar"
    path.write_bytes(data[:1024] + b"garbage!" + b"\0" * 2040)
    assert "non-zero data after the last member" in str(rejection(path))


def test_check_tarball_missing_file_rejected(tmp_path: Path) -> None:
    assert "cannot be read" in str(rejection(tmp_path / SW_NAME))


def test_check_tarball_concatenated_archives_rejected(tmp_path: Path) -> None:
    first = tar_bytes(software_base())
    second = tar_bytes([M(f"{SW}/later", data=b"x")])
    path = tmp_path / SW_NAME
    path.write_bytes(gzip.compress(first + second))
    assert_names(str(rejection(path)), f"{SW}/later", "bytes before this member were skipped")


def test_check_tarball_corrupt_header_mid_archive_rejected(tmp_path: Path) -> None:
    members = [M(f"{VERSION}/init/a", data=b"a"), M(f"{VERSION}/init/b", data=b"b"), M(f"{VERSION}/init/c")]
    data = bytearray(tar_bytes(members))
    data[1024 + 148 : 1024 + 156] = b"0000000\0"  # checksum field of the second header
    path = tmp_path / f"eessi-{VERSION}-init-1.tar"
    path.write_bytes(bytes(data))
    assert_names(str(rejection(path)), f"{VERSION}/init/c", "skipped")


def test_check_tarball_global_pax_header_rejected(tmp_path: Path) -> None:
    path = write_tarball(tmp_path, SW_NAME, software_base(), fmt=tarfile.PAX_FORMAT, pax={"comment": "x"})
    message = str(rejection(path))
    assert "global pax header (comment)" in message
    assert "skipped" not in message


def test_check_tarball_zst_without_zstandard_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as where it is not installed: import fails
    path = tmp_path / SW_NAME.replace(".tar.gz", ".tar.zst")
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    message = str(rejection(path))
    assert "zstandard" in message and path.name in message


def test_check_tarball_zst_with_zstandard_passes(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / SW_NAME.replace(".tar.gz", ".tar.zst")
    path.write_bytes(zstandard.ZstdCompressor().compress(tar_bytes(software_base())))
    assert check_tarball(path).member_count == len(software_base())


def test_check_tarball_hostile_tarball_never_extracts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = [
        *software_base(),
        M("../escape", data=b"x"),
        M("/tmp/abs", data=b"x"),
        M(f"{SW}/link", "sym", target="/etc"),
        M(f"{SW}/link/passwd", data=b"x"),
        M(f"{VERSION}/software/linux/x86_64/generic/new", data=b"x"),
    ]
    path = write_tarball(tmp_path, SW_NAME, members)
    monkeypatch.chdir(tmp_path)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}

    before = snapshot()
    rejection(path)
    rejection(path, max_member_size=1)
    assert snapshot() == before


# -- hostile members, one per rule ----------------------------------------------------------------------

_HOSTILE: list[tuple[str, M, str]] = [
    ("absolute", M("/etc/cron.d/evil", data=b"x"), "absolute path"),
    ("absolute-version", M(f"/{SW}/evil", data=b"x"), "absolute path"),
    ("dotdot", M(f"{SW}/../../../../../etc/evil", data=b"x"), "'..' component"),
    ("dotdot-leading", M("../evil", data=b"x"), "'..' component"),
    ("wrong-top", M("2023.07/software/linux/x86_64/generic/x", data=b"x"), "top-level directory '2023.07'"),
    ("mixed-suffix-top", M("2023.06-001/software/linux/x86_64/x", data=b"x"), "differs from '2023.06'"),
    ("archive-root", M("./", "dir"), "empty name"),
    ("wrong-type", M(f"{VERSION}/compat/linux/x86_64/x", data=b"x"), "second-level directory 'compat'"),
    ("wrong-os", M(f"{VERSION}/software/macos/x86_64/x", data=b"x"), "os directory 'macos'"),
    ("wrong-arch", M(f"{VERSION}/software/linux/aarch64/x", data=b"x"), "arch directory 'aarch64'"),
    ("file-at-layout-level", M(f"{VERSION}/software/linux/x86_64/", "sym", target="generic"), "layout directory"),
    ("symlink-escape", M(f"{SW}/esc", "sym", target="../../../../../etc/passwd"), "outside the version directory"),
    ("symlink-to-versions", M(f"{SW}/esc", "sym", target="../../../../.."), "outside the version directory"),
    ("symlink-other-version", M(f"{SW}/esc", "sym", target="../../../../../2023.07/x"), "outside the version"),
    ("symlink-absolute-host", M(f"{SW}/esc", "sym", target="/etc/passwd"), "absolute symlink target"),
    ("symlink-absolute-other-version",
     M(f"{SW}/esc", "sym", target="/cvmfs/software.eessi.io/versions/2023.07/x"), "absolute symlink target"),
    ("symlink-absolute-dotdot",
     M(f"{SW}/esc", "sym", target=f"/cvmfs/software.eessi.io/versions/{VERSION}/../../../../etc"),
     "absolute symlink target"),
    ("symlink-absolute-other-repo",
     M(f"{SW}/esc", "sym", target=f"/cvmfs/other.repo/versions/{VERSION}/x"), "absolute symlink target"),
    ("symlink-empty", M(f"{SW}/esc", "sym", target=""), "empty target"),
    ("symlink-bad-utf8", M(f"{SW}/esc", "sym", target="caf\udce9"), "not valid UTF-8"),
    ("hardlink-missing", M(f"{SW}/hl", "link", target=f"{SW}/nothing"), "not an earlier regular file"),
    ("hardlink-outside", M(f"{SW}/hl", "link", target="/etc/shadow"), "not an earlier regular file"),
    ("hardlink-dotdot", M(f"{SW}/hl", "link", target=f"{SW}/../../../../../etc/shadow"), "not an earlier regular"),
    ("hardlink-to-dir", M(f"{SW}/hl", "link", target=SW), "not an earlier regular file"),
    ("char-device", M(f"{SW}/null", "chr"), "character device"),
    ("block-device", M(f"{SW}/sda", "blk"), "block device"),
    ("fifo", M(f"{SW}/pipe", "fifo"), "fifo"),
    ("unknown-type", M(f"{SW}/vol", "raw", raw_type=b"V", data=b"x"), "unsupported member type"),
    ("setuid", M(f"{SW}/su", data=b"x", mode=0o4755), "sets setuid"),
    ("setgid", M(f"{SW}/sg", data=b"x", mode=0o2755), "sets setgid"),
    ("sticky-dir", M(f"{SW}/tmp", "dir", mode=0o1777), "sets sticky"),
    ("huge", M(f"{SW}/big", data=b"x" * 100), "size 100 exceeds the limit of 64 bytes"),
    ("bad-utf8-name", M(f"{SW}/caf\udce9.lua", data=b"x"), "name is not valid UTF-8"),
    ("control-char-name", M(f"{SW}/a\nb", data=b"x"), "control character"),
    ("catalog-dir", M(f"{SW}/.cvmfscatalog", "dir"), "'.cvmfscatalog' is a directory"),
    ("catalog-symlink", M(f"{SW}/.cvmfscatalog", "sym", target="x"), "'.cvmfscatalog' is a symlink"),
    ("duplicate", M(f"{SW}/modules/all/GCC/13.2.0.lua", data=b"y"), "duplicate of an earlier member"),
    ("duplicate-dot-slash", M(f"./{SW}/modules/all/GCC/13.2.0.lua", data=b"y"), "duplicate of an earlier"),
    ("duplicate-dir-slash", M(f"{SW}/modules/all/GCC/", "dir"), "duplicate of an earlier member"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("member", "reason"), [(m, r) for _, m, r in _HOSTILE], ids=[i for i, _, _ in _HOSTILE]
)
def test_check_tarball_hostile_member_rejected_naming_member_and_reason(
    tmp_path: Path, member: M, reason: str
) -> None:
    path = write_tarball(tmp_path, SW_NAME, [*software_base(), member])
    error = rejection(path, max_member_size=64, repository="software.eessi.io")
    assert isinstance(error, TarballProblems)
    shown = member.name.rstrip("/") if member.kind == "dir" else member.name  # tarfile drops a dir's "/"
    assert_names(str(error), shown, reason)
    assert all(p.member == shown for p in error.problems), error.problems  # base members stay clean


def test_check_tarball_many_problems_all_listed_one_per_line(tmp_path: Path) -> None:
    hostile = [M(f"{SW}/dev{i}", "chr") for i in range(5)] + [M(f"/abs{i}", data=b"x") for i in range(3)]
    path = write_tarball(tmp_path, SW_NAME, [*software_base(), *hostile])
    lines = str(rejection(path)).splitlines()
    assert lines[0].startswith(f"{SW_NAME}: rejected with 8 problem(s)")
    assert len(lines) == 9
    for m in hostile:
        assert_names("\n".join(lines), m.name, "device" if m.kind == "chr" else "absolute")


# -- pure helpers ---------------------------------------------------------------------------------------


def _info(
    name: str, kind: str = "file", target: str = "", mode: int = 0o644, size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = _TYPES[kind], target, mode, size
    return info


CTX = CheckContext(parse_tarball_name(SW_NAME), max_member_size=64, repository="software.eessi.io")


def test_check_member_valid_file_no_problems() -> None:
    assert check_member(_info(f"{SW}/x.lua", size=64), CTX) == []


def test_check_member_oversize_declared_size_reported() -> None:
    assert check_member(_info(f"{SW}/x", size=65), CTX) == ["size 65 exceeds the limit of 64 bytes"]


def test_check_member_hardlink_to_earlier_file_passes() -> None:
    assert check_member(_info(f"{SW}/b", "link", target=f"./{SW}/a"), CTX, frozenset({f"{SW}/a"})) == []


def test_check_member_hardlink_without_earlier_file_rejected() -> None:
    (reason,) = check_member(_info(f"{SW}/b", "link", target=f"{SW}/a"), CTX)
    assert "is not an earlier regular file" in reason


def test_check_member_absolute_symlink_into_other_repo_allowed_without_repository() -> None:
    ctx = CheckContext(CTX.name)
    info = _info(f"{SW}/l", "sym", target=f"/cvmfs/dev.eessi.io/versions/{VERSION}/x")
    assert check_member(info, ctx) == []
    assert check_member(info, CTX) != []


def test_check_member_symlink_to_version_root_passes() -> None:
    assert check_member(_info(f"{SW}/root", "sym", target="../../../.."), CTX) == []


def test_check_member_default_limit_is_8_gib() -> None:
    assert DEFAULT_MAX_MEMBER_SIZE == 8 * 1024**3
    assert check_member(_info(f"{SW}/x", size=8 * 1024**3), CheckContext(CTX.name)) == []


def test_scan_members_hardlink_to_rejected_file_rejected() -> None:
    infos = [_info(f"{SW}/su", mode=0o4755), _info(f"{SW}/hl", "link", target=f"{SW}/su")]
    result = scan_members(infos, CTX)
    assert [p.member for p in result.problems] == [f"{SW}/su", f"{SW}/hl"]


def test_scan_members_hardlink_before_its_target_rejected() -> None:
    infos = [_info(f"{SW}/hl", "link", target=f"{SW}/a"), _info(f"{SW}/a")]
    assert [p.member for p in scan_members(infos, CTX).problems] == [f"{SW}/hl"]


def test_scan_members_no_members_reports_tarball_problem() -> None:
    result = scan_members([], CTX)
    assert result.problems == (Problem(None, "the tarball has no members"),)
    assert (result.member_count, result.top_dir) == (0, None)


@pytest.mark.parametrize(
    ("name", "normalised"),
    [("./a/b/", "a/b"), ("a//./b", "a/b"), ("/a/b", "a/b"), ("././a", "a"), ("a/../b", "a/../b"), ("./", "")],
    ids=["dot-slash-trailing", "inner-dot", "absolute", "repeated-dot", "dotdot-kept", "root"],
)
def test_normalise_member_name_variants_collapse(name: str, normalised: str) -> None:
    assert normalise_member_name(name) == normalised


def test_printable_undecodable_and_control_characters_escaped() -> None:
    assert printable("caf\udce9\n\\x") == "caf\\xe9\\x0a\\\\x"


# -- generated tarballs ---------------------------------------------------------------------------------


def _hostile(kind: str, i: int, valid: list[M]) -> tuple[M, str]:
    """A hostile member of ``kind`` with a unique name, and the reason its line must contain."""
    base = f"{SW}/h{i}"
    table: dict[str, tuple[M, str]] = {
        "traversal": (M(f"{SW}/../../../../../h{i}", data=b"x"), "'..' component"),
        "absolute": (M(f"/h{i}", data=b"x"), "absolute path"),
        "symlink-escape": (M(base, "sym", target=f"../../../../../../h{i}"), "outside the version directory"),
        "symlink-absolute": (M(base, "sym", target=f"/etc/h{i}"), "absolute symlink target"),
        "hardlink-escape": (M(base, "link", target=f"/etc/h{i}"), "not an earlier regular file"),
        "char-device": (M(base, "chr"), "character device"),
        "block-device": (M(base, "blk"), "block device"),
        "fifo": (M(base, "fifo"), "fifo"),
        "setuid": (M(base, data=b"x", mode=0o4755), "setuid"),
        "huge": (M(base, data=b"x" * 65), "exceeds the limit"),
        "bad-utf8": (M(f"{base}-\udcff", data=b"x"), "not valid UTF-8"),
        "duplicate": (M("./" + valid[i % len(valid)].name, data=b"x"), "duplicate"),
    }
    return table[kind]


HOSTILE_KINDS = ["traversal", "absolute", "symlink-escape", "symlink-absolute", "hardlink-escape", "char-device",
                 "block-device", "fifo", "setuid", "huge", "bad-utf8", "duplicate"]  # fmt: skip

valid_files = st.lists(
    st.tuples(st.text("abcdefgh0123456789", min_size=1, max_size=8), st.binary(max_size=16)),
    min_size=1,
    max_size=6,
    unique_by=lambda t: t[0],
).map(lambda pairs: [M(f"{SW}/f-{n}", data=d) for n, d in pairs])


@st.composite
def valid_members(draw: st.DrawFn) -> list[M]:
    """Files, then links to them (a relative symlink and a hard link), all inside the version tree."""
    files = draw(valid_files)
    links = [M(f"{SW}/link-sym", "sym", target=files[0].name.rsplit("/", 1)[1])]
    if draw(st.booleans()):
        links.append(M(f"{SW}/link-hard", "link", target=files[-1].name))
    return [*software_base(), *files, *links]


@st.composite
def hostile_tarballs(draw: st.DrawFn) -> tuple[list[M], list[tuple[M, str]]]:
    members = draw(valid_members())
    kinds = draw(st.lists(st.sampled_from(HOSTILE_KINDS), min_size=1, max_size=3))
    hostile = [_hostile(kind, i, members) for i, kind in enumerate(kinds)]
    for member, _ in hostile:
        # duplicates go last so that the copy, not the original, is the later one
        at = len(members) if member.name.startswith("./") else draw(st.integers(0, len(members)))
        members.insert(at, member)
    return members, hostile


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_tarballs())
def test_check_tarball_generated_hostile_members_rejected_and_each_named(
    tmp_path: Path, case: tuple[list[M], list[tuple[M, str]]]
) -> None:
    members, hostile = case
    path = write_tarball(tmp_path, SW_NAME, members)
    message = str(rejection(path, max_member_size=64))
    for member, reason in hostile:
        assert_names(message, member.name, reason)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=valid_members())
def test_check_tarball_generated_valid_members_pass(tmp_path: Path, members: list[M]) -> None:
    path = write_tarball(tmp_path, SW_NAME, members)
    report = check_tarball(path, max_member_size=64)
    assert report.member_count == len(members)
    assert report.total_size == sum(len(m.data) for m in members if m.kind == "file")
