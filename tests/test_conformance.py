"""Conformance with peers: EESSI's archdetect cases and archspec's recorded cpuinfo dumps.

EESSI cases (tests/data/archdetect, copied from EESSI's software-layer-scripts): each
``<machine>.cpuinfo`` comes with ``.output`` (best subdir) and ``.all.output``
(candidates, ':'-separated).  Our answer must equal EESSI's after one deliberate,
documented difference: we only answer subdirs that the stack version builds
(targets of the matrix), falling back to ``<family>/generic``.  That covers:

* aarch64/google/axion — not an EESSI 2023.06/2025.06 target: we answer nvidia/grace,
  the next candidate in EESSI's own list;
* ppc64le/power9le and the riscv64 targets — not in the matrix: ``<family>/generic``;
* x86_64/amd/zen5 under 2023.06 — zen5 arrives in 2025.06: zen4.

A second deliberate difference is not exercised by EESSI's cases but by archspec's
``linux-rhel7-zen`` dump: EESSI answers zen2 for a first-generation Zen, we answer
generic (see tests/test_select.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import archspec.cpu
import pytest
from helpers import archdetect_cases, archdetect_dir

from eessi_pipeline.arch.cpuinfo import parse_cpuinfo, read_host_cpu
from eessi_pipeline.arch.select import rank, select_target
from eessi_pipeline.matrix import load_matrix

MATRIX = load_matrix()
VERSIONS = [v.name for v in MATRIX.versions]
# Cases that carry EESSI's answer; a dump recorded without one (sapphirerapids-vm, see its README)
# is parsed and detected by the other tests, but has no answer to agree with here.
CASES = [p for p in archdetect_cases() if p.with_suffix(".output").is_file()]


def _case_id(p: Path) -> str:
    return str(p.relative_to(archdetect_dir()).with_suffix(""))


def _read_expected(path: Path) -> str:
    return path.read_text().strip()  # some expected files lack a trailing newline


def _expected_for_matrix(eessi_all: list[str], version: str) -> list[str]:
    built = {t.subdir for t in MATRIX.targets_for(version)}
    kept = [s for s in eessi_all if s in built]
    generic = eessi_all[-1]  # EESSI ends every list with <family>/generic
    return kept if kept else [generic]


def test_eessi_fixtures_are_in_the_checkout() -> None:
    families = {p.relative_to(archdetect_dir()).parts[0] for p in CASES}
    assert {"x86_64", "aarch64"} <= families
    assert len(CASES) >= 20


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "case",
    CASES,
    ids=_case_id,
)
def test_eessi_case_selection_matches_archdetect(case: Path, version: str) -> None:
    host = parse_cpuinfo(case.read_text(), str(case))
    eessi_best = _read_expected(case.with_suffix(".output"))
    eessi_all = _read_expected(case.with_suffix(".all.output")).split(":")
    assert eessi_all[0] == eessi_best
    expected = _expected_for_matrix(eessi_all, version)
    sel = select_target(host, MATRIX, version)
    assert list(sel.candidates) == expected
    assert sel.subdir == expected[0]
    if eessi_best in {t.subdir for t in MATRIX.targets_for(version)}:
        assert sel.subdir == eessi_best  # no documented difference applies: exact agreement


@pytest.mark.parametrize(
    "rel",
    [
        "x86_64/amd/zen3/Azure-CentOS7-7V73X",
        "aarch64/nvidia/grace/Jureca-Rocky95",
        "x86_64/intel/haswell/archspec-linux-E5-2680-v3",
    ],
)
def test_eessi_case_through_cli_and_env_var_matches(rel: str, tmp_path: Path) -> None:
    case = archdetect_dir() / f"{rel}.cpuinfo"
    env = {"EESSI_PROC_CPUINFO": str(case), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    best = subprocess.run(
        [sys.executable, "-m", "eessi_pipeline.cli", "detect"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    allc = subprocess.run(
        [sys.executable, "-m", "eessi_pipeline.cli", "detect", "--all"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert best.stdout.strip() == _read_expected(case.with_suffix(".output"))
    assert allc.stdout.strip() == _read_expected(case.with_suffix(".all.output"))
    assert read_host_cpu(None, env).source == str(case)


# -- archspec's own dumps, shipped inside the installed archspec package ---------------

ARCHSPEC_DUMPS = Path(archspec.cpu.__file__).resolve().parent.parent / "json" / "tests" / "targets"
LINUX_DUMPS = sorted(p for p in ARCHSPEC_DUMPS.glob("linux-*"))

#: Dumps whose right EESSI subdir is not clear, with the answers we accept and why.
UNCLEAR = {
    "linux-rhel9-neoverse_n2": (
        {"aarch64/nvidia/grace", "aarch64/neoverse_v1", "aarch64/neoverse_n1"},
        "Neoverse N2 has Neoverse V2's (Grace's) instruction set; archspec's lineage says n1, "
        "EESSI's archdetect says neoverse_v1",
    ),
    "linux-ubuntu22.04-neoverse_n2": (
        {"aarch64/nvidia/grace", "aarch64/neoverse_v1", "aarch64/neoverse_n1"},
        "as linux-rhel9-neoverse_n2",
    ),
}


def _clear_answer(uarch_name: str, family: str, version: str) -> str:
    """The most specific matrix target that is the dump's microarchitecture or one of its ancestors."""
    u = archspec.cpu.TARGETS[uarch_name]
    lineage = {uarch_name} | {a.name for a in u.ancestors}
    fitting = [t for t in MATRIX.targets_for(version) if t.family == family and t.archspec in lineage]
    return max(fitting, key=rank).subdir if fitting else f"{family}/generic"


def test_archspec_dumps_ship_with_archspec() -> None:
    assert len(LINUX_DUMPS) >= 30, f"archspec's recorded dumps not found under {ARCHSPEC_DUMPS}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dump", LINUX_DUMPS, ids=lambda p: p.name)
def test_archspec_dump_selection_matches_its_lineage(dump: Path, version: str) -> None:
    uarch_name = dump.name.rsplit("-", 1)[1]  # linux-<os>-<expected microarchitecture>
    host = parse_cpuinfo(dump.read_text(), str(dump))
    sel = select_target(host, MATRIX, version)
    if dump.name in UNCLEAR:
        accepted, _why = UNCLEAR[dump.name]
        assert sel.subdir in accepted
        return
    assert sel.subdir == _clear_answer(uarch_name, host.family, version)
