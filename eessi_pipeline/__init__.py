"""eessi-pipeline: a test-first pipeline for EESSI-style scientific software stacks."""

from __future__ import annotations

__version__ = "0.1.0"
