"""The target's software tarball, per target (``pytest -m arch_<target>``; slow: it builds or reuses).

The tarball the gate will judge: it passes the repository's checks, installs only under the
target's subdir, holds a Lua module for every easystack entry, and its ``.meta.txt`` describes
exactly these bytes.  The test announces the tarball to the gate (``--eessi-gate``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import pytest

from eessi_pipeline.compat.elf import MACHINES, parse_elf
from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.gate.publish import software_roots
from eessi_pipeline.gate.pytest_gate import announce
from eessi_pipeline.settings import DEFAULT_REPOSITORY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]


def test_software_tarball_is_complete_and_in_place(software_target, software_build, request) -> None:
    built = software_build(software_target.name)
    announce(request.node, built.tarball, None)
    report = check_tarball(built.tarball, repository=DEFAULT_REPOSITORY)
    assert report.name.content_type == "software"
    with tarfile.open(built.tarball) as tar:
        names = tar.getnames()
    subdir_root = f"{built.plan.version}/software/linux/{software_target.subdir}"
    assert software_roots(names, built.plan.version) == (subdir_root,)
    modules = {
        n.removeprefix(f"{subdir_root}/modules/all/")
        for n in names
        if n.endswith(".lua") and "/modules/all/" in n
    }
    for module in built.plan.stack.modules:
        assert f"{module}.lua" in modules, f"{module} has no module file in {built.tarball.name}"
    assert any(n.startswith(f"{subdir_root}/.lmod/cache/") for n in names), "no Lmod spider cache"


def test_software_tarball_metadata_matches(software_target, software_build) -> None:
    built = software_build(software_target.name)
    meta = json.loads(built.meta.read_text(encoding="utf-8"))
    payload = meta["payload"]
    assert payload["filename"] == built.tarball.name
    assert (
        int(payload["size"]) == built.tarball.stat().st_size
    )  # a string, as EESSI's upload script writes it
    assert payload["sha256sum"] == hashlib.sha256(built.tarball.read_bytes()).hexdigest()


def test_software_tarball_elf_files_are_all_of_the_target_family(software_target, software_build) -> None:
    """Every ELF file of the tarball is code for the target's CPU family (``e_machine``): an aarch64
    stack built on an x86_64 host under emulation holds no x86_64 file, and the other way round."""
    built = software_build(software_target.name)
    wanted = MACHINES[software_target.family]
    machines: dict[str, int] = {}
    with tarfile.open(built.tarball) as tar:
        for member in tar:
            if not member.isfile() or member.size < 64:
                continue
            fh = tar.extractfile(member)
            head = fh.read(4) if fh is not None else b""
            if head != b"\x7fELF" or fh is None:
                continue
            info = parse_elf(head + fh.read())
            machines[member.name] = info.machine if info is not None else -1
    assert machines, f"no ELF file in {built.tarball.name}"
    wrong = {name: m for name, m in machines.items() if m != wanted}
    assert not wrong, (
        f"{len(wrong)} of {len(machines)} ELF files are not {software_target.family} ({wanted}): {sorted(wrong.items())[:5]}"
    )
