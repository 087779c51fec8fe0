"""ELF reading and relocation decisions (pure), and patchelf / symlink / #! / text relocation on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from eessi_pipeline.compat.elf import ElfInfo, parse_elf, read_elf
from eessi_pipeline.compat.relocate import (
    ElfFile,
    PatchAction,
    apply_patches,
    clear_special_bits,
    library_index,
    patchelf_batches,
    plan_elf_patches,
    relative_target,
    relocate_text_content,
    relocate_text_files,
    rewrite_absolute_symlinks,
    rewrite_shebangs,
    shebang_interpreter,
)

P = "/cvmfs/r/versions/2023.06/compat/linux/x86_64"
T = "x86_64-linux-gnu"


def test_elf_reads_a_host_executable() -> None:
    info = read_elf(Path("/bin/true"))
    assert info is not None and info.interpreter and info.interpreter.endswith(".so.2")
    assert "libc.so.6" in info.needed and info.dynamic


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x7fELF",
        b"#!/bin/sh\n" * 10,
        b"\x7fELF\x09\x01" + b"\0" * 100,
        b"\x7fELF\x02\x01\x01" + b"\xff" * 200,
    ],
    ids=["empty", "magic-only", "script", "bad-class", "garbage"],
)
def test_elf_malformed_input_gives_none(data: bytes) -> None:
    assert parse_elf(data) is None


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        (
            "lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        ("etc/rmt", "/usr/sbin/rmt", "../usr/sbin/rmt"),
        ("top", "/usr/bin/x", "usr/bin/x"),
        ("usr/lib/ssl/certs", "/etc/ssl/certs", "../../../etc/ssl/certs"),
    ],
    ids=["loader", "etc", "top-level", "deep"],
)
def test_relocate_relative_target_stays_inside(link: str, target: str, expected: str) -> None:
    assert relative_target(link, target) == expected


def _info(interp=None, needed=(), soname=None, runpath=()) -> ElfInfo:
    return ElfInfo(3, 62, interp, tuple(needed), soname, tuple(runpath), (), True)


def test_relocate_plan_sets_interpreter_and_runpath_and_leaves_glibc_alone() -> None:
    elves = [
        ElfFile("bin/bash", _info("/lib64/ld-linux-x86-64.so.2", ["libtinfo.so.6", "libc.so.6"])),
        ElfFile(
            "usr/lib/x/lua/posix.so", _info(None, ["libcrypt.so.1"], runpath=["$ORIGIN/..", "/usr/lib/lmod"])
        ),
        ElfFile("usr/lib/lmod/tcl2lua.so", _info(None, ["libtcl8.6.so"])),
        ElfFile(
            f"lib/{T}/libc.so.6", _info("/lib64/ld-linux-x86-64.so.2", ["ld-linux-x86-64.so.2"], "libc.so.6")
        ),
        ElfFile(f"lib/{T}/ld-linux-x86-64.so.2", _info(None, [], "ld-linux-x86-64.so.2")),
        ElfFile("sbin/ldconfig", _info(None, [])),
    ]
    index = {
        "libtinfo.so.6": [f"lib/{T}"],
        "libc.so.6": [f"lib/{T}"],
        "libcrypt.so.1": [f"lib/{T}"],
        "libtcl8.6.so": [f"usr/lib/{T}/tcl8.6"],
    }
    dirs = {f"lib/{T}", f"usr/lib/{T}", "lib", "usr/lib"}
    actions, problems = plan_elf_patches(elves, index, P, T, dirs)
    by = {a.rel: a for a in actions}
    assert problems == []
    assert set(by) == {"bin/bash", "usr/lib/x/lua/posix.so", "usr/lib/lmod/tcl2lua.so"}
    assert by["bin/bash"].interpreter == P + "/lib64/ld-linux-x86-64.so.2"
    assert by["bin/bash"].runpath == f"{P}/lib/{T}:{P}/usr/lib/{T}:{P}/lib:{P}/usr/lib"
    assert by["usr/lib/x/lua/posix.so"].interpreter is None
    assert by["usr/lib/x/lua/posix.so"].runpath.startswith(f"$ORIGIN/..:{P}/usr/lib/lmod:{P}/lib/{T}")
    assert by["usr/lib/lmod/tcl2lua.so"].runpath.startswith(f"{P}/usr/lib/{T}/tcl8.6:")


def test_relocate_plan_reports_a_library_missing_from_the_layer() -> None:
    _, problems = plan_elf_patches(
        [ElfFile("bin/x", _info("/lib64/ld.so.2", ["libgone.so.1"]))], {}, P, T, set()
    )
    assert problems == ["bin/x needs libgone.so.1, which is nowhere in the layer"]


def test_relocate_patchelf_batches_group_identical_changes(tmp_path: Path) -> None:
    acts = [PatchAction("a", "/i", "/r"), PatchAction("b", "/i", "/r"), PatchAction("c", None, "/r")]
    argvs = patchelf_batches(acts, "patchelf", tmp_path)
    assert argvs == [
        ["patchelf", "--set-rpath", "/r", str(tmp_path / "c")],
        [
            "patchelf",
            "--set-interpreter",
            "/i",
            "--set-rpath",
            "/r",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
        ],
    ]


@pytest.mark.skipif(shutil.which("patchelf") is None, reason="patchelf is not installed")
def test_relocate_apply_patches_changes_real_binaries(tmp_path: Path) -> None:
    shutil.copy("/bin/true", tmp_path / "true")
    os.link(tmp_path / "true", tmp_path / "hardlink")  # patched once, not twice at the same time
    (tmp_path / "true").chmod(0o555)
    apply_patches(
        [
            PatchAction("true", "/opt/layer/lib64/ld.so", "/opt/layer/lib"),
            PatchAction("hardlink", "/opt/layer/lib64/ld.so", "/opt/layer/lib"),
        ],
        tmp_path,
        "patchelf",
        2,
    )
    info = read_elf(tmp_path / "hardlink")
    assert (
        info is not None
        and info.interpreter == "/opt/layer/lib64/ld.so"
        and info.runpath == ("/opt/layer/lib",)
    )


def test_relocate_library_index_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libz.so.1.2").write_bytes(b"x")
    (tmp_path / "lib" / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "ld.so").symlink_to("/lib/libz.so.1.2")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")
    assert library_index(tmp_path)["libz.so.1"] == ["lib"]
    changes = rewrite_absolute_symlinks(tmp_path, keep={"etc/passwd"})
    assert changes == [("lib64/ld.so", "/lib/libz.so.1.2", "../lib/libz.so.1.2")]
    assert (tmp_path / "lib64" / "ld.so").resolve() == (tmp_path / "lib" / "libz.so.1.2").resolve()
    assert os.readlink(tmp_path / "etc" / "passwd") == "/etc/passwd"


def test_relocate_shebangs_get_the_prefix_when_the_interpreter_is_in_the_layer(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").write_text("")
    (tmp_path / "s1").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "s2").write_text("#! /usr/bin/perl -w\n")
    (tmp_path / "s3").write_text(f"#!{P}/bin/sh\n")
    changed, missing = rewrite_shebangs(tmp_path, P)
    assert changed == 1 and missing == [("s2", "/usr/bin/perl")]
    assert (tmp_path / "s1").read_text() == f"#!{P}/bin/sh\necho hi\n"
    assert shebang_interpreter(b"#!  /usr/bin/env python3\n") == "/usr/bin/env"
    assert shebang_interpreter(b"#!python\n") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'local x = "/usr/share/lua/5.3/?.lua;/usr/lib/x/?.so"',
            f'local x = "{P}/usr/share/lua/5.3/?.lua;{P}/usr/lib/x/?.so"',
        ),
        ("export LMOD_PKG=/usr/share/lmod/lmod", f"export LMOD_PKG={P}/usr/share/lmod/lmod"),
        (f"already {P}/usr/bin/x", f"already {P}/usr/bin/x"),
        ("$dir/usr/bin and x/etc/y and /usrx/ and /etc", "$dir/usr/bin and x/etc/y and /usrx/ and /etc"),
    ],
    ids=["lua-paths", "shell", "already-relocated", "not-paths"],
)
def test_relocate_text_content(text: str, expected: str) -> None:
    assert relocate_text_content(text, P) == expected


def test_relocate_text_files_globs_with_double_star(tmp_path: Path) -> None:
    d = tmp_path / "usr/share/lmod/8/init"
    d.mkdir(parents=True)
    (d / "bash").write_text("source /usr/share/lmod/lmod/init/x\n")
    (d / "bin").write_bytes(b"\0/usr/share")
    assert relocate_text_files(tmp_path, P, ["usr/share/lmod/**"]) == ["usr/share/lmod/8/init/bash"]
    assert (d / "bin").read_bytes() == b"\0/usr/share"


def test_relocate_special_bits_are_cleared(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o3775)
    (tmp_path / "f").write_text("")
    (tmp_path / "f").chmod(0o4755)
    assert sorted(clear_special_bits(tmp_path)) == ["d", "f"]
    assert (tmp_path / "f").stat().st_mode & 0o7777 == 0o755
