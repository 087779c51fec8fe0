"""The interface every compatibility-layer backend implements, and the table of backends.

A backend turns a :class:`BuildRequest` (a layer spec and its package set) into a
staged layer: ``plan`` says, without side effects, what it would do; ``build``
writes the tree into ``work`` and returns what it did (the pipeline moves ``work``
into place, records the inputs and packs the tarball, the same for every backend).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import CompatError
from .layout import LayerSpec
from .packageset import PackageSet


@dataclass(frozen=True, slots=True)
class BuildRequest:
    spec: LayerSpec
    packages: PackageSet
    refresh: bool = False  # fetch fresh package lists before resolving
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class PlanStep:
    name: str
    detail: str
    command: str = ""


@dataclass(frozen=True, slots=True)
class LayerPlan:
    backend: str
    spec: LayerSpec
    steps: tuple[PlanStep, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.spec.version,
            "family": self.spec.family,
            "prefix": self.spec.prefix,
            "staging": str(self.spec.staging),
            "steps": [{"name": s.name, "detail": s.detail, "command": s.command} for s in self.steps],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class BuildOutcome:
    """What a backend reports about the tree it wrote: installed packages (name -> version) and facts."""

    packages: Mapping[str, str]
    facts: Mapping[str, Any]
    timings: Mapping[str, float]


class Backend(Protocol):
    """A way to build a compatibility layer."""

    name: str

    def plan(self, request: BuildRequest) -> LayerPlan:
        """What ``build`` would do (no side effects)."""
        ...

    def preflight(self, request: BuildRequest) -> None:
        """Raise :class:`CompatError` naming the next step when this machine cannot build the layer."""
        ...

    def build(self, request: BuildRequest, work: Path) -> BuildOutcome:
        """Write the layer into the empty directory ``work``, for ``request.spec.prefix``."""
        ...

    def code_files(self) -> tuple[Path, ...]:
        """Source files whose content shapes the layer (they are part of the inputs digest)."""
        ...


# The registry names each backend's class as "module:Class" and imports it only when chosen, so this
# module (which the backends import for the Protocol and the request types) imports none of them.
BACKENDS: Mapping[str, str] = {
    "debian": "eessi_pipeline.compat.debian:DebianBackend",
    "gentoo-prefix": "eessi_pipeline.compat.gentoo_prefix:GentooPrefixBackend",
}
DEFAULT_BACKEND = "debian"


def get_backend(name: str) -> Backend:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise CompatError(f"unknown compat backend {name!r}; use one of {', '.join(BACKENDS)}") from None
    factory: Callable[[], Backend] = getattr(importlib.import_module(module), cls)
    return factory()
