"""Smoke checks per module as data: ``matrices/smoke.yaml`` (module name → command, regex, description).

The one loader of that file, for the pipeline and for the ReFrame check files
(``checks/software/software_checks.py``, ``checks/gpu/gpu_checks.py``, through
``checks/rfmlib.py``): it validates against ``schemas/smoke.schema.json``, compiles every regex,
resolves the generic fallback for a module, and tells which modules of the stacks have no entry
(:func:`uncovered`), so that a module added to an easystack without a smoke check is refused
before ReFrame runs.  Errors name file, key and fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..matrix import PROJECT_ROOT
from ..schema import validate
from ..yamlio import load_yaml
from .references import ChecksError

SMOKE_FILE = PROJECT_ROOT / "matrices" / "smoke.yaml"
SMOKE_ENV = "EESSI_PIPELINE_SMOKE"
EBROOT_TOKEN = "{ebroot}"


def ebroot_variable(module_name: str) -> str:
    """EasyBuild's root variable of a module (``SciPy-bundle`` → ``EBROOTSCIPYMINBUNDLE``; pure)."""
    converted = module_name.replace("+", "plus").replace("-", "min").replace(".", "")
    return "EBROOT" + converted.upper()


@dataclass(frozen=True, slots=True)
class SmokeCheck:
    """What the smoke check of one module runs and expects."""

    module: str
    command: str
    expect: str
    description: str
    fallback: bool  # True: the generic check (explicitly chosen, or no entry)


@dataclass(frozen=True, slots=True)
class SmokeTable:
    path: Path
    fallback: SmokeCheck  # with {ebroot} still in its command
    checks: tuple[SmokeCheck, ...]  # the entries, fallback ones resolved for their module

    def entry(self, module_name: str) -> SmokeCheck | None:
        return next((c for c in self.checks if c.module == module_name), None)

    def check_for(self, module_name: str) -> SmokeCheck:
        """The module's own check, else the fallback resolved for it."""
        return self.entry(module_name) or resolve_fallback(self.fallback, module_name)


def resolve_fallback(fallback: SmokeCheck, module_name: str) -> SmokeCheck:
    command = fallback.command.replace(EBROOT_TOKEN, ebroot_variable(module_name))
    return SmokeCheck(module_name, command, fallback.expect, fallback.description, True)


def _compiled(path: Path, where: str, pattern: str) -> str:
    try:
        re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ChecksError(
            f"{path}: {where}.expect: {pattern!r} is not a valid regex ({e}); fix: correct it "
            "(Python re syntax, ^ and $ match at line ends)"
        ) from e
    return pattern


def parse_smoke(data: Any, path: Path) -> SmokeTable:
    """Validate the loaded YAML and return the table (pure)."""
    checked = validate(data, "smoke", path, ChecksError)
    fb = checked["fallback"]
    if EBROOT_TOKEN not in fb["command"]:
        raise ChecksError(
            f"{path}: fallback.command has no {EBROOT_TOKEN}; fix: use {EBROOT_TOKEN} where the module's "
            'EasyBuild root variable goes, e.g. test -d "${ebroot}"'
        )
    fallback = SmokeCheck(
        "*", fb["command"], _compiled(path, "fallback", fb["expect"]), fb["description"], True
    )
    checks = []
    for name, spec in checked["modules"].items():
        if spec.get("fallback"):
            resolved = resolve_fallback(fallback, name)
            checks.append(SmokeCheck(name, resolved.command, resolved.expect, spec["description"], True))
        else:
            expect = _compiled(path, f"modules.{name}", spec["expect"])
            checks.append(SmokeCheck(name, spec["command"], expect, spec["description"], False))
    return SmokeTable(path, fallback, tuple(checks))


def load_smoke(path: Path | None = None) -> SmokeTable:
    """Load and validate the smoke table (default ``matrices/smoke.yaml``)."""
    p = path or SMOKE_FILE
    return parse_smoke(load_yaml(p, ChecksError), p)


def uncovered(table: SmokeTable, modules: Iterable[str]) -> list[str]:
    """Modules (``name/version``) with neither an entry nor an explicit fallback, sorted (pure)."""
    return sorted({m for m in modules if table.entry(m.split("/", 1)[0]) is None})


def require_coverage(table: SmokeTable, modules: Iterable[str], what: str) -> None:
    """Refuse modules without a smoke entry, naming them and the fix."""
    missing = uncovered(table, modules)
    if missing:
        names = ", ".join(missing)
        raise ChecksError(
            f"{table.path}: no smoke check for {names} ({what}); fix: add each under `modules:` with "
            "description, command and expect, or with `fallback: true` for the generic check"
        )


__all__ = [
    "SMOKE_ENV",
    "SMOKE_FILE",
    "SmokeCheck",
    "SmokeTable",
    "ebroot_variable",
    "load_smoke",
    "parse_smoke",
    "require_coverage",
    "resolve_fallback",
    "uncovered",
]
