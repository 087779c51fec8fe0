"""pytest fixtures for compatibility layers: ``compat_layer(family)`` builds once per run and reuses.

``compat_layer`` is a session-scoped factory: ``compat_layer("x86_64")`` returns a
:class:`CompatLayer` (the staged tree, its prefix, a :class:`LayerView` to run its
programs at the prefix).  The first call in a run builds the layer, or reuses the one in
the state directory when its inputs digest is unchanged; :func:`ensure_layer` holds the
layer's file lock meanwhile, so xdist workers asking at the same time wait for one build
and then reuse it.  The state directory is ``--eessi-compat-state DIR``, else
``$EESSI_PIPELINE_COMPAT_TEST_STATE``, else ``<rootdir>/.state/test`` (kept between runs, so
an unchanged layer is never rebuilt).  The layer is the one of the session's stack version
(``--eessi-version``) in the repository ``$EESSI_PIPELINE_REPOSITORY`` (default
``software.eessi.local``), so ``eessi-pipeline run`` tests exactly the layer it publishes.

``--eessi-compat-family FAMILY`` (repeatable) limits the layer tests to those families: a gated run
tests one family's tarball, and its record holds that family's tests only.  Without it they run for
this host's family and every family the host emulates (:func:`layer_families`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..pytest_plugin import add_state_option, session_version, state_dir_of
from .backend import BuildRequest, get_backend
from .layout import LayerSpec
from .packageset import load_package_set
from .runner import LayerView
from .state import BuildRecord, ensure_layer

STATE_ENV = "EESSI_PIPELINE_COMPAT_TEST_STATE"
TEST_VERSION = "2023.06"  # the matrix default; the fixture follows the session's version
TEST_REPOSITORY = "software.eessi.local"


@dataclass(frozen=True, slots=True)
class CompatLayer:
    spec: LayerSpec
    record: BuildRecord
    reused: bool
    view: LayerView

    @property
    def staging(self) -> Path:
        return self.spec.staging

    @property
    def prefix(self) -> str:
        return self.spec.prefix


def pytest_addoption(parser: pytest.Parser) -> None:
    add_state_option(parser, "--eessi-compat-state", STATE_ENV, "the compatibility layers tests build")
    parser.getgroup("eessi-pipeline").addoption(
        "--eessi-compat-family",
        metavar="FAMILY",
        action="append",
        default=[],
        help="test only this family's compatibility layer (repeatable; default: this host's family and "
        "every family it runs under emulation)",
    )


def layer_families(config: pytest.Config, available: list[str]) -> list[str]:
    """The families whose layer tests this run generates: ``available`` (host first), or those named
    with ``--eessi-compat-family`` (a name that is not available is a usage error)."""
    chosen = list(dict.fromkeys(config.getoption("--eessi-compat-family") or []))
    unknown = [f for f in chosen if f not in available]
    if unknown:
        raise pytest.UsageError(
            f"--eessi-compat-family {', '.join(unknown)}: no package set for it here; "
            f"choose from {', '.join(available)}"
        )
    return chosen or available


def compat_state_dir(config: pytest.Config) -> Path:
    return state_dir_of(config, "--eessi-compat-state", STATE_ENV)


@pytest.fixture(scope="session")
def compat_layer(pytestconfig: pytest.Config) -> Callable[[str], CompatLayer]:
    """Factory: the built (or reused) compatibility layer of a CPU family, built with the debian backend."""
    cache: dict[str, CompatLayer] = {}
    state = compat_state_dir(pytestconfig)
    from ..settings import REPOSITORY_ENV

    version = session_version(pytestconfig)
    repository = os.environ.get(REPOSITORY_ENV) or TEST_REPOSITORY

    def get(family: str) -> CompatLayer:
        if family not in cache:
            spec = LayerSpec.create(version, family, state, repository=repository)
            result = ensure_layer(get_backend("debian"), BuildRequest(spec, load_package_set(family)))
            cache[family] = CompatLayer(
                spec, result.record, result.reused, LayerView.for_host(spec.staging, spec.prefix)
            )
        return cache[family]

    return get
