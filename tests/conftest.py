"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def write_cpuinfo(tmp_path: Path):
    """Factory: write cpuinfo text to a file and return its path."""

    def _write(text: str, name: str = "cpuinfo") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return _write
