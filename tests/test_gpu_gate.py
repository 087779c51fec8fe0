"""The gate and accelerator tarballs: the shipped policy's ``software-accel`` rule requires the GPU checks.

Pure decisions on the real matrices/policy.yaml: the record of a ``…/accel/nvidia/cc90`` tarball that
holds only CPU tests, or GPU device checks that were skipped (no GPU on the runner), is refused; the
same record with the GPU checks passed and referenced bandwidth values is accepted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eessi_pipeline.cli import main
from eessi_pipeline.gate.decide import TarballFacts, decide
from eessi_pipeline.gate.policy import ACCEL_RULE, load_policy
from eessi_pipeline.gate.record import CaseResult, GateRecord, PerfVerdict, ReframeSummary
from eessi_pipeline.gate.signing import SignatureCheck
from eessi_pipeline.matrix import load_matrix

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
AT = load_matrix().accel_target("zen4_cc90")
NAME = AT.tarball("2023.06", 1764849600)
GPU_TESTS = "tests/test_gpu_checks_acceptance.py"


def _facts() -> TarballFacts:
    return TarballFacts(
        NAME, "a" * 64, 1000, "software", "2023.06", (f"2023.06/software/linux/{AT.subdir}",), AT.subdir
    )


def _gpu_tests(device_outcome: str) -> tuple[CaseResult, ...]:
    t = AT.name
    return (
        CaseResult(f"{GPU_TESTS}::test_gpu_reframe_run_is_complete[{t}]", "passed"),
        CaseResult(f"{GPU_TESTS}::test_gpu_module_smoke[{t}-CUDA/13.5.37-pypi]", "passed"),
        CaseResult(f"{GPU_TESTS}::test_gpu_module_smoke[{t}-GPUBandwidth/0.1-CUDA-13.5.37-pypi]", "passed"),
        CaseResult(f"{GPU_TESTS}::test_gpu_device_case[{t}-gpu_device_query_check]", device_outcome),
        CaseResult(f"{GPU_TESTS}::test_gpu_device_case[{t}-gpu_bandwidth_check]", device_outcome),
    )


def _record(tests: tuple[CaseResult, ...]) -> GateRecord:
    perf = (
        PerfVerdict("gpu_bandwidth_check", "Triad", 4140.0, 4140.0, -0.65, None, "GB/s", True),
        PerfVerdict("gpu_bandwidth_check", "Copy", 3965.0, 3965.0, -0.65, None, "GB/s", True),
    )
    return GateRecord(
        tarball=NAME, sha256="a" * 64, size=1000, content_type="software", target=AT.subdir,
        host_cpu="x86_64/amd/zen4", digests={}, tests=tests, reframe=ReframeSummary("b" * 64, 4, 0, perf),
        tools={}, created=(NOW - dt.timedelta(hours=1)).isoformat(), target_name=AT.name,
    )  # fmt: skip


def _decide(record: GateRecord) -> tuple[bool, str]:
    d = decide(_facts(), record, SignatureCheck(True, "builder@node"), load_policy(), NOW)
    return d.accept, d.line()


def test_policy_has_an_accel_rule_that_needs_reframe_and_references() -> None:
    rule = load_policy().rule(ACCEL_RULE)
    assert rule is not None and rule.require_reframe and rule.require_references
    name, chosen = load_policy().rule_for("software", AT.subdir)
    assert (name, chosen) == (ACCEL_RULE, rule)
    assert load_policy().rule_for("software", AT.cpu.subdir)[0] == "software"


def test_accel_tarball_with_cpu_tests_only_is_refused() -> None:
    cpu_only = (CaseResult("tests/acceptance/test_target.py::test_x[zen4]", "passed"),)
    ok, line = _decide(_record(cpu_only))
    assert not ok
    assert f"test_gpu_device_case[{AT.name}-gpu_bandwidth_check]' is missing" in line


def test_accel_tarball_whose_device_checks_were_skipped_is_refused() -> None:
    ok, line = _decide(_record(_gpu_tests("skipped")))
    assert not ok and "gpu_device_query_check] skipped" in line


def test_accel_tarball_with_gpu_checks_passed_is_accepted() -> None:
    ok, line = _decide(_record(_gpu_tests("passed")))
    assert ok, line


def test_accel_bandwidth_without_reference_is_refused() -> None:
    record = _record(_gpu_tests("passed"))
    assert record.reframe is not None
    unreferenced = (PerfVerdict("gpu_bandwidth_check", "Triad", 1800.0, None, None, None, "GB/s", True),)
    ok, line = _decide(
        dataclasses.replace(record, reframe=dataclasses.replace(record.reframe, performance=unreferenced))
    )
    assert not ok and "has no reference for zen4_cc90" in line


# -- a real accelerator tarball through the real gate (slow) ---------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the build overlay at /cvmfs needs root")
def test_real_accel_tarball_checked_without_a_gpu_is_refused(tmp_path: Path) -> None:
    """``gpu build --tarball`` packs the accelerator tarball in the build overlay; the GPU acceptance
    tests run for real (here without a GPU: the device checks skip); the signed record of that run is
    staged, and the gate refuses the tarball for exactly those skipped checks."""
    state = tmp_path / "state"
    out = io.StringIO()
    rc = main(["--state-dir", str(state), "gpu", "build", "--target", AT.name, "--tarball", "--json"], out)
    assert rc == 0
    tarball = Path(json.loads(out.getvalue())["tarball"])
    assert tarball.name.startswith("eessi-2023.06-software-linux-x86_64-amd-zen4-accel-nvidia-cc90-")
    run_dir, junit = tmp_path / "run", tmp_path / "junit.xml"
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", AT.marker, GPU_TESTS,
         f"--junitxml={junit}", f"--eessi-run-dir={run_dir}"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-2000:]
    report = run_dir / f"gpu-{AT.name}" / "report.json"
    assert main(
        ["--state-dir", str(state), "gate", "record", "--tarball", str(tarball), "--junit", str(junit),
         "--reframe-report", str(report), "--stage"],
        io.StringIO(),
    ) == 0  # fmt: skip
    verdict = io.StringIO()
    assert main(["--state-dir", str(state), "gate", "check", str(tarball)], verdict) == 1
    line = verdict.getvalue()
    assert "refused" in line
    assert f"test_gpu_device_case[{AT.name}-gpu_device_query_check] skipped" in line
    assert f"test_gpu_device_case[{AT.name}-gpu_bandwidth_check] skipped" in line
    assert "no ReFrame report" not in line and "missing" not in line  # the rest of the record is complete
