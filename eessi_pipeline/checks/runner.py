"""Run the software checks (``checks/software``) with ReFrame and judge its JSON report.

A run of :mod:`eessi_pipeline.checks.rfmrun` (where the target's ``/cvmfs`` prefix is visible: the
build overlay's namespace, or the host when a client mounts the repository) with the configuration
of :mod:`.rfmconfig` (local partitions, or a site's Slurm ones); the report is parsed into typed
results.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..matrix import PROJECT_ROOT
from ..proc import CommandResult
from ..software.easybuild import LMOD_INIT
from .references import REFERENCES_FILE
from .report import RunResult, parse_report
from .rfmconfig import LOCAL_SYSTEM, Site, TargetPrefix, config, partition_name
from .rfmrun import (
    CommandRunner,
    HostRunner,
    RunPaths,
    find_reframe,
    read_report,
    reframe_argv,
    reframe_environ,
    run_reframe,
)
from .smoke import SMOKE_ENV, SMOKE_FILE, load_smoke

CHECKS_DIR = PROJECT_ROOT / "checks" / "software"
LMOD_CMD = "/usr/share/lmod/lmod/libexec/lmod"
TIMEOUT = 1800.0
#: Set for a target this host runs only under emulation: the emulator, e.g. "qemu-aarch64 7.2".
EMULATED_ENV = "EESSI_PIPELINE_EMULATED"


@dataclass(frozen=True, slots=True)
class ChecksOutcome:
    target: str
    result: RunResult
    paths: RunPaths
    returncode: int
    seconds: float


def reframe_env(
    tp: TargetPrefix, references: Path, base: Mapping[str, str], smoke: Path | None = None
) -> dict[str, str]:
    """ReFrame's environment for a target's run (pure)."""
    env = reframe_environ(
        base,
        MODULEPATH=tp.modulepath,
        EESSI_PIPELINE_MODULEPATH=tp.modulepath,
        EESSI_PIPELINE_TARGET=tp.target.name,
        EESSI_PIPELINE_REFERENCES=str(references),
    )
    if smoke is not None:
        env[SMOKE_ENV] = str(smoke)
    env.pop(EMULATED_ENV, None)
    if tp.emulated_by:  # the checks record performance without judging it
        env[EMULATED_ENV] = tp.emulated_by
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
    program = find_reframe()
    workdir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths.under(workdir.resolve())
    cfg = config([tp], num_cpus=os.cpu_count() or 1, site=site, max_jobs=max(1, os.cpu_count() or 1))
    system = system or f"{LOCAL_SYSTEM}:{partition_name(tp.target)}"
    env = reframe_env(tp, references.resolve(), os.environ if environ is None else environ, smoke.resolve())
    done = run_reframe(runner, reframe_argv(program, paths, checks, system), paths, cfg, env, TIMEOUT)
    return outcome_of(tp, paths, done)


def outcome_of(
    tp: TargetPrefix, paths: RunPaths, done: CommandResult, no_report_hint: str = ""
) -> ChecksOutcome:
    """The judged outcome of a finished ReFrame run, from its JSON report.

    No readable report is an error with ReFrame's output tail (or ``no_report_hint`` when it is given:
    ReFrame writes no report when no test case was selected)."""
    data = read_report(paths, done, no_report_hint)
    return ChecksOutcome(tp.target.name, parse_report(data), paths, done.returncode, done.duration)


__all__ = [
    "CHECKS_DIR",
    "ChecksOutcome",
    "CommandRunner",
    "HostRunner",
    "RunPaths",
    "outcome_of",
    "reframe_argv",
    "reframe_env",
    "run_checks",
]
