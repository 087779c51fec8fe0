"""The acceptance verdicts on recorded observations: each passes the good one and fails each bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eessi_pipeline.compat.acceptance import (
    LoaderTrace,
    archspec_verdict,
    cpu_expectation,
    host_links_verdict,
    ld_debug_verdict,
    listing_verdict,
    locale_verdict,
    maps_verdict,
    parse_ld_debug,
    parse_list_output,
    python_paths_verdict,
    startprefix_verdict,
    tool_verdict,
)
from eessi_pipeline.compat.rfm_runner import config, report_verdict
from eessi_pipeline.proc import CommandResult

P = "/cvmfs/r/versions/2023.06/compat/linux/x86_64"
LIBC, LDSO = f"{P}/lib/x86_64-linux-gnu/libc.so.6", f"{P}/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def _r(stdout: str = "", stderr: str = "", rc: int = 0) -> CommandResult:
    return CommandResult(("x",), rc, stdout, stderr, 0.1)


def _maps(*paths: str) -> str:
    lines = [
        f"7f00000{i:02d}000-7f00000{i:02d}fff r-xp 00000000 00:20 {100 + i}   {p}"
        for i, p in enumerate(paths)
    ]
    lines += ["7ffd0000-7ffd1000 rw-p 00000000 00:00 0   [stack]", "7ffe0000-7ffe1000 rw-p 00000000 00:00 0"]
    return "\n".join(lines) + "\n"


def test_maps_verdict_accepts_a_layer_process() -> None:
    v = maps_verdict(_maps(f"{P}/bin/cat", LIBC, LDSO, f"{P}/usr/lib/locale/C.utf8/LC_CTYPE"), P)
    assert v.ok and LIBC in v.detail and LDSO in v.detail


@pytest.mark.parametrize(
    ("paths", "reason"),
    [
        (
            (f"{P}/bin/cat", "/lib/x86_64-linux-gnu/libc.so.6", LDSO),
            "libc /lib/x86_64-linux-gnu/libc.so.6 is not the layer's",
        ),
        (
            (f"{P}/bin/cat", LIBC, "/lib64/ld-linux-x86-64.so.2"),
            "loader /lib64/ld-linux-x86-64.so.2 is not the layer's",
        ),
        (
            (f"{P}/bin/cat", LIBC, LDSO, "/usr/lib/locale/C.utf8/LC_CTYPE"),
            "/usr/lib/locale/C.utf8/LC_CTYPE is mapped from outside",
        ),
        ((f"{P}/bin/cat", LDSO), "no libc is mapped"),
        ((), "no file mappings"),
    ],
    ids=["host-libc", "host-loader", "host-data", "no-libc", "empty"],
)
def test_maps_verdict_refuses(paths: tuple[str, ...], reason: str) -> None:
    v = maps_verdict(_maps(*paths), P)
    assert not v.ok and reason in v.detail


def _ld(pid: int, *objects: str) -> LoaderTrace:
    text = "".join(f"     {pid}:\tcalling init: {o}\n" for o in objects)
    return parse_ld_debug(pid, text)


def test_ld_debug_parse_and_verdict() -> None:
    trace = parse_ld_debug(
        7, f"     7:\t  trying file={LIBC}\n     7:\tcalling init: {P}/lib64/ld-linux-x86-64.so.2\n"
    )
    assert trace.loader == f"{P}/lib64/ld-linux-x86-64.so.2" and trace.objects == (
        LIBC,
        f"{P}/lib64/ld-linux-x86-64.so.2",
    )
    good = [
        _ld(10, f"{P}/lib64/ld-linux-x86-64.so.2", LIBC),
        _ld(12, "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"),
    ]  # the host's /bin/sh
    v = ld_debug_verdict(good, P)
    assert v.ok and "1 host program(s)" in v.detail


@pytest.mark.parametrize(
    ("traces", "reason"),
    [
        (
            [_ld(10, f"{P}/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/sasl2/libplain.so")],
            "objects from outside the layer",
        ),
        ([_ld(10, "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6")], "not the layer's"),
        ([], "no debug output"),
    ],
    ids=["dlopen-from-host", "program-run-by-host-loader", "no-output"],
)
def test_ld_debug_verdict_refuses(traces, reason: str) -> None:
    v = ld_debug_verdict(traces, P)
    assert not v.ok and reason in v.detail


LISTING = f"""@@ELF {P}/bin/ls
\tlinux-vdso.so.1 (0x00007ffd)
\tlibselinux.so.1 => {P}/lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f)
\tlibc.so.6 => {LIBC} (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 => {P}/lib64/ld-linux-x86-64.so.2 (0x00007f)
@@RC 0
@@ELF {P}/usr/bin/bad
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\tlibgone.so.1 => not found
@@RC 0
@@ELF {P}/usr/bin/broken
{P}/lib64/ld-linux-x86-64.so.2: cannot open shared object file
@@RC 127
"""


def test_listing_parse_and_verdict() -> None:
    listings = parse_list_output(LISTING)
    assert listings[f"{P}/bin/ls"].libraries[1] == ("libc.so.6", LIBC)
    assert listings[f"{P}/usr/bin/bad"].libraries[1] == ("libgone.so.1", None)
    assert listing_verdict({f"{P}/bin/ls": listings[f"{P}/bin/ls"]}, P, 1).ok
    v = listing_verdict(listings, P, 3)
    assert not v.ok
    assert "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (a host path)" in v.detail
    assert "libgone.so.1 not found" in v.detail and "the loader failed" in v.detail
    assert "only 3 of 5" in listing_verdict(listings, P, 5).detail


def test_startprefix_verdict() -> None:
    good = _r(f"tok\nshell={P}/bin/bash\n", f"Leaving compat layer {P} with exit status 3\n", 3)
    assert startprefix_verdict(good, P, "tok", 3).ok
    assert startprefix_verdict(_r("tok\nshell=/bin/bash\n", good.stderr, 3), P, "tok", 3).detail.startswith(
        "the shell is '/bin/bash'"
    )
    assert (
        "reported exit status 0"
        in startprefix_verdict(_r(good.stdout, good.stderr.replace("3", "0"), 3), P, "tok", 3).detail
    )
    assert "exited 0" in startprefix_verdict(_r(good.stdout, good.stderr, 0), P, "tok", 3).detail
    assert startprefix_verdict(_r(good.stdout, "Leaving Gentoo Prefix with exit status 3", 3), P, "tok", 3).ok


def test_startprefix_verdict_refuses_the_emulator_as_the_shell() -> None:
    """Under qemu-user another process's /proc/<pid>/exe is the emulator: that is not the layer's shell."""
    seen = _r(
        "tok\nshell=/usr/bin/qemu-aarch64-static\n", f"Leaving compat layer {P} with exit status 3\n", 3
    )
    assert "the shell is '/usr/bin/qemu-aarch64-static'" in startprefix_verdict(seen, P, "tok", 3).detail


def test_maps_verdict_refuses_the_kernels_view_of_an_emulated_process() -> None:
    """qemu-user's own /proc/self/maps has only the layer's files; the kernel's view of the same process
    (what another process reads) adds the emulator, which the verdict names as a file from outside."""
    guest = _maps(f"{P}/bin/cat", LDSO, LIBC)
    assert maps_verdict(guest, P).ok
    v = maps_verdict(guest + _maps("/usr/bin/qemu-aarch64-static"), P)
    assert not v.ok and "/usr/bin/qemu-aarch64-static is mapped from outside the layer" in v.detail


def test_cpu_expectation_natively_the_host_under_emulation_the_generic_family() -> None:
    native = cpu_expectation("x86_64", "x86_64", "icelake")
    assert (native.name, native.why) == ("icelake", "this host's microarchitecture")
    emulated = cpu_expectation("aarch64", "x86_64", "icelake")
    assert emulated.name == "aarch64" and "emulated on this x86_64 host" in emulated.why
    init = f"{P}/usr/lib/python3/dist-packages/archspec/__init__.py"
    assert archspec_verdict(_r(f"aarch64\n{init}\n"), emulated.name, P, emulated.why).ok
    tuned = archspec_verdict(_r(f"neoverse_n1\n{init}\n"), emulated.name, P, emulated.why)
    assert not tuned.ok and "expected 'aarch64' (the generic aarch64" in tuned.detail


def test_tool_verdict() -> None:
    ok_trace = [_ld(5, f"{P}/lib64/ld-linux-x86-64.so.2", LIBC)]
    assert tool_verdict(f"{P}/bin/tar\n", _r("tar (GNU tar) 1.34"), "GNU tar", ok_trace, P).ok
    assert "resolves to '/usr/bin/tar'" in tool_verdict("/usr/bin/tar", _r("GNU tar"), "", ok_trace, P).detail
    assert "lacks /GNU tar/" in tool_verdict(f"{P}/bin/tar", _r("bsdtar"), "GNU tar", ok_trace, P).detail
    assert "exited 2" in tool_verdict(f"{P}/bin/tar", _r("", "", 2), "", ok_trace, P).detail


def test_archspec_locale_python_verdicts() -> None:
    init = f"{P}/usr/lib/python3/dist-packages/archspec/__init__.py"
    assert archspec_verdict(_r(f"zen3\n{init}\n"), "zen3", P).ok
    assert (
        "printed 'haswell', expected 'zen3' (this host's microarchitecture)"
        in archspec_verdict(_r(f"haswell\n{init}\n"), "zen3", P).detail
    )
    assert (
        "not from the layer"
        in archspec_verdict(_r("zen3\n/usr/lib/python3/archspec/__init__.py\n"), "zen3", P).detail
    )
    lc = f"{P}/usr/lib/locale/en_US.utf8/LC_CTYPE"
    assert locale_verdict(_r("UTF-8\n" + _maps(lc)), "en_US.UTF-8", P).ok
    assert (
        "does not come from the layer"
        in locale_verdict(
            _r("UTF-8\n" + _maps("/usr/lib/locale/en_US.utf8/LC_CTYPE")), "en_US.UTF-8", P
        ).detail
    )
    assert "not UTF-8" in locale_verdict(_r("ANSI_X3.4-1968\n" + _maps(lc)), "en_US.UTF-8", P).detail
    assert python_paths_verdict(_r(json.dumps(["", f"{P}/usr/lib/python3.11"])), P).ok
    assert (
        "/root/.local" in python_paths_verdict(_r(json.dumps([f"{P}/usr/lib", "/root/.local/lib"])), P).detail
    )


def test_host_links_verdict(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").symlink_to("/etc/passwd")
    (tmp_path / "etc/group").symlink_to("../x/group")
    (tmp_path / "etc/hosts").write_text("")
    assert host_links_verdict(tmp_path, ["/etc/passwd"]).ok
    v = host_links_verdict(tmp_path, ["/etc/passwd", "/etc/group", "/etc/hosts"])
    assert not v.ok and "points to ../x/group" in v.detail and "hosts is not a symlink" in v.detail


def _report(*results: str, num: int | None = None) -> dict:
    cases = [
        {
            "name": f"c{i}",
            "display_name": f"c{i}",
            "result": r,
            "fail_phase": None if r == "pass" else "sanity",
            "fail_reason": None if r == "pass" else "boom",
        }
        for i, r in enumerate(results)
    ]
    return {"session_info": {"num_cases": len(cases) if num is None else num}, "runs": [{"testcases": cases}]}


def test_reframe_report_verdict_needs_cases_and_passes() -> None:
    assert report_verdict(_report("pass", "pass")).ok
    v = report_verdict(_report("pass", "fail"))
    assert not v.ok and "1 of 2 cases failed: c1: sanity: boom" in v.detail
    v = report_verdict(_report())
    assert not v.ok and "ran no test case" in v.detail


def test_reframe_config_is_one_local_partition() -> None:
    cfg = config()
    (system,) = cfg["systems"]
    (part,) = system["partitions"]
    assert (part["scheduler"], part["launcher"], system["modules_system"]) == ("local", "local", "nomod")
    assert part["environs"] == [cfg["environments"][0]["name"]]
