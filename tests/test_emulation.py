"""Emulation as a build/test runtime: binfmt_misc entries, the build-node verdict, check-node and plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eessi_pipeline.arch.cpuinfo import HostCpu
from eessi_pipeline.arch.emulation import (
    Emulator,
    elf_header,
    emulation_enabled,
    emulation_problem,
    emulators_for,
    entry_for,
    parse_binfmt_entry,
    parse_qemu_version,
    probe,
    read_entries,
)
from eessi_pipeline.arch.select import check_build_node, require_build_node
from eessi_pipeline.errors import BuildNodeError, UsageError
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.plan import make_plan

MATRIX = load_matrix()

# What the kernel shows for Debian's qemu-user-static 7.2 entry (read on this project's x86_64 machine).
DEBIAN_ENTRY = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""

QEMU_AARCH64 = Emulator("aarch64", "/usr/bin/qemu-aarch64-static", "7.2.22", "qemu-aarch64", True)
X86_HOST = HostCpu("x86_64", "GenuineIntel", frozenset({"sse2", "avx2"}), model_name="Xeon test host")


def _registered_aarch64() -> Emulator | None:
    try:
        return probe("aarch64")
    except BuildNodeError:
        return None


def test_debian_entry_parses_and_takes_aarch64_executables_only() -> None:
    e = parse_binfmt_entry("qemu-aarch64", DEBIAN_ENTRY)
    assert e.enabled and e.fix_binary
    assert e.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert e.matches(elf_header(183))  # aarch64 executable
    shared_object = elf_header(183)[:16] + b"\x03\x00" + elf_header(183)[18:]
    assert e.matches(shared_object)  # ET_DYN (PIE) too: the mask clears the low bit of e_type
    assert not e.matches(elf_header(62))  # x86_64
    assert not e.matches(b"\x7fELF")  # too short to judge
    assert entry_for("aarch64", [e]) == e
    assert entry_for("riscv64", [e]) is None


def test_entry_without_fix_binary_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "register").write_text("")
    e = parse_binfmt_entry("qemu-aarch64", DEBIAN_ENTRY.replace("flags: POF", "flags: P"))
    problem = emulation_problem("aarch64", e, tmp_path)
    assert "lacks the fix-binary flag (F)" in problem and "setup.sh" in problem


def test_disabled_entry_does_not_count() -> None:
    e = parse_binfmt_entry("qemu-aarch64", DEBIAN_ENTRY.replace("enabled", "disabled"))
    assert entry_for("aarch64", [e]) is None


def test_unmounted_binfmt_misc_is_named(tmp_path: Path) -> None:
    assert read_entries(tmp_path / "absent") == []
    problem = emulation_problem("aarch64", None, tmp_path)
    assert "binfmt_misc is not mounted" in problem and str(tmp_path) in problem
    with pytest.raises(BuildNodeError, match="not mounted"):
        probe("aarch64", tmp_path)


def test_entries_are_read_from_a_table(tmp_path: Path) -> None:
    (tmp_path / "register").write_text("")
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "qemu-aarch64").write_text(DEBIAN_ENTRY)
    (tmp_path / "python3.11").write_text(
        "enabled\ninterpreter /usr/bin/python3.11\nflags: \nmagic a70d0d0a\n"
    )
    entries = read_entries(tmp_path)
    assert [x.name for x in entries] == ["python3.11", "qemu-aarch64"]
    assert emulation_problem("aarch64", entry_for("aarch64", entries), tmp_path) == ""


def test_qemu_version_line() -> None:
    assert parse_qemu_version("qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n") == "7.2.22"
    assert parse_qemu_version("something else") == ""
    assert QEMU_AARCH64.label == "qemu-aarch64 7.2"


def test_generic_target_of_another_family_builds_emulated() -> None:
    v = check_build_node(X86_HOST, MATRIX.target("aarch64_generic"), MATRIX, {"aarch64": QEMU_AARCH64})
    assert v.ok and v.emulated_by == "qemu-aarch64 7.2"
    native = check_build_node(X86_HOST, MATRIX.target("x86_64_generic"), MATRIX, {"aarch64": QEMU_AARCH64})
    assert native.ok and native.emulated_by == ""


def test_tuned_target_of_another_family_needs_a_native_node() -> None:
    v = check_build_node(X86_HOST, MATRIX.target("neoverse_n1"), MATRIX, {"aarch64": QEMU_AARCH64})
    assert not v.ok
    assert "tuned targets are built natively only" in v.reasons[0]


def test_without_emulator_the_refusal_says_how_to_get_one() -> None:
    assert not check_build_node(X86_HOST, MATRIX.target("aarch64_generic"), MATRIX, {}).ok
    with pytest.raises(BuildNodeError) as e:
        require_build_node(X86_HOST, MATRIX.target("aarch64_generic"), MATRIX, None, {})
    assert "qemu-user-static" in str(e.value) and "ubuntu-24.04-arm" in str(e.value)


def test_emulation_setting() -> None:
    assert emulation_enabled({})
    assert not emulation_enabled({"EESSI_PIPELINE_EMULATION": "off"})
    with pytest.raises(UsageError, match="auto or off"):
        emulation_enabled({"EESSI_PIPELINE_EMULATION": "yes"})
    assert (
        emulators_for(X86_HOST, MATRIX.target("aarch64_generic"), {"EESSI_PIPELINE_EMULATION": "off"}) == {}
    )
    assert emulators_for(X86_HOST, MATRIX.target("x86_64_generic"), {}) == {}  # same family: no probing


def test_plan_marks_emulated_steps() -> None:
    plan = make_plan(
        MATRIX,
        MATRIX.target("aarch64_generic"),
        None,
        "software.eessi.local",
        X86_HOST,
        {"aarch64": QEMU_AARCH64},
    )
    steps = {s.name: s for s in plan.steps}
    assert all(steps[n].available for n in ("compat", "build", "test"))
    assert "(emulated: qemu-aarch64 7.2)" in steps["build"].detail
    assert plan.to_json()["build_node"]["emulated_by"] == "qemu-aarch64 7.2"
    refused = make_plan(MATRIX, MATRIX.target("aarch64_generic"), None, "software.eessi.local", X86_HOST, {})
    assert not {s.name: s for s in refused.steps}["build"].available


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="emulating aarch64 is for x86_64 hosts")
def test_check_node_answers_emulated_on_this_host() -> None:
    """The registered emulator (setup.sh) as check-node reports it; skipped where none is registered."""
    emu = _registered_aarch64()
    if emu is None:
        pytest.skip("no qemu-aarch64 registered in binfmt_misc here (`bash setup.sh` as root registers it)")
    cmd = [sys.executable, "-m", "eessi_pipeline.cli", "check-node", "--target", "aarch64_generic"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    assert text.startswith(f"yes, emulated ({emu.label})")
    doc = json.loads(
        subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True, timeout=60).stdout
    )
    assert doc["emulated"] is True and doc["emulator"]["fix_binary"] is True
    off = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "EESSI_PIPELINE_EMULATION": "off"}
    )
    assert off.returncode != 0 and "cannot build aarch64_generic" in off.stderr


def test_gate_record_writer_names_the_emulator_itself() -> None:
    """The writer decides emulation from the tested subdir and this host, not from what a caller claims."""
    from eessi_pipeline.gate.write import emulator_of

    assert emulator_of("x86_64", "software", "x86_64/amd/zen3") == ""
    assert emulator_of("x86_64", "init", "") == ""
    emu = _registered_aarch64()
    if emu is None or os.uname().machine != "x86_64":
        pytest.skip("no qemu-aarch64 registered in binfmt_misc here (`bash setup.sh` as root registers it)")
    assert emulator_of("x86_64", "software", "aarch64/generic") == emu.label
    assert emulator_of("x86_64", "compat", "aarch64") == emu.label


def test_the_emulated_arm_machine_gets_neoverse_n1_then_generic() -> None:
    """The cpuinfo an emulated client session presents: EESSI's Graviton2 case, so the init script
    falls back to aarch64/generic in a repository without neoverse_n1 software."""
    from eessi_pipeline.arch.cpuinfo import parse_cpuinfo
    from eessi_pipeline.arch.emulation import machine_cpuinfo
    from eessi_pipeline.arch.select import select_target

    host = parse_cpuinfo(machine_cpuinfo("aarch64").read_text())
    assert host.family == "aarch64"
    assert select_target(host, MATRIX, "2023.06").candidates == ("aarch64/neoverse_n1", "aarch64/generic")
    with pytest.raises(BuildNodeError, match="no machine description"):
        machine_cpuinfo("riscv64")


def test_emulated_session_allows_exactly_the_emulator_files() -> None:
    from eessi_pipeline.checks.procmaps import ProcessMaps, foreign_files

    qemu = "/usr/bin/qemu-aarch64-static"
    procs = [ProcessMaps(7, qemu, ("/cvmfs/r/versions/2023.06/compat/linux/aarch64/bin/bash", qemu + ".bak"))]
    assert foreign_files(procs, ["/cvmfs/r", qemu]) == [f"{qemu} (pid 7) maps {qemu}.bak"]
    assert len(foreign_files(procs, ["/cvmfs/r"])) == 2  # without the allowance the emulator is foreign


def test_use_spec_carries_the_session_environment() -> None:
    from eessi_pipeline.checks.smoke import load_smoke
    from eessi_pipeline.layers import use_spec

    env = {"EESSI_MACHINE_TYPE": "aarch64", "EESSI_PROC_CPUINFO": "/x/aarch64.cpuinfo"}
    spec = use_spec("r", "2023.06", "aarch64", "bash", ("zlib/1.2.13",), load_smoke(), env)
    assert spec["env"] == env and spec["bash"] == "/cvmfs/r/versions/2023.06/compat/linux/aarch64/bin/bash"
    assert use_spec("r", "2023.06", "x86_64", "bash", (), load_smoke())["env"] == {}


def test_emulated_session_on_this_host() -> None:
    from eessi_pipeline.cli.run import emulated_session

    assert emulated_session(os.uname().machine).emulator is None
    if _registered_aarch64() is None or os.uname().machine != "x86_64":
        pytest.skip("no qemu-aarch64 registered in binfmt_misc here (`bash setup.sh` as root registers it)")
    s = emulated_session("aarch64")
    assert s.emulator is not None and s.env["EESSI_MACHINE_TYPE"] == "aarch64"
    assert Path(s.env["EESSI_PROC_CPUINFO"]).is_file()
    assert os.path.realpath(s.emulator.interpreter) in s.emulator_files
