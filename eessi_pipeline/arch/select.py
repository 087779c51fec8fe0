"""Target selection: pure functions from (host CPU, matrix) to decisions with reasons.

A host can run a target when

* the families agree;
* every archspec feature of the target's microarchitecture is among the host's
  flags, except the flags the matrix lists under ``ignore_features`` for the
  family (flags compilers never emit that hypervisors like to hide);
* the vendor fits: the target is vendor-neutral, or of the host's vendor, or an
  archspec ancestor of a microarchitecture of the host's vendor that the host
  can run (Ampere One descends from Neoverse N1 in archspec's graph).

The best target is the most specific runnable one (most archspec ancestors,
then most features); ``<family>/generic`` is always the last candidate.
Unlike EESSI's archdetect, whose zen2 rule asks only for avx2 and fma, a
first-generation Zen does not get zen2 here: it lacks zen2's ``clwb``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import archspec.cpu

from ..errors import BuildNodeError, SelectionError
from ..matrix import Matrix, Target
from .cpuinfo import HostCpu
from .emulation import Emulator

#: Environment variable that forces the software subdirectory (EESSI's name).
OVERRIDE_ENV = "EESSI_SOFTWARE_SUBDIR_OVERRIDE"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the host can run one target, and why not."""

    target: Target
    ok: bool
    reasons: tuple[str, ...] = ()
    ignored_missing: tuple[str, ...] = ()
    emulated_by: str = ""  # e.g. "qemu-aarch64 7.2" when the host runs the target only through emulation


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of target selection for one host and stack version."""

    host: HostCpu
    version: str
    subdir: str
    target: Target | None
    candidates: tuple[str, ...]
    override: str | None = None
    notes: tuple[str, ...] = ()
    host_microarchitecture: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "subdir": self.subdir,
            "target": self.target.name if self.target else None,
            "marker": self.target.marker if self.target else None,
            "candidates": list(self.candidates),
            "version": self.version,
            "override": self.override,
            "notes": list(self.notes),
            "host": {
                "family": self.host.family,
                "vendor": self.host.vendor,
                "model_name": self.host.model_name,
                "archspec": self.host_microarchitecture,
                "source": self.host.source,
                "format": self.host.text_format,
                "features": sorted(self.host.features),
            },
        }


def _uarch(name: str) -> Any:
    return archspec.cpu.TARGETS[name]


def rank(target: Target) -> tuple[int, int, str]:
    """Specificity: more archspec ancestors, then more features, is more specific."""
    u = _uarch(target.archspec)
    return (len(u.ancestors), len(u.features), target.name)


def _ignored(matrix: Matrix, family: str) -> frozenset[str]:
    fam = matrix.family(family)
    return fam.ignored if fam else frozenset()


def _vendor_lineage(host: HostCpu, ignored: frozenset[str]) -> frozenset[str]:
    """Ancestors of every archspec microarchitecture of the host's own vendor that it can run."""
    names: set[str] = set()
    for u in archspec.cpu.TARGETS.values():
        if u.family.name != host.family or u.vendor != host.vendor:
            continue
        if (u.features - ignored) <= host.features:
            names.add(u.name)
            names.update(a.name for a in u.ancestors)
    return frozenset(names)


def host_microarchitecture(host: HostCpu, ignored: Iterable[str] = ()) -> str:
    """The most specific archspec microarchitecture the host can run (informational)."""
    ign = frozenset(ignored)
    best = None
    for u in archspec.cpu.TARGETS.values():
        if u.family.name != host.family or u.vendor not in ("generic", host.vendor):
            continue
        if host.family not in ("x86_64", "aarch64") and u.name != host.family:
            continue  # ppc64le/riscv64: no flags to judge by; stay generic
        if host.family == "aarch64" and u.vendor == "generic" and u.name != "aarch64":
            continue  # armv8.Xa levels are not judged by flags (archspec's own rule)
        if (u.features - ign) <= host.features:
            key = (len(u.ancestors), len(u.features), u.name)
            if best is None or key > best[0]:
                best = (key, u.name)
    return best[1] if best else host.family


def check_target(host: HostCpu, target: Target, matrix: Matrix) -> Verdict:
    """Can ``host`` run code built for ``target``?  Pure; the verdict carries its reasons."""
    if host.family != target.family:
        return Verdict(
            target,
            False,
            (f"it is {article(target.family)} {target.family} target and the host is {host.family}",),
        )
    u = _uarch(target.archspec)
    ignored = _ignored(matrix, target.family)
    reasons: list[str] = []
    if u.vendor not in ("generic", host.vendor) and u.name not in _vendor_lineage(host, ignored):
        reasons.append(f"it is tuned for {u.vendor} CPUs and the host's vendor is {host.vendor}")
    missing = sorted((u.features - ignored) - host.features)
    if missing:
        reasons.append(f"the host lacks {len(missing)} required feature(s): {' '.join(missing)}")
    ignored_missing = tuple(sorted((u.features & ignored) - host.features))
    return Verdict(target, not reasons, tuple(reasons), ignored_missing)


def _resolve_override(value: str, matrix: Matrix, version: str) -> Target:
    wanted = value.strip().strip("/")
    for t in matrix.targets_for(version):
        if wanted in (t.subdir, t.name):
            return t
    valid = ", ".join(t.subdir for t in matrix.targets_for(version))
    raise SelectionError(
        f"{OVERRIDE_ENV}={value!r} is not a target of stack version {version}; "
        f"unset it or use one of: {valid}"
    )


def select_target(
    host: HostCpu,
    matrix: Matrix,
    version: str | None = None,
    override: str | None = None,
) -> Selection:
    """Choose the software subdirectory for ``host``.  Pure: no files, no environment."""
    ver = matrix.version(version).name
    ignored = _ignored(matrix, host.family)
    host_uarch = host_microarchitecture(host, ignored)
    generic = f"{host.family}/generic"
    if override:
        t = _resolve_override(override, matrix, ver)
        fallback = f"{t.family}/generic"
        cands = (t.subdir,) if t.subdir == fallback else (t.subdir, fallback)
        notes = [f"{OVERRIDE_ENV} selects {t.subdir}"]
        verdict = check_target(host, t, matrix)
        if not verdict.ok:
            notes.append(f"warning: this host cannot run {t.subdir}: {'; '.join(verdict.reasons)}")
        return Selection(host, ver, t.subdir, t, cands, override, tuple(notes), host_uarch)

    family_targets = [t for t in matrix.targets_for(ver) if t.family == host.family]
    if not family_targets:
        note = (
            f"stack version {ver} builds no {host.family} target; {generic} is the fallback "
            "(add targets for this family to the matrix to build it)"
        )
        return Selection(host, ver, generic, None, (generic,), None, (note,), host_uarch)

    runnable = [t for t in family_targets if check_target(host, t, matrix).ok]
    runnable.sort(key=rank, reverse=True)
    best = runnable[0]  # the family's generic target always qualifies (no features, no vendor)
    candidates = tuple(t.subdir for t in runnable)
    return Selection(host, ver, best.subdir, best, candidates, None, (), host_uarch)


def select_from_environ(
    host: HostCpu, matrix: Matrix, version: str | None, environ: Mapping[str, str]
) -> Selection:
    """:func:`select_target` with the override read from ``environ`` (the thin, impure edge)."""
    return select_target(host, matrix, version, environ.get(OVERRIDE_ENV) or None)


def why_not(host: HostCpu, matrix: Matrix, name: str, version: str | None = None) -> str:
    """Explain in words whether and why the host does not get ``name``."""
    t = matrix.target(name)
    ver = matrix.version(version).name
    if ver not in t.versions:
        return (
            f"{t.subdir} is not built in stack version {ver} (it is in {', '.join(t.versions)}); "
            f"choose the version with --version"
        )
    v = check_target(host, t, matrix)
    sel = select_target(host, matrix, ver)
    if not v.ok:
        return f"{t.subdir} cannot run on this host: " + "; ".join(v.reasons) + "."
    extra = ""
    if v.ignored_missing:
        extra = f" (the host lacks {' '.join(v.ignored_missing)}, which the matrix ignores)"
    if sel.subdir == t.subdir:
        return f"{t.subdir} is the selected target for this host{extra}."
    return (
        f"{t.subdir} can run on this host{extra}, but {sel.subdir} is more specific and is selected; "
        f"set {OVERRIDE_ENV}={t.subdir} to use it anyway."
    )


def check_build_node(
    host: HostCpu,
    target: Target,
    matrix: Matrix,
    emulators: Mapping[str, Emulator] | None = None,
) -> Verdict:
    """May this host build ``target``?  Pure: ``emulators`` is what :func:`host_emulators` found.

    Generic targets build anywhere in their family.  A generic target of another family builds
    under emulation when an emulator for that family is registered; tuned targets of another
    family never do (their point is performance, which emulation cannot show).
    """
    if target.is_generic and host.family == target.family:
        return Verdict(target, True)
    if host.family != target.family and emulators and target.family in emulators:
        emu = emulators[target.family]
        if target.is_generic:
            return Verdict(target, True, emulated_by=emu.label)
        return Verdict(
            target,
            False,
            (
                f"it is {article(target.family)} {target.family} target and the host is {host.family}; "
                f"{emu.label} could run it, but tuned targets are built natively only "
                f"(emulation builds {target.family}/generic)",
            ),
        )
    return check_target(host, target, matrix)


def require_build_node(
    host: HostCpu,
    target: Target,
    matrix: Matrix,
    version: str | None = None,
    emulators: Mapping[str, Emulator] | None = None,
) -> Verdict:
    """The verdict when this host may build ``target``, else :class:`BuildNodeError` with the next step."""
    v = check_build_node(host, target, matrix, emulators)
    if v.ok:
        return v
    sel = select_target(host, matrix, version)
    runner = ", ".join(matrix.runner_for(target)) or "a matching machine"
    hint = ""
    if host.family != target.family and not emulators and target.is_generic:
        hint = (
            f" (or emulate it: `bash setup.sh` as root installs and registers qemu-user-static for "
            f"{target.family})"
        )
    raise BuildNodeError(
        f"cannot build {target.name} ({target.subdir}) on this host "
        f"({host.model_name or host.vendor}, best target {sel.subdir}): {'; '.join(v.reasons)}; "
        f"run it on a {target.name} node (CI runner labels: {runner}){hint} or build one of: "
        f"{', '.join(sel.candidates)}"
    )


def article(word: str) -> str:
    """'an' before a vowel sound (an x86_64, an aarch64), else 'a' (a ppc64le, a riscv64)."""
    return "an" if word[:1].lower() in "aeiox" else "a"
