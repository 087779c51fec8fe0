"""Stacks as data: ``matrices/stacks.yaml`` (which easystack each target gets, where sources come from)
and the EasyBuild easystack files it names, loaded into frozen dataclasses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..matrix import PROJECT_ROOT, Target
from ..schema import validate
from ..yamlio import load_yaml
from .easyconfig import EasyConfig, parse_easyconfig

DEFAULT_STACKS = PROJECT_ROOT / "matrices" / "stacks.yaml"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Where a source not kept in git comes from: ``kind`` is ``debian`` or ``pypi``."""

    kind: str
    what: str


@dataclass(frozen=True, slots=True)
class DebianArchive:
    mirror: str
    suite: str
    components: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EasystackEntry:
    easyconfig: str
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Stack:
    """One easystack of a version with the easyconfigs it installs."""

    name: str
    version: str
    easystack: Path
    description: str
    entries: tuple[EasystackEntry, ...]
    easyconfigs: tuple[EasyConfig, ...]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(ec.module for ec in self.easyconfigs)


@dataclass(frozen=True, slots=True)
class StackConfig:
    path: Path
    easyconfig_dir: Path
    repo_sources: Path
    defaults: tuple[tuple[str, str], ...]  # version -> default stack
    stack_files: tuple[tuple[str, str, Path, str], ...]  # version, name, easystack, description
    assignments: tuple[tuple[str, str, str], ...]  # version, target, stack
    providers: tuple[tuple[str, ProviderSpec], ...]
    debian: DebianArchive

    def stack_name_for(self, version: str, target: Target) -> str:
        """Which stack ``target`` gets in ``version`` (pure)."""
        for v, t, s in self.assignments:
            if v == version and t == target.name:
                return s
        for v, s in self.defaults:
            if v == version:
                return s
        known = ", ".join(v for v, _ in self.defaults)
        raise BuildError(f"{self.path}: no stacks for version {version!r}; add it under `versions` ({known})")

    def provider(self, filename: str) -> ProviderSpec | None:
        return dict(self.providers).get(filename)

    def stack(self, version: str, name: str) -> Stack:
        for v, n, easystack, description in self.stack_files:
            if v == version and n == name:
                entries = load_easystack(easystack)
                ecs = tuple(parse_easyconfig(self.find_easyconfig(e.easyconfig, easystack)) for e in entries)
                return Stack(name, version, easystack, description, entries, ecs)
        names = [n for v, n, _, _ in self.stack_files if v == version]
        raise BuildError(
            f"{self.path}: version {version} has no stack {name!r}; use one of: {', '.join(names)}"
        )

    def stack_for(self, version: str, target: Target) -> Stack:
        return self.stack(version, self.stack_name_for(version, target))

    def find_easyconfig(self, filename: str, easystack: Path) -> Path:
        """``<easyconfigs>/<letter>/<Name>/<file>``, found by file name (EasyBuild's robot does the same)."""
        hits = sorted(self.easyconfig_dir.rglob(filename))
        if not hits:
            raise BuildError(
                f"{easystack}: easyconfig {filename} not found under {self.easyconfig_dir}; fix: add it as "
                f"{self.easyconfig_dir}/<letter>/<Name>/{filename} or correct the easystack entry"
            )
        return hits[0]


def load_easystack(path: Path) -> tuple[EasystackEntry, ...]:
    """Read an EasyBuild easystack file (``easyconfigs:`` list of names or ``{name: {options: …}}``)."""
    raw = load_yaml(path, BuildError)
    items = raw.get("easyconfigs") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise BuildError(f"{path}: expected a non-empty `easyconfigs:` list (EasyBuild easystack format)")
    entries: list[EasystackEntry] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            entries.append(EasystackEntry(item, ()))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, spec),) = item.items()
            opts = spec.get("options", {}) if isinstance(spec, dict) else None
            if not isinstance(name, str) or not isinstance(opts, dict):
                raise BuildError(f"{path}: easyconfigs[{i}]: expected `NAME.eb: {{options: {{...}}}}`")
            entries.append(EasystackEntry(name, tuple(sorted((str(k), str(v)) for k, v in opts.items()))))
        else:
            raise BuildError(f"{path}: easyconfigs[{i}]: expected a file name or a one-key mapping")
        if not entries[-1].easyconfig.endswith(".eb"):
            raise BuildError(f"{path}: easyconfigs[{i}]: {entries[-1].easyconfig!r} is not an .eb file name")
    return tuple(entries)


def load_stacks(path: Path | None = None) -> StackConfig:
    """Load and validate ``matrices/stacks.yaml``; every problem names file, key and fix."""
    p = path or DEFAULT_STACKS
    data: dict[str, Any] = validate(load_yaml(p, BuildError), "stacks", p, BuildError)
    base = p.parent
    defaults, files, assignments = [], [], []
    for version, v in data["versions"].items():
        if v["default_stack"] not in v["stacks"]:
            raise BuildError(
                f"{p}: versions.{version}.default_stack: {v['default_stack']!r} is not under `stacks`; "
                f"fix: use one of {sorted(v['stacks'])}"
            )
        defaults.append((version, v["default_stack"]))
        for name, s in v["stacks"].items():
            files.append((version, name, base / s["easystack"], s["description"]))
        for target, stack in v["targets"].items():
            if stack not in v["stacks"]:
                raise BuildError(
                    f"{p}: versions.{version}.targets.{target}: {stack!r} is not under `stacks`; "
                    f"fix: use one of {sorted(v['stacks'])}"
                )
            assignments.append((version, target, stack))
    providers = []
    for filename, spec in sorted(data["sources"].items()):
        ((kind, what),) = spec.items()
        providers.append((filename, ProviderSpec(kind, what)))
    deb = data["debian"]
    return StackConfig(
        path=p,
        easyconfig_dir=base / data["easyconfigs"],
        repo_sources=base / data["repo_sources"],
        defaults=tuple(defaults),
        stack_files=tuple(files),
        assignments=tuple(assignments),
        providers=tuple(providers),
        debian=DebianArchive(deb["mirror"], deb["suite"], tuple(deb["components"])),
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
