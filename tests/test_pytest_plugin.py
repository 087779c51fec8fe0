"""The pytest plugin: arch markers from the matrix, per-target parametrisation, build-node fixture.

Each case runs a real pytest in a subprocess on a generated test file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cpuinfo_text

ZEN3_FLAGS = (
    "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c movbe bmi1 bmi2 abm xsave aes pclmulqdq "
    "clflushopt clzero fsgsbase rdseed sse4a xsavec xsaveopt clwb vaes vpclmulqdq mmx cx16 lahf_lm"
)

ARCH_TESTS = """
def test_entry(arch_target):
    assert arch_target.marker == "arch_" + arch_target.name

def test_not_per_target():
    pass
"""

BUILD_TESTS = """
def test_build(build_node, arch_target, host_selection):
    assert build_node.ok
    assert host_selection.subdir == "x86_64/amd/zen3"
"""


@pytest.fixture
def zen3_cpuinfo(tmp_path: Path) -> Path:
    p = tmp_path / "zen3.cpuinfo"
    p.write_text(cpuinfo_text("AuthenticAMD", ZEN3_FLAGS, "AMD EPYC 7763"))
    return p


@pytest.fixture(autouse=True)
def _native_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These cases count skips of foreign targets: emulation off, whatever this host has registered."""
    monkeypatch.setenv("EESSI_PIPELINE_EMULATION", "off")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "eessi_pipeline.pytest_plugin", "-p", "no:cacheprovider", *args
    )


def test_markers_listed_for_every_target(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--markers")
    out = result.stdout.str()
    for name in ("arch_zen2", "arch_x86_64_generic", "arch_aarch64_generic", "arch_grace", "arch_zen5"):
        assert f"@pytest.mark.{name}:" in out
    assert "acceptance tests of x86_64/amd/zen3" in out


def test_strict_markers_accepts_arch_marker_and_rejects_unknown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ok="import pytest\n@pytest.mark.arch_zen3\ndef test_a():\n    pass\n",
    )
    assert _run(pytester, "--strict-markers").ret == 0
    pytester.makepyfile(test_bad="import pytest\n@pytest.mark.arch_zen33\ndef test_b():\n    pass\n")
    result = _run(pytester, "--strict-markers")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*arch_zen33*not found in `markers`*"])


def test_marker_selects_only_that_targets_instances(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_arch=ARCH_TESTS)
    result = _run(pytester, "-m", "arch_zen3", "--collect-only", "-q")
    lines = [ln for ln in result.stdout.lines if "::" in ln]
    assert lines == ["test_arch.py::test_entry[zen3]"]


def test_all_targets_of_the_version_are_parametrised(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_arch=ARCH_TESTS)
    result = _run(pytester, "-q", "--eessi-version", "2023.06")
    result.assert_outcomes(passed=15)  # 14 targets + 1 plain test
    result25 = _run(pytester, "-q", "-m", "arch_zen5", "--eessi-version", "2025.06")
    result25.assert_outcomes(passed=1)


def test_marker_of_target_outside_version_selects_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_arch=ARCH_TESTS)
    result = _run(pytester, "-q", "-m", "arch_zen5", "--eessi-version", "2023.06")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_build_node_full_run_skips_foreign_targets_with_reason(pytester, zen3_cpuinfo) -> None:
    pytester.makepyfile(test_build=BUILD_TESTS)
    result = _run(pytester, "-rs", "--eessi-cpuinfo", str(zen3_cpuinfo))
    result.assert_outcomes(passed=3, skipped=11)  # zen3, zen2, generic build here
    result.stdout.fnmatch_lines(["*not a build node for zen4: the host lacks*avx512f*"])


def test_build_node_explicit_marker_on_wrong_host_fails_with_next_step(pytester, zen3_cpuinfo) -> None:
    pytester.makepyfile(test_build=BUILD_TESTS)
    result = _run(pytester, "-m", "arch_zen4", "--eessi-cpuinfo", str(zen3_cpuinfo))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot build zen4 (x86_64/amd/zen4) on this host*run it on a zen4 node*"])


def test_build_node_explicit_marker_on_right_host_passes(pytester, zen3_cpuinfo) -> None:
    pytester.makepyfile(test_build=BUILD_TESTS)
    result = _run(pytester, "-m", "arch_zen3 or arch_x86_64_generic", "--eessi-cpuinfo", str(zen3_cpuinfo))
    result.assert_outcomes(passed=2)


def test_broken_matrix_is_a_usage_error_naming_the_file(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "targets.yaml"
    bad.write_text("schema_version: 1\n")
    pytester.makepyfile(test_arch=ARCH_TESTS)
    result = _run(pytester, "--eessi-matrix", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{bad}*default_version*"])


def test_report_header_names_matrix_and_version(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_arch=ARCH_TESTS)
    result = _run(pytester, "--eessi-version", "2025.06", "-m", "arch_zen5")
    result.stdout.fnmatch_lines(["eessi-pipeline: matrix *targets.yaml, stack version 2025.06"])


def test_plugin_is_loaded_through_its_pytest11_entry_point(tmp_path: Path) -> None:
    """Installed, the plugin loads in any directory (no conftest needed), like pytest-testinfra."""
    import importlib.metadata
    import subprocess
    import sys

    names = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert "eessi_pipeline.pytest_plugin" in names
    done = subprocess.run([sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "@pytest.mark.arch_zen3" in done.stdout, done.stderr
    assert "--eessi-gate" in subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=tmp_path,
                                            capture_output=True, text=True, timeout=120).stdout  # fmt: skip
