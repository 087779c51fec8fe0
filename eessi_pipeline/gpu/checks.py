"""Run the GPU checks (``checks/gpu``) for an accelerator target as a software checks run.

The accelerator target becomes one partition of the generated ReFrame configuration, named after
it (``zen4_cc90``) with its CPU target's processor description; its accelerator ``modules/all`` is on
``MODULEPATH``; ``EESSI_PIPELINE_ACCEL_CC`` tells the device check which compute capability to expect.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..checks.rfmconfig import TargetPrefix
from ..checks.rfmrun import HostRunner
from ..checks.runner import ChecksOutcome, run_checks
from ..matrix import PROJECT_ROOT, AccelTarget, Target

GPU_CHECKS_DIR = PROJECT_ROOT / "checks" / "gpu"
ACCEL_CC_ENV = "EESSI_PIPELINE_ACCEL_CC"


def accel_partition_target(at: AccelTarget) -> Target:
    """The accelerator target as a target of the checks' configuration (pure)."""
    cpu = at.cpu
    return Target(
        at.name, at.subdir, cpu.family, cpu.archspec, cpu.versions, at.accel.runner, cpu.description
    )


def checks_environ(at: AccelTarget, base: Mapping[str, str]) -> dict[str, str]:
    """The environment ReFrame starts from: the expected compute capability added (pure)."""
    env = dict(base)
    env[ACCEL_CC_ENV] = at.accel.cc
    return env


def run_gpu_checks(
    at: AccelTarget, prefix: Path, workdir: Path, environ: Mapping[str, str] | None = None
) -> ChecksOutcome:
    """ReFrame's GPU checks for ``at`` installed under ``prefix`` (``modules/all`` below it)."""
    tp = TargetPrefix(accel_partition_target(at), str(prefix))
    env = checks_environ(at, os.environ if environ is None else environ)
    return run_checks(HostRunner(), tp, workdir, checks=GPU_CHECKS_DIR, environ=env)
