"""``eessi-pipeline test --target NAME``: a target's acceptance run outside pytest, gated.

It runs exactly what ``pytest -m arch_<target>`` runs (the target's acceptance tests: the build,
reused when unchanged, its tarball checks and the ReFrame smoke and performance checks) as a
pytest subprocess of the checkout, with the pipeline's state directory for the build, and
``--eessi-gate --eessi-gate-stage``: a run writes, signs and stages the gate record of the tarball
it tested.  It prints the paths of the ReFrame JSON run report, the pytest JUnit file and the gate
record; the pytest output is shown as it runs (on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .arch.cpuinfo import read_host_cpu
from .arch.select import require_build_node
from .cli_options import add_stack_version
from .errors import PipelineError, UsageError
from .extras import require
from .gate.record import parse_junit
from .gate.write import RECORDS_FILE
from .matrix import PROJECT_ROOT, Target, load_matrix
from .proc import run_echoed
from .settings import REPOSITORY_ENV, STATE_DIR_ENV, VERSION_ENV, Settings, resolve_settings

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
    sys.stderr.write(f"[test] {target.name}: {' '.join(argv[3:])}\n")
    done = run_echoed(argv, timeout=timeout, echo=sys.stderr, cwd=PROJECT_ROOT, env=pipeline_env(settings))
    listing = run_dir / RECORDS_FILE
    records = json.loads(listing.read_text(encoding="utf-8")) if listing.exists() else []
    return _summary(paths, target, done.returncode, records[0]["record"] if records else "")


def pipeline_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the settings made explicit for child processes."""
    env = dict(os.environ)
    env.update({STATE_DIR_ENV: str(settings.state_dir), REPOSITORY_ENV: settings.repository})
    if settings.version:
        env[VERSION_ENV] = settings.version
    return env


def cmd_test(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(
        version=args.version, state_dir=getattr(args, "state_dir", None), repository=args.repo
    )
    matrix = load_matrix()
    target = matrix.target(args.target)
    require_build_node(read_host_cpu(None), target, matrix, settings.version)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(args.run_dir) if args.run_dir else settings.state_dir / "runs" / f"{target.name}-{stamp}"
    site = Path(args.site).resolve() if args.site else None
    if args.scheduler == "slurm":  # refuse before building when the checks could not be submitted
        _check_slurm(settings.state_dir, target, site)
    summary = run_acceptance(settings, target, run_dir, stage=not args.no_stage, timeout=args.timeout,
                             scheduler=args.scheduler, site=site)  # fmt: skip
    if args.json:
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        for key in ("reframe_report", "junit", "gate_record", "html_report"):
            if summary.get(key):
                out.write(f"{summary[key]}\n")
    if summary["returncode"] != 0:
        raise TestRunFailed(failure_line(target, summary))
    return 0


def _check_slurm(state_dir: Path, target: Target, site: Path | None) -> None:
    """The site file's partition for ``target``, or the embedded cluster of the state dir, must exist."""
    if site is not None:
        from .checks.rfmconfig import load_site, site_partition

        site_partition(load_site(site), target)
        return
    from .cluster.manager import Cluster

    Cluster(state_dir).require_running()


def failure_line(target: Target, summary: dict[str, Any]) -> str:
    """One line saying why a target's acceptance run did not pass (pure)."""
    if summary["failed"]:
        return f"{target.name}: {summary['failed']} test(s) failed: see {summary['junit']}"
    return (f"{target.name}: pytest exited {summary['returncode']} with no failed test (a collection, "
            "gate-record or usage error): see its output above")  # fmt: skip


def _summary(paths: TestRunPaths, target: Target, returncode: int, record: str) -> dict[str, Any]:
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


def add_test_parser(sub: Any) -> None:
    p = sub.add_parser(
        "test", help="run a target's acceptance tests (build, ReFrame) and stage its gated tarball"
    )
    p.add_argument("--target", required=True, metavar="NAME", help="target name or subdir (e.g. zen4)")
    add_stack_version(p)
    p.add_argument("--repo", metavar="NAME", help="repository name (default: $EESSI_PIPELINE_REPOSITORY)")
    p.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS, help="state directory")
    p.add_argument(
        "--run-dir", metavar="DIR", help="where reports go (default: <state>/runs/<target>-<time>)"
    )
    p.add_argument("--no-stage", action="store_true", help="write and sign the gate record, but do not stage")
    p.add_argument("--timeout", type=float, default=TIMEOUT, metavar="S", help="for the whole run")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="ReFrame checks as local processes (default) or as Slurm jobs on the embedded "
                   "cluster (`eessi-pipeline cluster up`) or --site's partition")  # fmt: skip
    p.add_argument("--site", metavar="FILE", help="with --scheduler slurm: a real cluster's site file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=cmd_test)
