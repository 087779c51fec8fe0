"""One ReFrame run: its configuration, command line, environment, the run itself and its report.

ReFrame's command line is its only supported interface, so every run (the compatibility layer's
checks, the software checks on local or Slurm partitions, the GPU checks, the EESSI test-suite) is a
subprocess through :mod:`eessi_pipeline.proc`, run by a :class:`CommandRunner` where the checked
prefix is visible (the layer's or the build overlay's namespace, or this host), with a generated
configuration (:func:`rfm_config` of :func:`system` with :func:`local_partition` or a site's Slurm
partitions), ``--report-file`` (and ``--report-junit``), and its JSON report read back
(:func:`read_report`).  The callers only say what differs: the partitions, the selection, the
environment's additions and how the report is judged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..compat.gentoo_prefix import find_tool
from ..proc import CommandResult, run
from .references import ChecksError

REFRAME_PIN = "reframe-hpc==4.10.0"
TIMEOUT = 1800.0
GENERAL = {"check_search_recursive": False, "colorize": False}


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


def local_partition(name: str, descr: str, environ: str, max_jobs: int, **more: Any) -> dict[str, Any]:
    """A partition of processes on this host (scheduler and launcher ``local``); ``more``: its
    ``features``, ``extras``, ``env_vars``, ``processor`` (pure)."""
    return {
        "name": name,
        "descr": descr,
        "scheduler": "local",
        "launcher": "local",
        "environs": [environ],
        "max_jobs": max_jobs,
        **more,
    }


def system(
    name: str,
    descr: str,
    modules_system: str,
    partitions: Iterable[Mapping[str, Any]],
    hostnames: Iterable[str] = (".*",),
) -> dict[str, Any]:
    """A ReFrame system (pure)."""
    return {
        "name": name,
        "descr": descr,
        "hostnames": list(hostnames),
        "modules_system": modules_system,
        "partitions": [dict(p) for p in partitions],
    }


def rfm_config(
    systems: Iterable[Mapping[str, Any]],
    environments: Iterable[Mapping[str, Any]],
    logging: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole ReFrame configuration of a run (pure); ReFrame picks the first system whose
    hostnames match."""
    cfg: dict[str, Any] = {
        "systems": [dict(s) for s in systems],
        "environments": [dict(e) for e in environments],
    }
    if logging is not None:
        cfg["logging"] = logging
    cfg["general"] = [dict(GENERAL)]
    return cfg


def reframe_argv(
    program: str,
    paths: RunPaths,
    checks: Path,
    system: str | None = None,
    *,
    junit: bool = True,
    select: Sequence[str] = (),
) -> list[str]:
    """The ReFrame command line (pure): ``select`` (``-n``, ``-t``, ``-S``) before ``-r``."""
    argv = [program, "-C", str(paths.config), "-c", str(checks)]
    if system is not None:
        argv += ["--system", system]
    argv += ["--prefix", str(paths.prefix), "--report-file", str(paths.report)]
    if junit:
        argv += ["--report-junit", str(paths.junit)]
    return [*argv, "--nocolor", *select, "-r"]


def reframe_environ(
    base: Mapping[str, str], drop: tuple[str, ...] = ("RFM_",), **more: str
) -> dict[str, str]:
    """ReFrame's environment (pure): ``base`` without the variables starting with ``drop`` (another
    ReFrame configuration), no colours, plus ``more``."""
    env = {k: v for k, v in base.items() if not k.startswith(drop)}
    env["RFM_COLORIZE"] = "n"
    env.update(more)
    return env


def find_reframe(error: type[Exception] = ChecksError, fix: str = "") -> str:
    """The ``reframe`` program; refused (as ``error``) saying how to install it."""
    program = find_tool("reframe")
    if program is None:
        raise error(f"ReFrame is not installed; install {REFRAME_PIN} (pip install '{REFRAME_PIN}'){fix}")
    return program


def run_reframe(
    runner: CommandRunner,
    argv: Sequence[str],
    paths: RunPaths,
    cfg: Mapping[str, Any],
    env: Mapping[str, str],
    timeout: float = TIMEOUT,
) -> CommandResult:
    """Write ``cfg`` to ``paths.config``, remove a previous run's reports, run ReFrame (its exit status
    is not checked: the report says what ran)."""
    paths.config.parent.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(yaml.safe_dump(dict(cfg), sort_keys=False), encoding="utf-8")
    for stale in (paths.report, paths.junit):
        stale.unlink(missing_ok=True)
    return runner.run(argv, timeout=timeout, env=env, check=False)


def read_report(
    paths: RunPaths, done: CommandResult, no_report_hint: str = "", error: type[Exception] = ChecksError
) -> Any:
    """The JSON report of a finished run; none readable is ``error`` with ReFrame's output tail (or
    ``no_report_hint`` when given: ReFrame writes no report when no test case was selected)."""
    try:
        return json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        if no_report_hint:
            raise error(no_report_hint) from e
        raise error(
            f"ReFrame wrote no readable report ({e}); it exited {done.returncode}:\n{done.tail(30)}"
        ) from e


__all__ = [
    "REFRAME_PIN",
    "TIMEOUT",
    "CommandRunner",
    "HostRunner",
    "RunPaths",
    "find_reframe",
    "local_partition",
    "read_report",
    "reframe_argv",
    "reframe_environ",
    "rfm_config",
    "run_reframe",
    "system",
]
