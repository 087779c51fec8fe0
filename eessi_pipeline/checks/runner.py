"""Run the software checks (``checks/software``) with ReFrame as a subprocess and judge its JSON report.

Like :mod:`eessi_pipeline.compat.rfm_runner`: ReFrame's command line is its only supported
interface, so it runs as a subprocess (where the target's ``/cvmfs`` prefix is visible: the build
overlay's namespace, or the host when a client mounts the repository) with a generated
configuration, ``--report-file`` and ``--report-junit``; the report is parsed into typed results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from ..compat.gentoo_prefix import find_tool
from ..compat.rfm_runner import REFRAME_PIN
from ..matrix import PROJECT_ROOT
from ..proc import CommandResult, run
from ..software.easybuild import LMOD_INIT
from .references import REFERENCES_FILE, ChecksError
from .report import RunResult, parse_report
from .rfmconfig import LOCAL_SYSTEM, Site, TargetPrefix, config, partition_name
from .smoke import SMOKE_ENV, SMOKE_FILE, load_smoke

CHECKS_DIR = PROJECT_ROOT / "checks" / "software"
LMOD_CMD = "/usr/share/lmod/lmod/libexec/lmod"
TIMEOUT = 1800.0


class CommandRunner(Protocol):
    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult: ...


@dataclass(frozen=True, slots=True)
class HostRunner:
    """Runs on this host (the repository is mounted by a CernVM-FS client)."""

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
    ) -> CommandResult:
        return run(argv, timeout=timeout, env=env, check=check)


@dataclass(frozen=True, slots=True)
class RunPaths:
    config: Path
    report: Path
    junit: Path
    prefix: Path

    @classmethod
    def under(cls, workdir: Path) -> RunPaths:
        return cls(
            workdir / "reframe-config.yaml", workdir / "report.json", workdir / "junit.xml", workdir / "rfm"
        )


@dataclass(frozen=True, slots=True)
class ChecksOutcome:
    target: str
    result: RunResult
    paths: RunPaths
    returncode: int
    seconds: float


def reframe_argv(program: str, paths: RunPaths, checks: Path, system: str) -> list[str]:
    """The ReFrame command line (pure)."""
    return [
        program, "-C", str(paths.config), "-c", str(checks), "--system", system,
        "--prefix", str(paths.prefix), "--report-file", str(paths.report),
        "--report-junit", str(paths.junit), "--nocolor", "-r",
    ]  # fmt: skip


def reframe_env(
    tp: TargetPrefix, references: Path, base: Mapping[str, str], smoke: Path | None = None
) -> dict[str, str]:
    """ReFrame's environment for a target's run (pure)."""
    env = {k: v for k, v in base.items() if not k.startswith("RFM_")}
    env.update(
        {
            "RFM_COLORIZE": "n",
            "MODULEPATH": tp.modulepath,
            "EESSI_PIPELINE_MODULEPATH": tp.modulepath,
            "EESSI_PIPELINE_TARGET": tp.target.name,
            "EESSI_PIPELINE_REFERENCES": str(references),
        }
    )
    if smoke is not None:
        env[SMOKE_ENV] = str(smoke)
    # ReFrame's Lmod backend needs LMOD_CMD; job scripts need the `module` function (non-login bash)
    env.setdefault("LMOD_CMD", LMOD_CMD)
    env.setdefault("BASH_ENV", LMOD_INIT)
    return env


def run_checks(
    runner: CommandRunner,
    tp: TargetPrefix,
    workdir: Path,
    *,
    references: Path = REFERENCES_FILE,
    site: Site | None = None,
    checks: Path = CHECKS_DIR,
    environ: Mapping[str, str] | None = None,
    smoke: Path = SMOKE_FILE,
    system: str | None = None,
) -> ChecksOutcome:
    """Run the checks for one target on its local partition (or on ``system``, ``<system>:<partition>``
    of the site: Slurm jobs); the report lands in ``workdir``.

    The smoke table is validated first, so that a broken ``smoke.yaml`` is refused with its file and
    key instead of failing inside ReFrame's loader."""
    load_smoke(smoke)
    program = find_tool("reframe")
    if program is None:
        raise ChecksError(f"ReFrame is not installed; install {REFRAME_PIN} (pip install '{REFRAME_PIN}')")
    workdir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths.under(workdir.resolve())
    cfg = config([tp], num_cpus=os.cpu_count() or 1, site=site, max_jobs=max(1, os.cpu_count() or 1))
    paths.config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for stale in (paths.report, paths.junit):
        stale.unlink(missing_ok=True)
    system = system or f"{LOCAL_SYSTEM}:{partition_name(tp.target)}"
    env = reframe_env(tp, references.resolve(), os.environ if environ is None else environ, smoke.resolve())
    done = runner.run(reframe_argv(program, paths, checks, system), timeout=TIMEOUT, env=env, check=False)
    return outcome_of(tp, paths, done)


def outcome_of(
    tp: TargetPrefix, paths: RunPaths, done: CommandResult, no_report_hint: str = ""
) -> ChecksOutcome:
    """The judged outcome of a finished ReFrame run, from its JSON report.

    No readable report is an error with ReFrame's output tail (or ``no_report_hint`` when it is given:
    ReFrame writes no report when no test case was selected)."""
    try:
        data = json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        if no_report_hint:
            raise ChecksError(no_report_hint) from e
        raise ChecksError(
            f"ReFrame wrote no readable report ({e}); it exited {done.returncode}:\n{done.tail(30)}"
        ) from e
    return ChecksOutcome(tp.target.name, parse_report(data), paths, done.returncode, done.duration)


__all__ = [
    "CHECKS_DIR",
    "ChecksOutcome",
    "HostRunner",
    "RunPaths",
    "outcome_of",
    "reframe_argv",
    "reframe_env",
    "run_checks",
]
