"""The eessi-pipeline command line: outputs, JSON, exit codes and one-line refusals."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cpuinfo_text

from eessi_pipeline import cli
from eessi_pipeline.arch.select import OVERRIDE_ENV
from eessi_pipeline.cli import arch as cli_arch
from eessi_pipeline.matrix import load_matrix

ZEN3_FLAGS = (
    "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c movbe bmi1 bmi2 abm xsave aes pclmulqdq "
    "clflushopt clzero fsgsbase rdseed sse4a xsavec xsaveopt clwb vaes vpclmulqdq mmx cx16 lahf_lm"
)


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[int, str, str]:
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    out = io.StringIO()
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    code = cli.main(argv, out=out)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def zen3_file(write_cpuinfo):
    return write_cpuinfo(cpuinfo_text("AuthenticAMD", ZEN3_FLAGS, "AMD EPYC 7763 64-Core Processor"))


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (OVERRIDE_ENV, "EESSI_PROC_CPUINFO", "EESSI_MACHINE_TYPE", "EESSI_PIPELINE_VERSION"):
        monkeypatch.delenv(var, raising=False)


def test_detect_cpuinfo_file_prints_subdir(zen3_file, monkeypatch, tmp_path) -> None:
    code, out, _ = run(["detect", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path)
    assert (code, out) == (0, "x86_64/amd/zen3\n")


def test_detect_all_prints_colon_separated_candidates(zen3_file, monkeypatch, tmp_path) -> None:
    code, out, _ = run(["detect", "--cpuinfo", str(zen3_file), "--all"], monkeypatch, tmp_path)
    assert (code, out) == (0, "x86_64/amd/zen3:x86_64/amd/zen2:x86_64/generic\n")


def test_detect_json_has_subdir_candidates_and_host(zen3_file, monkeypatch, tmp_path) -> None:
    code, out, _ = run(["detect", "--cpuinfo", str(zen3_file), "--json"], monkeypatch, tmp_path)
    data = json.loads(out)
    assert code == 0
    assert data["subdir"] == "x86_64/amd/zen3"
    assert data["marker"] == "arch_zen3"
    assert data["candidates"][-1] == "x86_64/generic"
    assert data["host"]["vendor"] == "AuthenticAMD"
    assert data["host"]["archspec"] == "zen3"


def test_detect_why_not_explains_missing_features(zen3_file, monkeypatch, tmp_path) -> None:
    code, out, _ = run(["detect", "--cpuinfo", str(zen3_file), "--why-not", "zen4"], monkeypatch, tmp_path)
    assert code == 0
    assert out.startswith("x86_64/amd/zen4 cannot run on this host")
    assert "avx512f" in out


def test_detect_why_not_unknown_target_fails_with_suggestion(zen3_file, monkeypatch, tmp_path) -> None:
    code, _, err = run(["detect", "--cpuinfo", str(zen3_file), "--why-not", "zen33"], monkeypatch, tmp_path)
    assert code == 1
    assert "unknown target 'zen33'" in err
    assert "did you mean" in err
    assert len(err.strip().splitlines()) == 1


def test_detect_override_env_wins(zen3_file, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "x86_64/generic")
    code, out, _ = run(["detect", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path)
    assert (code, out) == (0, "x86_64/generic\n")


def test_detect_invalid_override_exits_1_with_one_line(zen3_file, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "x86_64/amd/zen9")
    code, out, err = run(["detect", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert OVERRIDE_ENV in err


def test_detect_missing_cpuinfo_file_exits_1(monkeypatch, tmp_path) -> None:
    code, _, err = run(["detect", "--cpuinfo", str(tmp_path / "nope")], monkeypatch, tmp_path)
    assert code == 1
    assert "nope" in err
    assert "cannot read" in err


def test_detect_foreign_family_without_targets_notes_fallback(write_cpuinfo, monkeypatch, tmp_path) -> None:
    f = write_cpuinfo("processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n")
    code, out, err = run(["detect", "--cpuinfo", str(f)], monkeypatch, tmp_path)
    assert (code, out) == (0, "ppc64le/generic\n")
    assert "note:" in err
    assert "builds no ppc64le target" in err


def test_detect_version_selects_version_specific_target(write_cpuinfo, monkeypatch, tmp_path) -> None:
    import archspec.cpu

    f = write_cpuinfo(cpuinfo_text("AuthenticAMD", set(archspec.cpu.TARGETS["zen5"].features)))
    assert run(["detect", "--cpuinfo", str(f)], monkeypatch, tmp_path)[1] == "x86_64/amd/zen4\n"
    assert (
        run(["detect", "--cpuinfo", str(f), "--version", "2025.06"], monkeypatch, tmp_path)[1]
        == "x86_64/amd/zen5\n"
    )


def test_usage_error_exits_2(monkeypatch, tmp_path) -> None:
    assert run(["detect", "--no-such-flag"], monkeypatch, tmp_path)[0] == 2
    assert run([], monkeypatch, tmp_path)[0] == 2
    assert run(["plan"], monkeypatch, tmp_path)[0] == 2  # --target is required


def test_unknown_version_exits_1(zen3_file, monkeypatch, tmp_path) -> None:
    code, _, err = run(["detect", "--cpuinfo", str(zen3_file), "--version", "2099.01"], monkeypatch, tmp_path)
    assert code == 1
    assert "2099.01" in err
    assert "2023.06" in err


def test_validate_shipped_matrix_ok(monkeypatch, tmp_path) -> None:
    code, out, _ = run(["validate", "--json"], monkeypatch, tmp_path)
    data = json.loads(out)
    assert code == 0
    assert data["ok"] is True
    assert len(data["targets"]["2023.06"]) == 14
    assert "zen5" in data["targets"]["2025.06"]


def test_validate_broken_matrix_exits_1_naming_file(monkeypatch, tmp_path) -> None:
    bad = tmp_path / "targets.yaml"
    bad.write_text(load_matrix().path.read_text().replace("archspec: zen3", "archspec: zen33"))
    code, _, err = run(["validate", "--matrix", str(bad)], monkeypatch, tmp_path)
    assert code == 1
    assert str(bad) in err
    assert "zen33" in err
    assert "did you mean" in err


def test_targets_json_lists_markers_and_runners(monkeypatch, tmp_path) -> None:
    code, out, _ = run(["targets", "--json", "--version", "2023.06"], monkeypatch, tmp_path)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert "zen5" not in rows
    assert rows["zen2"]["marker"] == "arch_zen2"
    assert rows["x86_64_generic"]["runner"] == ["ubuntu-24.04"]


def test_plan_json_shows_prefix_steps_and_build_node(zen3_file, monkeypatch, tmp_path) -> None:
    code, out, _ = run(
        ["plan", "--target", "zen4", "--cpuinfo", str(zen3_file), "--json"], monkeypatch, tmp_path
    )
    plan = json.loads(out)
    assert code == 0
    assert (
        plan["install_prefix"]
        == "/cvmfs/software.eessi.local/versions/2023.06/software/linux/x86_64/amd/zen4"
    )
    assert plan["tarball_pattern"].startswith("eessi-2023.06-software-linux-x86_64-amd-zen4-")
    assert plan["build_node"]["ok"] is False
    assert [s["name"] for s in plan["steps"]] == [
        "select",
        "compat",
        "build",
        "test",
        "publish",
        "distribute",
    ]
    steps = {s["name"]: s for s in plan["steps"]}
    assert steps["test"]["command"] == "pytest -m arch_zen4"
    # a zen3 node cannot build zen4: build and test are marked as such, with the reason
    for name in ("build", "test"):
        assert steps[name]["available"] is False and "this host cannot build it" in steps[name]["blocked"]
    assert steps["compat"]["available"] and steps["publish"]["available"]


def test_plan_has_no_side_effects(zen3_file, monkeypatch, tmp_path) -> None:
    before = sorted(tmp_path.rglob("*"))
    code, out, _ = run(["plan", "--target", "zen3", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path)
    assert code == 0
    assert "pytest -m arch_zen3" in out
    assert sorted(tmp_path.rglob("*")) == before


def test_plan_repository_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EESSI_PIPELINE_REPOSITORY", "software.example.org")
    _code, out, _ = run(["plan", "--target", "grace", "--no-host", "--json"], monkeypatch, tmp_path)
    assert json.loads(out)["install_prefix"].startswith("/cvmfs/software.example.org/versions/2023.06/")


def test_check_node_refuses_with_reason(zen3_file, monkeypatch, tmp_path) -> None:
    ok = run(["check-node", "--target", "zen2", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path)
    bad = run(
        ["check-node", "--target", "sapphirerapids", "--cpuinfo", str(zen3_file)], monkeypatch, tmp_path
    )
    assert ok[0] == 0
    assert "can build zen2" in ok[1]
    assert bad[0] == 1
    assert "cannot build sapphirerapids" in bad[2]
    assert bad[2].count("\n") == 1


def test_publish_empty_staging_says_nothing_staged(monkeypatch, tmp_path) -> None:
    code, out, _ = run(["publish"], monkeypatch, tmp_path)
    assert code == 0
    assert out.startswith("nothing staged in ")
    assert str(tmp_path / "state") in out


def test_publish_staged_tarball_without_a_valid_record_is_refused_and_kept(monkeypatch, tmp_path) -> None:
    staging = tmp_path / "state" / "staging" / "new"
    staging.mkdir(parents=True)
    tarball = staging / "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"
    tarball.write_bytes(b"not really a tarball")
    code, out, _ = run(["publish"], monkeypatch, tmp_path)
    assert code == 1
    assert tarball.name in out and "refused" in out
    rejected = tmp_path / "state" / "staging" / "rejected" / tarball.name
    assert rejected.read_bytes() == b"not really a tarball"


def test_unexpected_error_exits_3_and_logs_traceback(monkeypatch, tmp_path) -> None:
    def boom(args, out):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(cli_arch, "cmd_validate", boom)
    code, _, err = run(["validate"], monkeypatch, tmp_path)
    log = tmp_path / "state" / "logs" / "eessi-pipeline.log"
    assert code == 3
    assert "simulated bug" in err
    assert str(log) in err
    assert "Traceback" in log.read_text()


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("eessi-pipeline")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "detect" in proc.stdout
    assert "plan" in proc.stdout
