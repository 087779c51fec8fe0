"""pytest fixtures for the software layer: ``software_build(target)`` builds once per run and reuses.

``software_build`` is a session-scoped factory: ``software_build("zen4")`` returns the
:class:`~eessi_pipeline.software.driver.BuildResult` of that target's stack.  The build holds the target's
file lock (``record.lock``), so xdist workers asking at the same time wait for one build and then reuse
it; a later run reuses it too while the inputs digest (easystack, easyconfigs, source checksums, target,
EasyBuild version, hooks, flags) is unchanged.  The state directory is ``--eessi-build-state DIR``, else
``$EESSI_PIPELINE_BUILD_TEST_STATE``, else ``<rootdir>/.state/test``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ..matrix import load_matrix
from ..pytest_plugin import add_state_option, session_version, state_dir_of
from ..settings import DEFAULT_REPOSITORY
from .driver import BuildPlan, BuildResult, ensure_build
from .stacks import load_stacks

STATE_ENV = "EESSI_PIPELINE_BUILD_TEST_STATE"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_state_option(parser, "--eessi-build-state", STATE_ENV, "the software builds tests make")


def build_state_dir(config: pytest.Config) -> Path:
    return state_dir_of(config, "--eessi-build-state", STATE_ENV)


@pytest.fixture(scope="session")
def software_build(pytestconfig: pytest.Config) -> Callable[[str], BuildResult]:
    """Factory: the built (or reused) CI stack of a target, with its tarball."""
    cache: dict[str, BuildResult] = {}
    state = build_state_dir(pytestconfig)

    def get(target: str) -> BuildResult:
        if target not in cache:
            matrix, stacks = load_matrix(), load_stacks()
            plan = BuildPlan.create(
                matrix,
                stacks,
                matrix.target(target),
                session_version(pytestconfig),
                DEFAULT_REPOSITORY,
                state,
            )
            cache[target] = ensure_build(plan, stacks)
        return cache[target]

    return get
