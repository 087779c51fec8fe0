"""pytest integration: ``arch_<target>`` markers from the matrix, and fixtures for acceptance tests.

* every matrix target registers a marker ``arch_<name>`` (works with ``--strict-markers``
  and shows in ``pytest --markers``);
* a test that asks for ``arch_target`` runs once per target of the stack version,
  carrying that target's marker, so ``pytest -m arch_zen3`` selects zen3's tests;
* ``build_node`` checks that this host may build the target natively: when the
  target was named in ``-m`` a mismatch fails with the next step, otherwise the
  test is skipped with the reason (the full suite on one machine covers what it can);
* ``software_target`` is ``build_node`` for tests that build and check a target's software:
  they run for the targets named in ``-m`` (or in ``$EESSI_PIPELINE_CHECK_TARGETS``, by default
  those the CI builds) and skip, with the way to select them, for the others;
* ``@pytest.mark.eessi_targets(name, …)`` on a parameter keeps that parameter only in the
  instances of those targets (e.g. a ReFrame case of a module only one stack has): the other
  combinations are deselected, not skipped, so a target's run reports only what applies to it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from .arch.cpuinfo import HostCpu, read_host_cpu
from .arch.emulation import emulators_for
from .arch.select import Selection, Verdict, check_build_node, require_build_node, select_from_environ
from .errors import PipelineError
from .matrix import Matrix, Target, load_matrix
from .settings import VERSION_ENV

# The one plugin pytest loads (entry point ``pytest11`` in pyproject.toml, as pytest-testinfra does): it
# brings the fixtures of the compatibility and software layers, the scheduler option of the ReFrame
# checks and the gate's record writer.
pytest_plugins = (
    "eessi_pipeline.compat.fixtures",
    "eessi_pipeline.software.fixtures",
    "eessi_pipeline.checks.pytest_scheduler",
    "eessi_pipeline.gate.pytest_gate",
)

_MATRIX_KEY = pytest.StashKey[Matrix]()
CHECK_TARGETS_ENV = "EESSI_PIPELINE_CHECK_TARGETS"
DEFAULT_CHECK_TARGETS = "x86_64_generic,zen4"  # what CI builds and checks without -m


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eessi-pipeline")
    group.addoption(
        "--eessi-matrix", metavar="FILE", help="architecture matrix (default: matrices/targets.yaml)"
    )
    group.addoption(
        "--eessi-version",
        metavar="V",
        help=f"stack version (default: ${VERSION_ENV} or the matrix's default)",
    )
    group.addoption(
        "--eessi-run-dir",
        metavar="DIR",
        help="keep this run's ReFrame reports, JUnit and HTML reports in DIR (default: pytest's tmp dir)",
    )
    group.addoption(
        "--eessi-cpuinfo",
        metavar="FILE",
        help="describe the build host from FILE (default: $EESSI_PROC_CPUINFO)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        matrix = load_matrix(config.getoption("--eessi-matrix"))
    except PipelineError as e:
        raise pytest.UsageError(str(e)) from e
    config.stash[_MATRIX_KEY] = matrix
    config.pluginmanager.register(ReportLinks(), "eessi-report-links")
    config.addinivalue_line(
        "markers", "eessi_targets(*names): keep this parameter only in these targets' instances"
    )
    for t in matrix.targets:
        config.addinivalue_line(
            "markers", f"{t.marker}: acceptance tests of {t.subdir} (stack versions {', '.join(t.versions)})"
        )
        for a in t.accelerators:  # GPU targets: arch_<target>_ccXY (issue 19)
            config.addinivalue_line(
                "markers", f"{t.marker}_{a.cc}: GPU acceptance tests of {t.subdir}/{a.subdir}"
            )


def session_version(config: pytest.Config) -> str:
    """This run's stack version: ``--eessi-version``, ``$EESSI_PIPELINE_VERSION`` or the matrix default."""
    matrix = config.stash[_MATRIX_KEY]
    try:
        return matrix.version(config.getoption("--eessi-version") or os.environ.get(VERSION_ENV)).name
    except PipelineError as e:
        raise pytest.UsageError(str(e)) from e


def pytest_report_header(config: pytest.Config) -> list[str]:
    matrix = config.stash[_MATRIX_KEY]
    return [f"eessi-pipeline: matrix {matrix.path}, stack version {session_version(config)}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch_target" not in metafunc.fixturenames:
        return
    config = metafunc.config
    targets = config.stash[_MATRIX_KEY].targets_for(session_version(config))
    metafunc.parametrize(
        "arch_target",
        [pytest.param(t, id=t.name, marks=getattr(pytest.mark, t.marker)) for t in targets],
        indirect=True,
        scope="session",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get("arch_target") if callspec is not None else None
        allowed = [m.args for m in item.iter_markers("eessi_targets")]
        if isinstance(target, Target) and any(target.name not in names for names in allowed):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


REPORT_PROPERTY = "eessi_report"


def add_state_option(parser: pytest.Parser, flag: str, env: str, what: str) -> None:
    """A ``--eessi-<layer>-state DIR`` option: where tests keep ``what`` they build, between runs."""
    parser.getgroup("eessi-pipeline").addoption(
        flag, metavar="DIR", help=f"state directory of {what} (default: ${env}, .state/test)"
    )


def state_dir_of(config: pytest.Config, flag: str, env: str) -> Path:
    """The directory of such an option, else ``$env``, else ``<rootdir>/.state/test``."""
    chosen = config.getoption(flag) or os.environ.get(env)
    return Path(chosen) if chosen else Path(config.rootpath) / ".state" / "test"


def report_link(item: pytest.Item, path: Path) -> None:
    """Name a report people should read; the run's summary lists it (also under pytest-xdist)."""
    item.user_properties.append((REPORT_PROPERTY, str(path)))


class ReportLinks:
    """Collects the reports tests named and lists them at the end of the run."""

    def __init__(self) -> None:
        self.paths: dict[str, None] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == REPORT_PROPERTY:
                self.paths[str(value)] = None

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for path in self.paths:
            terminalreporter.write_line(f"eessi-pipeline: report {path}")


def check_targets() -> list[str]:
    """Targets whose software the suite builds and checks when ``-m`` names none."""
    return [t for t in os.environ.get(CHECK_TARGETS_ENV, DEFAULT_CHECK_TARGETS).split(",") if t]


def explicitly_selected(markexpr: str, target: Target) -> bool:
    """Did the user name this target's marker in ``-m``?"""
    return re.search(rf"(?<![\w]){re.escape(target.marker)}(?![\w])", markexpr or "") is not None


@pytest.fixture(scope="session")
def eessi_matrix(pytestconfig: pytest.Config) -> Matrix:
    """The loaded architecture matrix."""
    return pytestconfig.stash[_MATRIX_KEY]


@pytest.fixture(scope="session")
def eessi_version(pytestconfig: pytest.Config) -> str:
    """The stack version under test."""
    return session_version(pytestconfig)


@pytest.fixture(scope="session")
def host_cpu(pytestconfig: pytest.Config) -> HostCpu:
    """This build host's CPU (or the one described by ``--eessi-cpuinfo``)."""
    return read_host_cpu(pytestconfig.getoption("--eessi-cpuinfo"))


@pytest.fixture(scope="session")
def host_selection(host_cpu: HostCpu, eessi_matrix: Matrix, eessi_version: str) -> Selection:
    """The target selection for this host, honouring ``EESSI_SOFTWARE_SUBDIR_OVERRIDE``."""
    return select_from_environ(host_cpu, eessi_matrix, eessi_version, os.environ)


@pytest.fixture(scope="session")
def arch_target(request: pytest.FixtureRequest) -> Target:
    """The matrix entry of the target this test instance is for (parametrised per target)."""
    target = request.param
    if not isinstance(target, Target):
        raise TypeError("arch_target is parametrised by eessi_pipeline.pytest_plugin only")
    return target


@pytest.fixture(scope="session")
def build_node(
    request: pytest.FixtureRequest,
    arch_target: Target,
    host_cpu: HostCpu,
    eessi_matrix: Matrix,
    eessi_version: str,
) -> Verdict:
    """The build-node verdict for ``arch_target``: fails or skips when this host may not build it."""
    emulators = emulators_for(host_cpu, arch_target)
    verdict = check_build_node(host_cpu, arch_target, eessi_matrix, emulators)
    if verdict.ok:
        return verdict
    message = f"not a build node for {arch_target.name}: {'; '.join(verdict.reasons)}"
    try:
        require_build_node(host_cpu, arch_target, eessi_matrix, eessi_version, emulators)
    except PipelineError as e:
        message = str(e)
    if explicitly_selected(request.config.getoption("markexpr"), arch_target):
        pytest.fail(message, pytrace=False)
    pytest.skip(f"not a build node for {arch_target.name}: {'; '.join(verdict.reasons)}")


@pytest.fixture(scope="session")
def software_target(request: pytest.FixtureRequest, arch_target: Target, build_node: Verdict) -> Target:
    """``arch_target`` when its software is to be built and checked in this run (else skip)."""
    if arch_target.name not in check_targets() and not explicitly_selected(
        request.config.getoption("markexpr"), arch_target
    ):
        pytest.skip(f"{arch_target.name}: select it with -m {arch_target.marker} (or ${CHECK_TARGETS_ENV})")
    return arch_target


@pytest.fixture(scope="session")
def eessi_run_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run keeps its reports: ``--eessi-run-dir`` or a fresh temporary directory."""
    chosen = pytestconfig.getoption("--eessi-run-dir")
    if not chosen:
        return tmp_path_factory.mktemp("eessi-run")
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path
