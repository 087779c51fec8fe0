"""Optional dependencies: which extra of pyproject.toml brings which module, and a check before use.

A core install (``pip install eessi-pipeline``) has no pytest, ReFrame or EasyBuild.  Commands that
run them say which extra to install instead of failing inside a child process.
"""

from __future__ import annotations

import importlib.util

from .errors import PipelineError

# Top-level module -> the extra that installs it.
EXTRAS = {
    "pytest": "test",
    "_pytest": "test",
    "xdist": "test",
    "hypothesis": "test",
    "testinfra": "test",
    "reframe": "test",
    "eessi": "test",
    "cvmfs_server_scraper": "test",
    "easybuild": "build",
    "spython": "build",
    "ansible": "gentoo",
}


class MissingExtra(PipelineError):
    """A command needs an optional dependency that is not installed."""


def install_hint(module: str) -> str:
    """One line: which extra brings ``module`` and the pip command for it (pure)."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return f"the Python module '{top}' is not installed (reinstall eessi-pipeline: pip install -e .)"
    return (
        f"the Python package '{top}' is not installed; it comes with the '{extra}' extra: "
        f"pip install 'eessi-pipeline[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
    )


def has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingExtra` naming the extra when ``module`` cannot be imported."""
    if not has_module(module):
        raise MissingExtra(f"{purpose} needs {install_hint(module)}")
