"""Run tests of the EESSI test-suite (PyPI ``eessi-testsuite``) against a built software layer.

The test-suite's tests find their software with ``find_modules(<regex>)`` while ReFrame loads them, so
ReFrame must run where the target's ``/cvmfs`` prefix is visible (the build overlay's namespace, or a
host with a client mount) with the target's ``modules/all`` on ``MODULEPATH`` and Lmod as its
modules system.  The configuration (:func:`suite_config`, pure) is what the suite's hooks need
(as its own documentation describes): one local partition with feature ``cpu`` and the
single-node scale names as features, ``extras.mem_per_node`` in MiB, and the processor described
explicitly (``num_cpus`` and friends).  The suite's ``set_common_required_config`` is not used: it
adds environments that load an ``EESSI/<version>`` module this pipeline does not build.

A run is kept short with ReFrame's selection (one class, one scale tag) and ``-S`` settings (small
problem sizes); each test is described as data in :data:`SUITE_TESTS`.  The JSON report is judged
by :mod:`eessi_pipeline.checks.report`: no case at all is a failure.

ReFrame 4.10.1-4.10.x reject the suite's names (features starting with a digit); the project pins
reframe-hpc 4.10.0.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..software.easybuild import LMOD_INIT
from .references import ChecksError
from .rfmconfig import TargetPrefix, partition_name, processor_info
from .rfmrun import (
    CommandRunner,
    RunPaths,
    find_reframe,
    local_partition,
    reframe_argv,
    reframe_environ,
    rfm_config,
    run_reframe,
    system,
)
from .runner import LMOD_CMD, ChecksOutcome, outcome_of

log = logging.getLogger(__name__)

TESTSUITE_PIN = "eessi-testsuite==1.1.0"
SYSTEM = "eessi_testsuite"
ENVIRON = "default"
TIMEOUT = 900.0
NO_CASES = "Ran 0/0 test case(s)"
# Scales of eessi-testsuite 1.1.0 (eessi.testsuite.constants.SCALES) that fit on one node; the
# partition offers these as features (the suite's filter_supported_scales asks for `+<scale>`).
SINGLE_NODE_SCALES = (
    "1_core", "2_cores", "4_cores", "8_cores", "1_8_node", "1_4_node", "1_2_node", "1_node",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SuiteTest:
    """One test of the suite and how the pipeline runs it briefly."""

    name: str  # the pipeline's name for it, e.g. numpy
    path: str  # its directory inside the installed package eessi/testsuite/
    check: str  # the ReFrame class
    module: str  # the module name the test looks for (its find_modules regex)
    setvars: tuple[tuple[str, str], ...]  # ReFrame -S settings: small sizes, fixes


# NumPy: 512x512 matrices, 2 iterations (the default 8192 takes minutes).  The wheel installs
# np_ops.py without its executable bit, so the script is run by python3 instead of `./np_ops.py`
# (user_executable_opts replaces the test's options; it is the suite's own override variable).
_NUMPY_ARGS = "--matrix-size 512 --iterations 2 --iterations-eigen 1"
SUITE_TESTS: dict[str, SuiteTest] = {
    "numpy": SuiteTest(
        "numpy",
        "tests/apps/numpy",
        "EESSI_NumPy",
        "SciPy-bundle",
        (
            ("matrix_size", "512"),
            ("iterations", "2"),
            ("iterations_eigen", "1"),
            ("executable", "python3"),
            ("user_executable_opts", f"np_ops.py {_NUMPY_ARGS}"),
        ),
    ),
}


def suite_test(name: str) -> SuiteTest:
    try:
        return SUITE_TESTS[name]
    except KeyError:
        raise ChecksError(
            f"no EESSI test-suite test named {name!r}; use one of: {', '.join(sorted(SUITE_TESTS))}"
        ) from None


def suite_config(
    tp: TargetPrefix, num_cpus: int, mem_per_node_mib: int, logdir: Path, max_jobs: int = 1
) -> dict[str, Any]:
    """The ReFrame configuration of a test-suite run on this host for one target (pure)."""
    if num_cpus < 1 or mem_per_node_mib < 1:
        raise ChecksError(
            f"cannot describe the partition: {num_cpus} CPUs, {mem_per_node_mib} MiB memory; both must be > 0"
        )
    partition = local_partition(
        partition_name(tp.target),
        f"processes on this host, software of {tp.target.subdir}",
        ENVIRON,
        max_jobs,
        features=["cpu", *SINGLE_NODE_SCALES],
        extras={"mem_per_node": mem_per_node_mib},
        env_vars=tp.env_vars,
        processor=processor_info(tp.target, num_cpus),
    )
    descr = "this host, running EESSI test-suite tests on one target's modules"
    return rfm_config(
        [system(SYSTEM, descr, "lmod", [partition])],
        [{"name": ENVIRON}],
        logging=[
            {
                "level": "debug",
                "handlers": [
                    {"type": "stream", "name": "stdout", "level": "info", "format": "%(message)s"},
                    {
                        "type": "file",
                        "name": str(logdir / "reframe.log"),
                        "level": "debug",
                        "format": "[%(asctime)s] %(levelname)s: %(check_info)s: %(message)s",
                        "append": False,
                    },
                ],
                "handlers_perflog": [
                    {
                        "type": "filelog",
                        "prefix": "%(check_system)s/%(check_partition)s",
                        "basedir": str(logdir / "perflogs"),
                        "level": "info",
                        "format": "%(check_job_completion_time)s|%(check_info)s|%(check_perfvalues)s",
                        "format_perfvars": "%(check_perf_var)s=%(check_perf_value)s %(check_perf_unit)s|",
                        "append": True,
                    }
                ],
            }
        ],
    )


def suite_argv(
    program: str, paths: RunPaths, checks: Path, system: str, test: SuiteTest, scale: str
) -> list[str]:
    """The ReFrame command line of one test at one scale (pure)."""
    return reframe_argv(program, paths, checks, system, select=suite_selection(test, scale))


def suite_selection(test: SuiteTest, scale: str) -> list[str]:
    """ReFrame's selection of one test at one scale, with its ``-S`` settings (pure)."""
    if scale not in SINGLE_NODE_SCALES:
        raise ChecksError(
            f"scale {scale!r} does not fit the one-node local partition; use one of: "
            f"{', '.join(SINGLE_NODE_SCALES)}"
        )
    select = ["-n", f"^{test.check}\\b", "-t", f"^{scale}$"]
    for key, value in test.setvars:
        select += ["-S", f"{test.check}.{key}={value}"]
    return select


def suite_env(
    tp: TargetPrefix, base: Mapping[str, str], *, as_root: bool = False, tmpdir: Path | None = None
) -> dict[str, str]:
    """ReFrame's environment for a test-suite run (pure): Lmod found, the target's modules visible."""
    drop = ("RFM_", "LMOD_", "_LMOD", "__LMOD", "LOADEDMODULES", "_LMFILES_")
    env = reframe_environ(base, drop, MODULEPATH=tp.modulepath, LMOD_CMD=LMOD_CMD)
    # the suite sets up EasyBuild's configuration at import when EasyBuild is installed (for its
    # toolchain helpers); EasyBuild refuses to configure itself as root unless told
    env = {k: v for k, v in env.items() if not k.startswith("EASYBUILD_")}
    if as_root:
        env["EASYBUILD_ALLOW_USE_AS_ROOT_AND_ACCEPT_CONSEQUENCES"] = "1"
    if tmpdir is not None:  # EasyBuild's scratch log directory, else a new /tmp/eb-* per run
        env["EASYBUILD_TMPDIR"] = str(tmpdir)
    # job scripts are non-login bash: BASH_ENV gives them the `module` function
    env.setdefault("BASH_ENV", LMOD_INIT)
    return env


def installed_testsuite() -> Path:
    """The installed ``eessi/testsuite`` package directory; refuses when it is not installed."""
    spec = importlib.util.find_spec("eessi.testsuite") if importlib.util.find_spec("eessi") else None
    if spec is None or spec.origin is None:
        raise ChecksError(
            f"the EESSI test-suite is not installed; install {TESTSUITE_PIN} "
            f"(pip install '{TESTSUITE_PIN}', or the project's `test` extra)"
        )
    version = importlib.metadata.version("eessi-testsuite")
    if version != TESTSUITE_PIN.split("==")[1]:
        log.warning("eessi-testsuite %s is installed; the pipeline is tested with %s", version, TESTSUITE_PIN)
    return Path(spec.origin).parent


def mem_per_node_mib(meminfo: str) -> int:
    """``MemTotal`` of ``/proc/meminfo`` text in MiB (pure)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ChecksError("/proc/meminfo has no MemTotal line; cannot tell the suite the node's memory")


def run_testsuite(
    runner: CommandRunner,
    tp: TargetPrefix,
    workdir: Path,
    *,
    test: str = "numpy",
    scale: str = "1_core",
    environ: Mapping[str, str] | None = None,
) -> ChecksOutcome:
    """Run one EESSI test-suite test at one scale against a target's modules; report in ``workdir``.

    ``runner`` runs ReFrame where the target's prefix is visible (``BuildResult.overlay``, or
    :class:`~eessi_pipeline.checks.runner.HostRunner` on a client).  The outcome's ``result.ok`` is the
    verdict (False when no case ran)."""
    chosen = suite_test(test)
    checks = installed_testsuite() / chosen.path
    if not checks.is_dir():
        raise ChecksError(f"{checks}: the test-suite has no such test directory; reinstall {TESTSUITE_PIN}")
    program = find_reframe()
    workdir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths.under(workdir.resolve())
    memory = mem_per_node_mib(Path("/proc/meminfo").read_text(encoding="utf-8"))
    cfg = suite_config(tp, os.cpu_count() or 1, memory, workdir.resolve())
    system = f"{SYSTEM}:{partition_name(tp.target)}"
    tmpdir = workdir.resolve() / "easybuild-tmp"
    tmpdir.mkdir(exist_ok=True)
    base = os.environ if environ is None else environ
    env = suite_env(tp, base, as_root=os.geteuid() == 0, tmpdir=tmpdir)
    argv = suite_argv(program, paths, checks, system, chosen, scale)
    done = run_reframe(runner, argv, paths, cfg, env, TIMEOUT)
    hint = ""
    if done.returncode == 0 and NO_CASES in done.stdout + done.stderr:
        # ReFrame writes no report when nothing was selected: the test found no module
        hint = (
            f"the EESSI test-suite's {chosen.check} found no {chosen.module} module in "
            f"{tp.modulepath}, so ReFrame ran no test case; fix: build a stack with {chosen.module} "
            f"for {tp.target.name} (and run where its prefix is visible)"
        )
    return outcome_of(tp, paths, done, hint)


__all__ = [
    "ENVIRON",
    "SINGLE_NODE_SCALES",
    "SUITE_TESTS",
    "SYSTEM",
    "TESTSUITE_PIN",
    "SuiteTest",
    "installed_testsuite",
    "mem_per_node_mib",
    "run_testsuite",
    "suite_argv",
    "suite_config",
    "suite_env",
    "suite_selection",
    "suite_test",
]
