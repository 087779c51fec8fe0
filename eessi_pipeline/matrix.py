"""The architecture matrix: loading ``matrices/targets.yaml`` into frozen dataclasses.

No raw dict travels past :func:`load_matrix`.  Schema errors and consistency
errors (duplicate names, unknown archspec names, a version without a generic
target, ...) are all reported as :class:`MatrixError` naming file, entry, key and fix.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import archspec.cpu

from .datacache import load_validated
from .errors import MatrixError
from .schema import validate

#: Environment variable naming another matrix file.
MATRIX_ENV = "EESSI_PIPELINE_MATRIX"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class IgnoredFeature:
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    archspec: str
    runner: tuple[str, ...]
    ignore_features: tuple[IgnoredFeature, ...]

    @property
    def generic_subdir(self) -> str:
        return f"{self.name}/generic"

    @property
    def ignored(self) -> frozenset[str]:
        return frozenset(f.name for f in self.ignore_features)


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One accelerator a CPU target is also built for, e.g. NVIDIA compute capability 9.0 (``cc90``)."""

    vendor: str
    cc: str  # "cc90": EESSI's spelling, compute capability without the dot
    runner: tuple[str, ...] = ()
    description: str = ""

    @property
    def subdir(self) -> str:
        """The part EESSI appends to the CPU subdirectory: ``accel/nvidia/cc90``."""
        return f"accel/{self.vendor}/{self.cc}"

    @property
    def compute_capability(self) -> str:
        """``cc90`` -> ``9.0`` (what nvidia-smi and the CUDA runtime report)."""
        digits = self.cc[2:]
        return f"{digits[:-1]}.{digits[-1]}"

    @property
    def sm(self) -> str:
        """The CUDA architecture to compile for: ``cc90`` -> ``sm_90``."""
        return f"sm_{self.cc[2:]}"


@dataclass(frozen=True, slots=True)
class Target:
    """One CPU target of the stack, e.g. ``zen3`` at ``x86_64/amd/zen3``."""

    name: str
    subdir: str
    family: str
    archspec: str
    versions: tuple[str, ...]
    runner: tuple[str, ...]
    description: str = ""
    accelerators: tuple[Accelerator, ...] = ()

    @property
    def marker(self) -> str:
        """The pytest marker selecting this target's acceptance tests."""
        return f"arch_{self.name}"

    @property
    def is_generic(self) -> bool:
        return self.subdir == f"{self.family}/generic"


@dataclass(frozen=True, slots=True)
class AccelTarget:
    """A CPU target with one of its accelerators: ``zen4_cc90`` at ``x86_64/amd/zen4/accel/nvidia/cc90``.

    EESSI installs GPU software in the accelerator subdirectory of the CPU target's prefix; its
    tarball names that whole subdirectory (``cvmfs.tarname.software_tarball``)."""

    cpu: Target
    accel: Accelerator

    @property
    def name(self) -> str:
        return f"{self.cpu.name}_{self.accel.cc}"

    @property
    def subdir(self) -> str:
        return f"{self.cpu.subdir}/{self.accel.subdir}"

    @property
    def marker(self) -> str:
        return f"arch_{self.name}"

    @property
    def versions(self) -> tuple[str, ...]:
        return self.cpu.versions

    def tarball(self, version: str, epoch: int | str) -> str:
        from .cvmfs.tarname import software_tarball

        return software_tarball(version, self.subdir, epoch)


@dataclass(frozen=True, slots=True)
class Matrix:
    path: Path
    sha256: str
    default_version: str
    versions: tuple[Version, ...]
    families: tuple[Family, ...]
    targets: tuple[Target, ...]

    # -- look-ups -----------------------------------------------------------
    def version(self, name: str | None) -> Version:
        name = name or self.default_version
        for v in self.versions:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.versions)
        raise MatrixError(f"unknown stack version {name!r} in {self.path}; use one of: {known}")

    def family(self, name: str) -> Family | None:
        for f in self.families:
            if f.name == name:
                return f
        return None

    def target(self, name: str) -> Target:
        """Find a target by short name (``zen3``) or subdir (``x86_64/amd/zen3``)."""
        for t in self.targets:
            if name in (t.name, t.subdir):
                return t
        choices = [t.name for t in self.targets] + [t.subdir for t in self.targets]
        import difflib  # only on the error path

        close = difflib.get_close_matches(name, choices, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise MatrixError(
            f"unknown target {name!r}{hint}; known targets: {', '.join(t.name for t in self.targets)}"
            f" (defined in {self.path})"
        )

    def targets_for(self, version: str | None = None) -> tuple[Target, ...]:
        v = self.version(version).name
        return tuple(t for t in self.targets if v in t.versions)

    def accel_targets(self, version: str | None = None) -> tuple[AccelTarget, ...]:
        """Every (CPU target, accelerator) pair of the stack version, in matrix order."""
        return tuple(AccelTarget(t, a) for t in self.targets_for(version) for a in t.accelerators)

    def accel_target(self, name: str) -> AccelTarget:
        """Find an accelerator target by name (``zen4_cc90``) or subdir (``…/zen4/accel/nvidia/cc90``)."""
        every = self.every_accel_target()
        for at in every:
            if name in (at.name, at.subdir):
                return at
        raise MatrixError(
            f"unknown accelerator target {name!r}; known: {', '.join(at.name for at in every) or 'none'}"
            f" (the `accel` entries of targets in {self.path})"
        )

    def every_accel_target(self) -> tuple[AccelTarget, ...]:
        """Every (CPU target, accelerator) pair of every stack version, in matrix order."""
        return tuple(AccelTarget(t, a) for t in self.targets for a in t.accelerators)

    def target_names(self) -> tuple[str, ...]:
        """Names references and gate records may use: CPU targets, then accelerator targets."""
        return tuple(t.name for t in self.targets) + tuple(at.name for at in self.every_accel_target())

    def accel_runner_for(self, at: AccelTarget) -> tuple[str, ...]:
        return at.accel.runner or self.runner_for(at.cpu)

    def runner_for(self, target: Target) -> tuple[str, ...]:
        if target.runner:
            return target.runner
        fam = self.family(target.family)
        return fam.runner if fam else ()


def default_matrix_path() -> Path:
    """``$EESSI_PIPELINE_MATRIX``, else the project's ``matrices/targets.yaml``."""
    env = os.environ.get(MATRIX_ENV)
    if env:
        return Path(env)
    return PROJECT_ROOT / "matrices" / "targets.yaml"


def load_matrix(path: Path | str | None = None) -> Matrix:
    """Load and check a matrix file; raise :class:`MatrixError` listing every problem."""
    p = Path(path) if path is not None else default_matrix_path()
    data, content = load_validated(p, "targets", _parse_and_validate)
    matrix = _build(p, data, content)
    problems = check_consistency(matrix)
    if problems:
        raise MatrixError("\n".join(f"{p}: {msg}" for msg in problems))
    return matrix


def _parse_and_validate(p: Path) -> dict[str, Any]:
    from .yamlio import load_yaml  # PyYAML: only when the file was not checked before (datacache)

    return validate(load_yaml(p, MatrixError), "targets", p, MatrixError)


def _build(path: Path, data: dict[str, Any], content: bytes | None = None) -> Matrix:
    versions = tuple(Version(name, str(v.get("description", ""))) for name, v in data["versions"].items())
    families = tuple(
        Family(
            name=name,
            archspec=f["archspec"],
            runner=tuple(f["runner"]),
            ignore_features=tuple(IgnoredFeature(k, v) for k, v in sorted(f["ignore_features"].items())),
        )
        for name, f in data["families"].items()
    )
    targets = tuple(
        Target(
            name=t["name"],
            subdir=t["subdir"],
            family=t["family"],
            archspec=t["archspec"],
            versions=tuple(t["versions"]),
            runner=tuple(t["runner"]),
            description=t["description"],
            accelerators=tuple(
                Accelerator(a["vendor"], a["cc"], tuple(a["runner"]), a["description"]) for a in t["accel"]
            ),
        )
        for t in data["targets"]
    )
    digest = hashlib.sha256(content if content is not None else path.read_bytes()).hexdigest()
    return Matrix(path, digest, data["default_version"], versions, families, targets)


def check_consistency(m: Matrix) -> list[str]:
    """Checks the schema cannot express; each problem names entry, key and fix."""
    version_names = {v.name for v in m.versions}
    out: list[str] = []
    if m.default_version not in version_names:
        out.append(
            f"default_version: {m.default_version!r} is not a key of `versions`; "
            f"fix: use one of {sorted(version_names)}"
        )
    for fam in m.families:
        root = archspec.cpu.TARGETS.get(fam.archspec)
        if root is None or root.name != fam.name:
            out.append(
                f"families.{fam.name}.archspec: {fam.archspec!r} is not archspec's root for {fam.name}; "
                f"fix: set it to {fam.name!r}"
            )
    out += _repeated_targets(m)
    for i, t in enumerate(m.targets):
        where = f"targets[{i}] ({t.name})"
        out += _target_placement(m, t, where) + _target_archspec(t, where) + _target_accelerators(t, where)
        out += [
            f"{where}.versions: {v!r} is not a key of `versions`; fix: add it there or drop it"
            for v in t.versions
            if v not in version_names
        ]
    return out + _missing_generic(m, version_names)


def _repeated_targets(m: Matrix) -> list[str]:
    out: list[str] = []
    seen_names: dict[str, int] = {}
    seen_subdirs: dict[str, int] = {}
    for i, t in enumerate(m.targets):
        where = f"targets[{i}] ({t.name})"
        if t.name in seen_names:
            out.append(f"{where}.name: {t.name!r} repeats targets[{seen_names[t.name]}]; fix: rename one")
        seen_names.setdefault(t.name, i)
        if t.subdir in seen_subdirs:
            out.append(
                f"{where}.subdir: {t.subdir!r} repeats targets[{seen_subdirs[t.subdir]}]; fix: remove one"
            )
        seen_subdirs.setdefault(t.subdir, i)
    return out


def _target_placement(m: Matrix, t: Target, where: str) -> list[str]:
    out: list[str] = []
    if t.subdir.split("/")[0] != t.family:
        out.append(
            f"{where}.subdir: {t.subdir!r} is not under family {t.family!r}; fix: start it with '{t.family}/'"
        )
    if m.family(t.family) is None:
        out.append(f"{where}.family: {t.family!r} is not under `families`; fix: add it there")
    return out


def _target_archspec(t: Target, where: str) -> list[str]:
    uarch = archspec.cpu.TARGETS.get(t.archspec)
    if uarch is None:
        import difflib  # only on the error path

        close = difflib.get_close_matches(t.archspec, list(archspec.cpu.TARGETS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see archspec's microarchitectures.json"
        return [f"{where}.archspec: {t.archspec!r} is not an archspec microarchitecture; fix: {hint}"]
    if uarch.family.name != t.family:
        return [
            f"{where}.archspec: {t.archspec!r} belongs to family {uarch.family.name!r}, "
            f"not {t.family!r}; fix: name a {t.family} microarchitecture"
        ]
    if t.is_generic and t.archspec != t.family:
        return [
            f"{where}.archspec: a generic target must use the family root {t.family!r}, "
            f"not {t.archspec!r}; fix: set archspec: {t.family}"
        ]
    return []


def _target_accelerators(t: Target, where: str) -> list[str]:
    out: list[str] = []
    seen_cc: set[str] = set()
    for j, a in enumerate(t.accelerators):
        if a.subdir in seen_cc:
            out.append(f"{where}.accel[{j}]: {a.subdir!r} is listed twice; fix: remove one")
        seen_cc.add(a.subdir)
    if t.accelerators and t.is_generic:
        out.append(
            f"{where}.accel: a generic target has no accelerator builds (EESSI builds GPU software "
            "for specific CPU targets); fix: move the entry to a microarchitecture target"
        )
    return out


def _missing_generic(m: Matrix, version_names: set[str]) -> list[str]:
    out: list[str] = []
    for v in sorted(version_names):
        fams = {t.family for t in m.targets if v in t.versions}
        for fam_name in sorted(fams):
            if not any(t.is_generic and t.family == fam_name and v in t.versions for t in m.targets):
                out.append(
                    f"versions.{v}: family {fam_name!r} has targets but no '{fam_name}/generic' target; "
                    f"fix: add a target with subdir {fam_name}/generic to version {v} (every host of the "
                    "family needs a fallback)"
                )
    return out
