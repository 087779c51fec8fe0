"""Run the ReFrame checks of ``checks/compat`` on a staged layer and judge the run from its JSON report.

ReFrame only has a command line as a supported interface, so it runs as a subprocess
(in the layer's mount namespace, so the checks find the layer at its prefix), with a
minimal generated configuration: one system, one local partition (local scheduler and
launcher), no module system.  ReFrame exits 0 when *nothing* ran, so the verdict also
requires at least one test case (:func:`report_verdict`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..checks.report import parse_case
from ..errors import CompatError
from ..matrix import PROJECT_ROOT
from .gentoo_prefix import find_tool
from .runner import LayerView

CHECKS_DIR = PROJECT_ROOT / "checks" / "compat"
SYSTEM = "eessi_compat"
REFRAME_PIN = "reframe-hpc==4.10.0"
TIMEOUT = 1800.0


def config(system: str = SYSTEM, max_jobs: int = 4) -> dict[str, Any]:
    """A minimal ReFrame configuration: this host, one local partition, no modules (pure)."""
    return {
        "systems": [
            {
                "name": system,
                "descr": "the build host, running compatibility-layer checks",
                "hostnames": [".*"],
                "modules_system": "nomod",
                "partitions": [
                    {
                        "name": "local",
                        "descr": "processes on this host",
                        "scheduler": "local",
                        "launcher": "local",
                        "environs": ["builtin"],
                        "max_jobs": max_jobs,
                    }
                ],
            }
        ],
        "environments": [{"name": "builtin", "cc": "cc", "cxx": "", "ftn": ""}],
        "general": [{"check_search_recursive": False, "colorize": False}],
    }


def write_config(path: Path, max_jobs: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config(max_jobs=max_jobs), sort_keys=False), encoding="utf-8")
    return path


def reframe_argv(program: str, config_file: Path, checks: Path, report: Path, workdir: Path) -> list[str]:
    return [
        program,
        "-C",
        str(config_file),
        "-c",
        str(checks),
        "--prefix",
        str(workdir),
        "--report-file",
        str(report),
        "--nocolor",
        "-r",
    ]


def reframe_env(prefix: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["EESSI_COMPAT_PREFIX"] = prefix
    env["RFM_COLORIZE"] = "n"
    env.pop("RFM_CONFIG_FILES", None)
    return env


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


def run_checks(view: LayerView, workdir: Path, checks: Path = CHECKS_DIR) -> ReportVerdict:
    """Run the ReFrame checks against the layer behind ``view``; the report lands in ``workdir``."""
    program = find_tool("reframe")
    if program is None:
        raise CompatError(
            f"ReFrame is not installed; install {REFRAME_PIN} (pip install '{REFRAME_PIN}') or run "
            "`eessi-pipeline compat check --runner python`"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_config(workdir / "reframe-config.yaml", max_jobs=max(1, os.cpu_count() or 1))
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    argv = reframe_argv(program, cfg, checks, report, workdir / "rfm")
    result = view.run(argv, timeout=TIMEOUT, env=reframe_env(view.prefix), check=False, cwd=workdir)
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CompatError(
            f"ReFrame wrote no readable report ({e}); it exited {result.returncode}:\n{result.tail(30)}"
        ) from e
    verdict = report_verdict(data)
    if verdict.ok and result.returncode != 0:
        return ReportVerdict(
            False, verdict.num_cases, verdict.cases, f"ReFrame exited {result.returncode}: {result.tail(10)}"
        )
    return verdict


__all__ = ["CHECKS_DIR", "CaseResult", "ReportVerdict", "config", "report_verdict", "run_checks"]
