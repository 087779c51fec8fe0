"""A target's gated acceptance run as a pytest subprocess of the checkout (what ``eessi-pipeline test``
and ``eessi-pipeline run`` call): the command line, the environment, and the summary of its reports.

It runs exactly what ``pytest -m arch_<target>`` runs (the build, reused when unchanged, its tarball
checks and the ReFrame smoke and performance checks) with the pipeline's state directory and
``--eessi-gate``: a run writes, signs and (unless told not to) stages the gate record of the tarball
it tested.  pytest's output is echoed on stderr as it runs.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import report
from .errors import PipelineError, UsageError
from .extras import require
from .gate.record import parse_junit
from .gate.write import RECORDS_FILE
from .matrix import PROJECT_ROOT, Target
from .proc import run_echoed
from .settings import REPOSITORY_ENV, STATE_DIR_ENV, VERSION_ENV, Settings

# What `pytest -m arch_<target>` runs for a software target, relative to the checkout.
ACCEPTANCE_PATHS = (
    "tests/acceptance",
    "tests/test_software_checks_acceptance.py",
    "tests/test_testsuite_acceptance.py",
)
TIMEOUT = 3600.0


class TestRunFailed(PipelineError):
    """The acceptance run of a target did not pass."""


@dataclass(frozen=True, slots=True)
class TestRunPaths:
    run_dir: Path
    junit: Path
    reframe_report: Path
    reframe_junit: Path
    html_report: Path

    @classmethod
    def under(cls, run_dir: Path, target: Target) -> TestRunPaths:
        rfm = run_dir / f"reframe-{target.name}"
        return cls(
            run_dir,
            run_dir / "junit.xml",
            rfm / "report.json",
            rfm / "junit.xml",
            rfm / "html" / "report.html",
        )


def pytest_argv(
    python: str,
    target: Target,
    paths: TestRunPaths,
    state_dir: Path,
    stage: bool,
    scheduler: str = "local",
    site: Path | None = None,
) -> list[str]:
    """The pytest command line of a target's gated acceptance run (pure).  ``scheduler`` slurm: the
    ReFrame checks run as Slurm jobs, on ``site``'s partition or on the embedded cluster of the state dir."""
    argv = [
        python, "-m", "pytest", *ACCEPTANCE_PATHS, "-m", target.marker, "-p", "no:cacheprovider",
        "-o", "addopts=", "-rfEs", f"--junitxml={paths.junit}", f"--eessi-run-dir={paths.run_dir}",
        f"--eessi-build-state={state_dir}", "--eessi-gate",
    ]  # fmt: skip
    if scheduler != "local":  # issue 20: the checks through Slurm
        argv.append(f"--eessi-scheduler={scheduler}")
        if site is not None:
            argv.append(f"--eessi-site={site}")
    return [*argv, "--eessi-gate-stage"] if stage else argv


def run_acceptance(
    settings: Settings,
    target: Target,
    run_dir: Path,
    *,
    stage: bool = True,
    timeout: float = TIMEOUT,
    scheduler: str = "local",
    site: Path | None = None,
) -> dict[str, Any]:
    """Run a target's gated acceptance tests (pytest output echoed on stderr); return the summary."""
    missing = [p for p in ACCEPTANCE_PATHS if not (PROJECT_ROOT / p).exists()]
    if missing:
        raise UsageError(
            f"the acceptance tests {', '.join(missing)} are not in {PROJECT_ROOT}: run `eessi-pipeline test` "
            "from a checkout installed with `pip install -e` (bash setup.sh does that)"
        )
    require("pytest", f"`eessi-pipeline test` (pytest -m {target.marker})")
    require("reframe", "the ReFrame checks of `eessi-pipeline test`")
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = TestRunPaths.under(run_dir, target)
    argv = pytest_argv(sys.executable, target, paths, settings.state_dir, stage, scheduler, site)
    report.say("test", f"{target.name}: {' '.join(argv[3:])}")
    env = pipeline_env(settings)
    done = run_echoed(argv, timeout=timeout, echo=report.stream(), cwd=PROJECT_ROOT, env=env)
    listing = run_dir / RECORDS_FILE
    records = json.loads(listing.read_text(encoding="utf-8")) if listing.exists() else []
    return summarise(paths, target, done.returncode, records[0]["record"] if records else "")


def pipeline_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the settings made explicit for child processes."""
    env = dict(os.environ)
    env.update({STATE_DIR_ENV: str(settings.state_dir), REPOSITORY_ENV: settings.repository})
    if settings.version:
        env[VERSION_ENV] = settings.version
    return env


def failure_line(target: Target, summary: dict[str, Any]) -> str:
    """One line saying why a target's acceptance run did not pass (pure)."""
    if summary["failed"]:
        return f"{target.name}: {summary['failed']} test(s) failed: see {summary['junit']}"
    return (f"{target.name}: pytest exited {summary['returncode']} with no failed test (a collection, "
            "gate-record or usage error): see its output above")  # fmt: skip


def summarise(paths: TestRunPaths, target: Target, returncode: int, record: str) -> dict[str, Any]:
    junit = paths.junit
    results = parse_junit(junit.read_text(encoding="utf-8"), str(junit)) if junit.exists() else ()
    failed = sum(1 for r in results if r.outcome in ("failed", "error"))
    return {
        "target": target.name,
        "returncode": returncode,
        "tests": len(results),
        "failed": failed,
        "junit": str(paths.junit),
        "reframe_report": str(paths.reframe_report) if paths.reframe_report.exists() else "",
        "reframe_junit": str(paths.reframe_junit) if paths.reframe_junit.exists() else "",
        "html_report": str(paths.html_report) if paths.html_report.exists() else "",
        "gate_record": record,
    }
