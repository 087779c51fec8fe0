"""The tarball check's allow-list: a compat layer may link to exactly the listed host files from its etc."""

from __future__ import annotations

import tarfile

import pytest

from eessi_pipeline.cvmfs.tarcheck import COMPAT_HOST_FILES, CheckContext, check_member, parse_tarball_name

COMPAT = "2023.06/compat/linux/x86_64"


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    return info


def _ctx(kind: str) -> CheckContext:
    sub = "-amd-zen3" if kind == "software" else ""
    return CheckContext(parse_tarball_name(f"eessi-2023.06-{kind}-linux-x86_64{sub}-1700000000.tar.gz"))


@pytest.mark.parametrize("host", sorted(COMPAT_HOST_FILES))
def test_compat_host_link_in_etc_is_allowed(host: str) -> None:
    assert check_member(_link(f"{COMPAT}/etc/{host.rsplit('/', 1)[1]}", host), _ctx("compat")) == []


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (f"{COMPAT}/etc/shadow", "/etc/shadow"),
        (f"{COMPAT}/etc/passwd", "/etc/../etc/passwd"),
        (f"{COMPAT}/etc/passwd", "/etc/passwd/"),
        (f"{COMPAT}/usr/passwd", "/etc/passwd"),
        (f"{COMPAT}/etc/sub/passwd", "/etc/passwd"),
        (f"{COMPAT}/bin/sh", "/bin/sh"),
    ],
    ids=["not-listed", "dotdot", "trailing-slash", "outside-etc", "etc-subdir", "host-binary"],
)
def test_compat_other_absolute_links_are_rejected(name: str, target: str) -> None:
    problems = check_member(_link(name, target), _ctx("compat"))
    assert any("absolute symlink target" in p for p in problems), problems


def test_compat_host_link_allowance_is_for_compat_tarballs_only() -> None:
    sw = "2023.06/software/linux/x86_64/amd/zen3/etc/passwd"
    assert any(
        "absolute symlink target" in p for p in check_member(_link(sw, "/etc/passwd"), _ctx("software"))
    )
