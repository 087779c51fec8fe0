"""Stacks as data: ``matrices/stacks.yaml`` (which easystack each target gets, where sources come from)
and the EasyBuild easystack files it names, loaded into frozen dataclasses.

Each stack names its top-level ``toolchain`` and where EasyBuild's robot finds easyconfigs (``robot``):

* ``toolchain: SYSTEM`` with ``robot: [project]`` (the defaults): the embedded CI stacks.  Every
  easyconfig is this project's own (``matrices/easyconfigs``), builds with the host's compiler, and has
  its sources provisioned offline (:mod:`eessi_pipeline.software.sources`).
* a real EESSI toolchain (e.g. ``foss-2023a``) with ``robot: [project, easybuild]``: a production
  stack resolved against the easyconfigs shipped with EasyBuild (the ``easybuild-easyconfigs`` package
  installed beside the framework), as EESSI's easystacks are.  EasyBuild downloads those sources
  from their ``source_urls`` itself, so such a stack builds only where those sites can be reached.

``family_easyconfigs`` names, per CPU family, a directory searched before the project's own for that
family's targets: an easyconfig whose sources differ by family (NumPy's wheel is per platform, and
EasyBuild's ``arch=`` keys and ``%(arch)s`` name the *build host's* family, which under emulation is not
the target's) keeps its name and module there, so every family's stack lists the same easyconfigs.

``compat_layer: true`` links a stack's installations to the version's compatibility layer after
EasyBuild has installed them (:mod:`eessi_pipeline.software.compatlink`); the default keeps the host's
loader and C library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..matrix import PROJECT_ROOT, Target
from ..schema import validate
from ..yamlio import load_yaml
from .easyconfig import SYSTEM, EasyConfig, parse_easyconfig

DEFAULT_STACKS = PROJECT_ROOT / "matrices" / "stacks.yaml"
EASYCONFIGS_PIN = "easybuild-easyconfigs==5.4.1"


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
class StackFile:
    """One ``versions.<v>.stacks.<name>`` entry of ``stacks.yaml``."""

    version: str
    name: str
    easystack: Path
    description: str
    toolchain: str  # "SYSTEM" or the top-level toolchain, e.g. "foss-2023a"
    robot: tuple[str, ...]  # "project" and/or "easybuild", in search order
    compat_layer: bool = False  # link the installations to the version's compatibility layer


@dataclass(frozen=True, slots=True)
class Stack:
    """One easystack of a version with the easyconfigs it installs (top-level entries only)."""

    name: str
    version: str
    easystack: Path
    description: str
    entries: tuple[EasystackEntry, ...]
    easyconfigs: tuple[EasyConfig, ...]
    toolchain: str = SYSTEM
    robot_paths: tuple[Path, ...] = ()
    compat_layer: bool = False  # see :mod:`eessi_pipeline.software.compatlink`

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(ec.module for ec in self.easyconfigs)

    @property
    def embedded(self) -> bool:
        """A SYSTEM-toolchain stack of this project's own easyconfigs with sources provisioned offline."""
        return self.toolchain == SYSTEM


def easybuild_easyconfigs_dir(prefixes: Sequence[str] | None = None) -> Path:
    """The easyconfigs shipped with EasyBuild: ``<prefix>/easybuild/easyconfigs`` of the installation
    (the package ``easybuild-easyconfigs`` installs them under the environment's prefix; EasyBuild's
    own default robot path searches ``sys.path`` and the ``eb`` script's prefix the same way)."""
    for prefix in prefixes if prefixes is not None else (sys.prefix, *sys.path):
        candidate = Path(prefix) / "easybuild" / "easyconfigs"
        if candidate.is_dir():
            return candidate
    raise BuildError(
        f"EasyBuild's own easyconfigs are not installed in {sys.prefix}; a stack with `robot: [..., "
        f"easybuild]` needs them: run `.venv/bin/pip install '{EASYCONFIGS_PIN}'`"
    )


def toolchain_problems(stack: Stack) -> list[str]:
    """Why the stack's easyconfigs do not fit its ``toolchain`` setting (pure; empty when they do)."""
    problems = []
    if stack.toolchain == SYSTEM:
        for ec in stack.easyconfigs:
            if ec.toolchain != SYSTEM:
                problems.append(
                    f"{ec.path.name} uses toolchain {ec.toolchain}, but stack {stack.name} says "
                    "`toolchain: SYSTEM`; fix: name the stack's real toolchain (e.g. foss-2023a) and add "
                    "`easybuild` to its `robot`, or use a SYSTEM-toolchain easyconfig"
                )
    elif not any(
        any(d.glob(f"{stack.toolchain[0].lower()}/*/{stack.toolchain}.eb")) for d in stack.robot_paths
    ):
        problems.append(
            f"stack {stack.name} says `toolchain: {stack.toolchain}`, but {stack.toolchain}.eb is in none of "
            f"its robot paths ({', '.join(map(str, stack.robot_paths))}); fix: add `easybuild` to its "
            "`robot` or correct the toolchain name"
        )
    return problems


@dataclass(frozen=True, slots=True)
class StackConfig:
    path: Path
    easyconfig_dir: Path
    repo_sources: Path
    defaults: tuple[tuple[str, str], ...]  # version -> default stack
    stack_files: tuple[StackFile, ...]
    assignments: tuple[tuple[str, str, str], ...]  # version, target, stack
    providers: tuple[tuple[str, ProviderSpec], ...]
    debian: DebianArchive
    family_dirs: tuple[tuple[str, Path], ...] = ()  # family -> easyconfigs searched first for its targets

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

    def robot_paths(self, robot: tuple[str, ...], family: str | None = None) -> tuple[Path, ...]:
        """The directories EasyBuild's robot searches, in order, for a stack's ``robot`` setting; for a
        target of ``family``, ``project`` is that family's own easyconfigs first (if any), then the
        project's."""
        own = [d for f, d in self.family_dirs if f == family] + [self.easyconfig_dir]
        return tuple(p for r in robot for p in (own if r == "project" else [easybuild_easyconfigs_dir()]))

    def stack(self, version: str, name: str, family: str | None = None) -> Stack:
        """Stack ``name`` of ``version``; ``family`` (the target's CPU family) picks the family's own
        easyconfigs where ``family_easyconfigs`` has some."""
        for f in self.stack_files:
            if f.version == version and f.name == name:
                entries = load_easystack(f.easystack)
                paths = self.robot_paths(f.robot, family)
                project = (self.easyconfig_dir, *(d for _, d in self.family_dirs))
                ecs = []
                for e in entries:
                    found = self.find_easyconfig(e.easyconfig, f.easystack, paths)
                    # sources of the project's own easyconfigs are provisioned offline; EasyBuild
                    # fetches those of its shipped easyconfigs itself
                    own = any(found.is_relative_to(d) for d in project)
                    ecs.append(parse_easyconfig(found, with_sources=own))
                stack = Stack(
                    name,
                    version,
                    f.easystack,
                    f.description,
                    entries,
                    tuple(ecs),
                    f.toolchain,
                    paths,
                    f.compat_layer,
                )
                problems = toolchain_problems(stack)
                if problems:
                    raise BuildError(f"{self.path}: versions.{version}.stacks.{name}: {problems[0]}")
                return stack
        names = [f.name for f in self.stack_files if f.version == version]
        raise BuildError(
            f"{self.path}: version {version} has no stack {name!r}; use one of: {', '.join(names)}"
        )

    def stack_for(self, version: str, target: Target) -> Stack:
        return self.stack(version, self.stack_name_for(version, target), target.family)

    def find_easyconfig(self, filename: str, easystack: Path, robot_paths: tuple[Path, ...] = ()) -> Path:
        """``<dir>/<letter>/<Name>/<file>`` in the first robot path that has it (EasyBuild's robot does the
        same); the project's own directory only, unless ``robot_paths`` says otherwise."""
        for d in robot_paths or (self.easyconfig_dir,):
            hits = sorted(d.glob(f"{filename[0].lower()}/*/{filename}"))
            if not hits and d == self.easyconfig_dir:
                hits = sorted(d.rglob(filename))
            if hits:
                return hits[0]
        where = ", ".join(str(d) for d in robot_paths or (self.easyconfig_dir,))
        raise BuildError(
            f"{easystack}: easyconfig {filename} not found under {where}; fix: add it as "
            f"{self.easyconfig_dir}/<letter>/<Name>/{filename}, correct the easystack entry, or (for an "
            "easyconfig shipped with EasyBuild) add `easybuild` to the stack's `robot`"
        )


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
            files.append(
                StackFile(
                    version,
                    name,
                    base / s["easystack"],
                    s["description"],
                    s["toolchain"],
                    tuple(s["robot"]),
                    bool(s["compat_layer"]),
                )
            )
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
        family_dirs=tuple(sorted((f, base / d) for f, d in data.get("family_easyconfigs", {}).items())),
    )
