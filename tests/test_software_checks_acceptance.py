"""Real ReFrame runs of checks/software on the built CI stack (slow; kept in CI: about 3 s a target).

``pytest -m arch_<target>`` builds the target (``software_build``, reused when unchanged), runs the
smoke and STREAM checks once per session with the generated configuration inside the build overlay,
and turns every ReFrame test case into a pytest result (``test_reframe_case[<target>-<case>]``), so
the pytest JUnit report lists each case.  Without ``-m arch_<target>`` only the targets of
``$EESSI_PIPELINE_CHECK_TARGETS`` (default: those the build acceptance tests build) run.
"""

from __future__ import annotations

import os

import pytest

from eessi_pipeline.build.stacks import load_stacks
from eessi_pipeline.checks.rfmconfig import TargetPrefix
from eessi_pipeline.checks.runner import ChecksOutcome, run_checks
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.pytest_plugin import explicitly_selected

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]
DEFAULT_TARGETS = "x86_64_generic,zen4"
LOCAL_SCALES = ("1_core", "2_cores", "1_node")


def expected_cases(modules: tuple[str, ...]) -> list[str]:
    return [f"module_smoke_check %module={m}" for m in sorted(modules)] + [
        f"stream_check %scale={s}" for s in LOCAL_SCALES
    ]


def _expected_for(target_name: str) -> list[str]:
    matrix = load_matrix()
    return expected_cases(load_stacks().stack_for(matrix.default_version, matrix.target(target_name)).modules)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rfm_case" in metafunc.fixturenames:
        matrix, stacks = load_matrix(), load_stacks()
        names = sorted(
            {
                c
                for t in matrix.targets_for(None)
                for c in expected_cases(stacks.stack_for(matrix.default_version, t).modules)
            }
        )
        metafunc.parametrize("rfm_case", names)


@pytest.fixture(scope="session")
def software_checks(request, arch_target, build_node, software_build, tmp_path_factory) -> ChecksOutcome:
    chosen = os.environ.get("EESSI_PIPELINE_CHECK_TARGETS", DEFAULT_TARGETS).split(",")
    if arch_target.name not in chosen and not explicitly_selected(
        request.config.getoption("markexpr"), arch_target
    ):
        pytest.skip(
            f"{arch_target.name}: select it with -m {arch_target.marker} (or EESSI_PIPELINE_CHECK_TARGETS)"
        )
    built = software_build(arch_target.name)
    outcome = run_checks(
        built.overlay,
        TargetPrefix(arch_target, built.plan.prefix),
        tmp_path_factory.mktemp(f"rfm-{arch_target.name}"),
    )
    print(f"\nReFrame {arch_target.name}: report {outcome.paths.report}, JUnit {outcome.paths.junit}")
    return outcome


def test_reframe_case(software_checks: ChecksOutcome, rfm_case: str, arch_target) -> None:
    if rfm_case not in _expected_for(arch_target.name):
        pytest.skip(f"{rfm_case} is not a check of {arch_target.name}'s stack")
    case = software_checks.result.case(rfm_case)
    assert case is not None, (
        f"ReFrame ran no case {rfm_case!r} for {arch_target.name}; ran: {[c.name for c in software_checks.result.cases]}"
    )
    if case.result == "skip":
        pytest.skip(f"ReFrame skipped {rfm_case}: {case.fail_reason}")
    assert case.ok, "\n".join(case.failures)


def test_reframe_run_is_complete(software_checks: ChecksOutcome, arch_target) -> None:
    result = software_checks.result
    assert result.num_cases > 0, result.failures
    assert sorted(c.name for c in result.cases) == sorted(_expected_for(arch_target.name))
    assert (software_checks.returncode == 0) == result.ok, result.failures
    assert software_checks.paths.junit.is_file()


def test_reframe_impossible_reference_fails_precisely(
    arch_target, build_node, software_build, tmp_path
) -> None:
    if arch_target.name not in os.environ.get("EESSI_PIPELINE_CHECK_TARGETS", DEFAULT_TARGETS).split(","):
        pytest.skip("one target proves the regression path")
    refs = tmp_path / "references.yaml"
    refs.write_text(
        "schema_version: 1\nchecks:\n  stream_check/1_core:\n"
        f"    {arch_target.name}:\n      Triad: {{value: 1000000, lower: -0.5, upper: null, unit: GB/s}}\n",
        encoding="utf-8",
    )
    built = software_build(arch_target.name)
    outcome = run_checks(
        built.overlay, TargetPrefix(arch_target, built.plan.prefix), tmp_path / "run", references=refs
    )
    assert outcome.returncode != 0
    case = outcome.result.case("stream_check %scale=1_core")
    assert case is not None and case.result == "fail" and case.fail_phase == "performance"
    (message,) = case.failures
    assert message.startswith("stream_check/1_core: Triad = ")
    assert message.endswith("GB/s is outside its band: reference 1e+06 GB/s, bounds [500000, inf] GB/s")
    assert outcome.result.failures == (message,)
