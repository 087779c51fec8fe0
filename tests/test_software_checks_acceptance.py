"""Real ReFrame runs of checks/software on the built CI stack (slow; kept in CI: about 3 s a target).

``pytest -m arch_<target>`` builds the target (``software_build``, reused when unchanged), runs the
smoke and STREAM checks once per session with the generated configuration inside the build overlay,
and turns every ReFrame test case into a pytest result (``test_reframe_case[<target>-<case>]``), so
the pytest JUnit report lists each case.  Without ``-m arch_<target>`` only the targets of
``$EESSI_PIPELINE_CHECK_TARGETS`` (default: those the build acceptance tests build) run.  The run
announces the tarball and its ReFrame report to the gate (``--eessi-gate`` records them).
"""

from __future__ import annotations

import os

import pytest

from eessi_pipeline.checks.htmlreport import write_report
from eessi_pipeline.checks.pytest_scheduler import scheduler_of
from eessi_pipeline.checks.rfmconfig import TargetPrefix
from eessi_pipeline.checks.runner import ChecksOutcome, run_checks
from eessi_pipeline.checks.scheduler import run_checks_on_slurm
from eessi_pipeline.gate.pytest_gate import announce
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.pytest_plugin import report_link, session_version
from eessi_pipeline.software.stacks import load_stacks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]
LOCAL_SCALES = ("1_core", "2_cores", "1_node")
SLURM_SCALES = (*LOCAL_SCALES, "2_nodes")  # 2_nodes is skipped by ReFrame on a one-node partition


def expected_cases(modules: tuple[str, ...], scheduler: str = "local") -> list[str]:
    scales = SLURM_SCALES if scheduler == "slurm" else LOCAL_SCALES
    return [f"module_smoke_check %module={m}" for m in sorted(modules)] + [
        f"stream_check %scale={s}" for s in scales
    ]


def _expected_for(config: pytest.Config, target_name: str) -> list[str]:
    matrix = load_matrix()
    return expected_cases(
        load_stacks().stack_for(session_version(config), matrix.target(target_name)).modules,
        scheduler_of(config),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rfm_case" in metafunc.fixturenames:
        matrix, stacks = load_matrix(), load_stacks()
        owners: dict[str, list[str]] = {}
        for t in matrix.targets_for(session_version(metafunc.config)):
            modules = stacks.stack_for(session_version(metafunc.config), t).modules
            for case in expected_cases(modules, scheduler_of(metafunc.config)):
                owners.setdefault(case, []).append(t.name)
        params = [
            pytest.param(c, marks=pytest.mark.eessi_targets(*names)) for c, names in sorted(owners.items())
        ]
        metafunc.parametrize("rfm_case", params)


@pytest.fixture(scope="session")
def software_checks(
    software_target, software_build, eessi_run_dir, checks_slurm, build_node
) -> ChecksOutcome:
    built = software_build(software_target.name)
    tp = TargetPrefix(software_target, built.plan.prefix, built.plan.compat_prefix, build_node.emulated_by)
    workdir = eessi_run_dir / f"reframe-{software_target.name}"
    slurm = checks_slurm(software_target)  # --eessi-scheduler slurm: every case is a Slurm job
    if slurm is None:
        outcome = run_checks(built.overlay, tp, workdir)
    else:
        outcome = run_checks_on_slurm(built.overlay, tp, workdir, slurm)
    # beside ReFrame's own report.json, so in a directory of its own
    html_dir = outcome.paths.report.parent / "html"
    write_report([(software_target.name, outcome.result)], html_dir, title="ReFrame checks")
    return outcome


def test_reframe_case(software_checks: ChecksOutcome, rfm_case: str, software_target) -> None:
    case = software_checks.result.case(rfm_case)
    assert case is not None, (
        f"ReFrame ran no case {rfm_case!r} for {software_target.name}; ran: {[c.name for c in software_checks.result.cases]}"
    )
    if case.result == "skip":
        why = case.fail_reason or "the reason is in ReFrame's output (its JSON report keeps none for skips)"
        pytest.skip(f"ReFrame skipped {rfm_case}: {why}")
    assert case.ok, "\n".join(case.failures)


def test_reframe_run_is_complete(
    software_checks: ChecksOutcome, software_target, software_build, request
) -> None:
    result = software_checks.result
    announce(request.node, software_build(software_target.name).tarball, software_checks.paths.report)
    report_link(request.node, software_checks.paths.report.parent / "html" / "report.html")
    assert result.num_cases > 0, result.failures
    assert sorted(c.name for c in result.cases) == sorted(_expected_for(request.config, software_target.name))
    assert (software_checks.returncode == 0) == result.ok, result.failures
    assert software_checks.paths.junit.is_file()
    if scheduler_of(request.config) == "slurm":  # every case that ran was a Slurm job
        ran = [c for c in result.cases if c.result != "skip"]
        assert ran and all(c.scheduler in ("slurm", "squeue") and c.job_id for c in ran), [
            (c.name, c.scheduler, c.job_id) for c in ran
        ]


def test_reframe_emulated_performance_is_recorded_not_judged(software_checks, build_node) -> None:
    """Under emulation STREAM's values are in the report, marked, and never a failure; natively they
    are judged as usual (this target's references, if any)."""
    case = software_checks.result.case("stream_check %scale=1_core")
    assert case is not None and case.result == "pass", case
    assert {p.metric for p in case.perf} == {"Copy", "Scale", "Add", "Triad"}
    assert all(p.emulated == build_node.emulated_by for p in case.perf)
    if build_node.emulated_by:
        assert all(p.reference is None for p in case.perf)
        assert "emulated: not judged" in case.perf[0].describe(case.key)
        html = (software_checks.paths.report.parent / "html" / "report.html").read_text(encoding="utf-8")
        assert "emulated: not judged" in html


def test_reframe_impossible_reference_fails_precisely(
    software_target, software_build, build_node, tmp_path
) -> None:
    refs = tmp_path / "references.yaml"
    refs.write_text(
        "schema_version: 1\nchecks:\n  stream_check/1_core:\n"
        f"    {software_target.name}:\n      Triad: {{value: 1000000, lower: -0.5, upper: null, unit: GB/s}}\n",
        encoding="utf-8",
    )
    built = software_build(software_target.name)
    outcome = run_checks(
        built.overlay,
        TargetPrefix(software_target, built.plan.prefix, built.plan.compat_prefix, build_node.emulated_by),
        tmp_path / "run",
        references=refs,
    )
    if build_node.emulated_by:  # emulated: the impossible reference is not applied
        case = outcome.result.case("stream_check %scale=1_core")
        assert outcome.returncode == 0 and case is not None and case.ok, outcome.result.failures
        assert all(p.emulated and p.reference is None for p in case.perf)
        return
    assert outcome.returncode != 0
    case = outcome.result.case("stream_check %scale=1_core")
    assert case is not None and case.result == "fail" and case.fail_phase == "performance"
    (message,) = case.failures
    assert message.startswith("stream_check/1_core: Triad = ")
    assert message.endswith("GB/s is outside its band: reference 1e+06 GB/s, bounds [500000, inf] GB/s")
    assert outcome.result.failures == (message,)
