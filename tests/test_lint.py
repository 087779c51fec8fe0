"""The package passes ruff and mypy --strict (what `tox -e lint` runs), so CI catches both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"{name} is not installed (pip install -e '.[lint]')")
        return found
    return str(exe)


@pytest.mark.slow
def test_lint_ruff_reports_nothing() -> None:
    proc = subprocess.run(
        [_tool("ruff"), "check", "eessi_pipeline", "tests", "conftest.py", "checks", "benchmarks"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_lint_mypy_strict_reports_nothing() -> None:
    proc = subprocess.run(
        [_tool("mypy"), "--strict", "--cache-dir", "/tmp/eessi-pipeline-mypy-cache"],  # files: pyproject
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_lint_ruff_format_reports_nothing() -> None:
    proc = subprocess.run(
        [
            _tool("ruff"),
            "format",
            "--check",
            "eessi_pipeline",
            "tests",
            "conftest.py",
            "checks",
            "benchmarks",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
