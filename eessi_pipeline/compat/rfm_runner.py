"""Run the ReFrame checks of ``checks/compat`` on a staged layer and judge the run from its JSON report.

A run of :mod:`eessi_pipeline.checks.rfmrun` in the layer's mount namespace (so the checks find the
layer at its prefix), with a minimal configuration: one system, one local partition (local scheduler
and launcher), no module system.  ReFrame exits 0 when *nothing* ran, so the verdict also requires at
least one test case (:func:`report_verdict`).  The microarchitecture ``compat_archspec`` expects
(:func:`~.acceptance.expected_cpu`: the host's, or the family's generic one under emulation) is handed
to the checks in ``EESSI_COMPAT_EXPECTED_CPU`` (and why, in ``EESSI_COMPAT_EXPECTED_CPU_WHY``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks.report import parse_case
from ..checks.rfmrun import (
    REFRAME_PIN,
    TIMEOUT,
    RunPaths,
    find_reframe,
    local_partition,
    read_report,
    reframe_argv,
    reframe_environ,
    rfm_config,
    run_reframe,
)
from ..checks.rfmrun import (
    system as rfm_system,
)
from ..errors import CompatError
from ..matrix import PROJECT_ROOT
from ..proc import CommandResult
from .acceptance import CpuExpectation, Manifest, expected_cpu
from .runner import LayerView

CHECKS_DIR = PROJECT_ROOT / "checks" / "compat"
SYSTEM = "eessi_compat"


def config(system: str = SYSTEM, max_jobs: int = 4) -> dict[str, Any]:
    """A minimal ReFrame configuration: this host, one local partition, no modules (pure)."""
    partition = local_partition("local", "processes on this host", "builtin", max_jobs)
    descr = "the build host, running compatibility-layer checks"
    return rfm_config(
        [rfm_system(system, descr, "nomod", [partition])],
        [{"name": "builtin", "cc": "cc", "cxx": "", "ftn": ""}],
    )


def reframe_env(
    prefix: str, expected: CpuExpectation, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """ReFrame's environment in the layer: the layer's prefix and the expected CPU for the checks (pure)."""
    return reframe_environ(
        os.environ if base is None else base,
        ("RFM_CONFIG_FILES",),
        EESSI_COMPAT_PREFIX=prefix,
        EESSI_COMPAT_EXPECTED_CPU=expected.name,
        EESSI_COMPAT_EXPECTED_CPU_WHY=expected.why,
    )


@dataclass(frozen=True, slots=True)
class _InLayer:
    """Runs in the layer's namespace, in ``cwd``."""

    view: LayerView
    cwd: Path

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        return self.view.run(argv, timeout=timeout, env=env, check=check, cwd=self.cwd)


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    result: str
    fail_phase: str | None
    fail_reason: str | None


@dataclass(frozen=True, slots=True)
class ReportVerdict:
    ok: bool
    num_cases: int
    cases: tuple[CaseResult, ...]
    detail: str


def report_verdict(report: Mapping[str, Any]) -> ReportVerdict:
    """All selected cases passed, and there was at least one (pure)."""
    cases: list[CaseResult] = []
    for run in report.get("runs", [])[-1:]:  # the last run holds the final result of each case
        for c in (parse_case(tc) for tc in run.get("testcases", [])):
            cases.append(CaseResult(c.name, c.result, c.fail_phase, c.fail_reason))
    num = int(report.get("session_info", {}).get("num_cases", len(cases)))
    failed = [c for c in cases if c.result not in ("pass", "xfail")]
    if num == 0 or not cases:
        return ReportVerdict(False, num, tuple(cases), "ReFrame ran no test case: the checks found no layer")
    if failed:
        shown = "; ".join(
            f"{c.name}: {c.fail_phase}: {(c.fail_reason or '').strip()[:160]}" for c in failed[:8]
        )
        return ReportVerdict(False, num, tuple(cases), f"{len(failed)} of {len(cases)} cases failed: {shown}")
    return ReportVerdict(True, num, tuple(cases), f"all {len(cases)} cases passed")


def run_checks(
    view: LayerView, workdir: Path, checks: Path = CHECKS_DIR, expected: CpuExpectation | None = None
) -> ReportVerdict:
    """Run the ReFrame checks against the layer behind ``view``; the report lands in ``workdir``.
    ``expected``: what ``archspec cpu`` must print (default: :func:`~.acceptance.expected_cpu` of the
    layer's family)."""
    program = find_reframe(CompatError, " or run `eessi-pipeline compat check --runner python`")
    workdir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths.under(workdir)
    argv = reframe_argv(program, paths, checks, junit=False)
    cfg = config(max_jobs=max(1, os.cpu_count() or 1))
    env = reframe_env(view.prefix, expected or expected_cpu(Manifest.read(view.staging).family))
    result = run_reframe(_InLayer(view, workdir), argv, paths, cfg, env, TIMEOUT)
    verdict = report_verdict(read_report(paths, result, error=CompatError))
    if verdict.ok and result.returncode != 0:
        return ReportVerdict(
            False, verdict.num_cases, verdict.cases, f"ReFrame exited {result.returncode}: {result.tail(10)}"
        )
    return verdict


__all__ = [
    "CHECKS_DIR",
    "REFRAME_PIN",
    "CaseResult",
    "ReportVerdict",
    "config",
    "report_verdict",
    "run_checks",
]
