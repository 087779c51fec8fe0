"""The embedded default backend: a relocated prefix built from the host release's Debian packages.

Steps (each timed in the build record):

1. **resolve**: the dependency closure of the package set's Debian packages
   (Depends and PreDepends, first alternative, minus the set's ``exclude``), with
   apt's private state for the family's architecture (:mod:`.apt`);
2. **download** the ``.deb`` files into ``<state>/compat/cache/debs`` (kept: a
   rebuild downloads nothing) and the pinned PyPI wheels into ``cache/wheels``;
3. **unpack** each with ``dpkg-deb -x`` (no maintainer scripts run, nothing is
   registered with dpkg), then remove the ``prune`` globs;
4. **relocate** (:mod:`.relocate`): absolute symlinks become relative, every ELF
   executable gets the layer's loader as interpreter and every ELF file a RUNPATH
   of the layer's library directories (patchelf), ``#!`` lines and the set's
   ``relocate_text`` files get the prefix;
5. **finish** (:mod:`.prefixfiles`): what maintainer scripts would have done
   (the set's ``links``), wheels into the layer's Python, the UTF-8 locales
   compiled with the layer's own ``localedef``, host symlinks for ``etc`` files,
   ``startprefix``, and a manifest ``etc/eessi-compat/manifest.json``.

Limits of relocating binaries that were built for ``/`` (Gentoo Prefix compiles
them for the prefix instead): the layer's glibc keeps Debian's compiled-in paths,
so it reads ``/etc/passwd``, ``/etc/nsswitch.conf`` and friends from the host (the
same files the layer's ``etc`` links to), ``locale -a`` lists the host's locales,
and locales and gconv modules come from the layer only where ``LOCPATH`` and
``GCONV_PATH`` say so (``startprefix`` sets both).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..arch.select import article
from ..errors import CompatError, PipelineError
from ..proc import CommandFailed, run
from . import apt as apt_mod
from . import elf, prefixfiles, relocate
from .apt import Apt
from .backend import BuildOutcome, BuildRequest, LayerPlan, PlanStep
from .layout import LayerSpec

log = logging.getLogger(__name__)

NAME = "debian"
UNPACK_TIMEOUT = 300.0
PIP_TIMEOUT = 600.0
MANIFEST = "etc/eessi-compat/manifest.json"
#: Host tools the backend runs, with the Debian package that provides each.
HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "patchelf": "patchelf",
    "unshare": "util-linux",
}
_MACHINE_FAMILY = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
}

T = TypeVar("T")


def apt_for(spec: LayerSpec, architecture: str) -> Apt:
    return Apt(spec.cache_dir / "apt" / architecture, architecture)


class DebianBackend:
    """Build a layer from Debian binary packages, relocated with patchelf (see the module's docstring)."""

    name = NAME

    def code_files(self) -> tuple[Path, ...]:
        return (*(Path(str(m.__file__)) for m in (apt_mod, elf, prefixfiles, relocate)), Path(__file__))

    # -- plan -----------------------------------------------------------------------------------------------
    def plan(self, request: BuildRequest) -> LayerPlan:
        spec, pset = request.spec, request.packages
        a = apt_for(spec, pset.debian.architecture)
        roots = list(pset.debian_packages)
        steps = (
            PlanStep(
                "resolve",
                f"dependency closure of {len(roots)} Debian packages for "
                f"{pset.debian.architecture}, excluding "
                f"{', '.join(sorted(pset.debian.excluded)) or 'nothing'}",
                " ".join(a.depends_argv(roots[:3])) + " …",
            ),
            PlanStep(
                "download",
                f"the closure's .deb files into {spec.cache_dir / 'debs'}; wheels "
                f"{', '.join(pset.pypi_requirements) or '(none)'} into {spec.cache_dir / 'wheels'}",
                "apt-get download …; pip download --no-deps --only-binary=:all: …",
            ),
            PlanStep(
                "unpack",
                f"dpkg-deb -x every package into the work tree; prune "
                f"{', '.join(r.key for r in pset.debian.prune) or 'nothing'}",
                "dpkg-deb -x PKG.deb DIR",
            ),
            PlanStep(
                "relocate",
                f"ELF interpreters -> {spec.prefix}/<loader>, RUNPATHs -> the layer's library "
                "directories, absolute symlinks -> relative, #! lines and "
                f"{', '.join(pset.relocate_text) or 'no text files'} -> the prefix",
                "patchelf --set-interpreter … --set-rpath … FILES",
            ),
            PlanStep(
                "finish",
                f"links {', '.join(k.path for k in pset.links) or '(none)'}; locales "
                f"{', '.join(pset.locales)}; host links {', '.join(pset.host_files)}; startprefix",
            ),
            PlanStep("stage", f"replace {spec.staging} (the layer's versions/{spec.relpath})"),
        )
        notes = []
        if not spec.in_place:
            notes.append(
                f"the layer only works at {spec.prefix}: checks see it there through a private mount "
                "namespace"
            )
        return LayerPlan(NAME, spec, steps, tuple(notes))

    # -- preflight ------------------------------------------------------------------------------------------
    def preflight(self, request: BuildRequest) -> None:
        missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
        if missing:
            raise CompatError(
                f"the debian backend needs {', '.join(t for t, p in HOST_TOOLS.items() if p in missing)} on "
                f"PATH; install them with `apt-get install {' '.join(missing)}` (bash setup.sh does) and run "
                "the build again"
            )
        host = _MACHINE_FAMILY.get(platform.machine(), platform.machine())
        if host != request.spec.family:
            from ..arch.emulation import probe  # another family: its programs run under qemu-user

            try:
                probe(request.spec.family)
            except PipelineError as e:
                raise CompatError(
                    f"the {request.spec.family} layer runs its own programs (localedef, the checks) and this "
                    f"host is {host}: {e}; or build it on {article(request.spec.family)} "
                    f"{request.spec.family} host"
                ) from None

    # -- build ----------------------------------------------------------------------------------------------
    def build(self, request: BuildRequest, work: Path) -> BuildOutcome:
        spec, pset = request.spec, request.packages
        timings: dict[str, float] = {}
        facts: dict[str, Any] = {}

        def step(name: str, fn: Callable[[], T]) -> T:
            start = time.monotonic()
            log.info("[%s] %s", spec.family, name)
            result = fn()
            timings[name] = round(time.monotonic() - start, 2)
            return result

        a = apt_for(spec, pset.debian.architecture)
        step("apt lists", lambda: a.prepare(request.refresh))
        closure = step("resolve", lambda: a.closure(pset.debian_packages, pset.debian.excluded))
        facts["excluded_dependencies"] = dict(closure.skipped)
        debs = step("locate", lambda: a.locate(closure.packages))
        files = step("download", lambda: a.download(debs, spec.cache_dir / "debs"))
        wheels = step("download wheels", lambda: self._wheels(spec, pset.pypi_requirements))
        step("unpack", lambda: self._unpack(files, work))
        facts["pruned"] = step("prune", lambda: self._prune(work, [r.key for r in pset.debian.prune]))

        links = step("absolute symlinks", lambda: relocate.rewrite_absolute_symlinks(work))
        facts["symlinks_made_relative"] = len(links)
        facts["links"] = step("links", lambda: prefixfiles.make_links(work, pset.links))
        scripts: list[str] = []
        for req, wheel in wheels:
            scripts += step(
                f"wheel {req}", functools.partial(prefixfiles.install_wheel, work, spec.prefix, wheel, req)
            )
        facts["console_scripts"] = scripts

        elves = step("scan ELF files", lambda: relocate.scan_elves(work, spec.family))
        interps = collections.Counter(e.info.interpreter for e in elves if e.info.interpreter)
        if not interps:
            raise CompatError(
                f"no dynamically linked executable in the unpacked packages at {work}; check the set"
            )
        loader = interps.most_common(1)[0][0]
        loader_rel = loader.lstrip("/")
        if not os.path.lexists(work / loader_rel):
            raise CompatError(f"the layer lacks its loader {loader}; add libc6 (glibc) to the package set")
        index = relocate.library_index(work)
        dirs = {p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_dir() and not p.is_symlink()}
        actions, problems = relocate.plan_elf_patches(elves, index, spec.prefix, pset.debian.triplet, dirs)
        if problems:
            shown = "\n".join(problems[:20])
            raise CompatError(
                f"{len(problems)} library dependencies are not in the layer (they would come from the "
                "host):\n"
                f"{shown}\nadd the Debian packages that provide them to the package set"
            )
        patchelf = shutil.which("patchelf") or "patchelf"
        step("patchelf", lambda: relocate.apply_patches(actions, work, patchelf, request.jobs))
        facts["elf_files"] = len(elves)
        facts["elf_patched"] = len(actions)
        facts["loader"] = spec.prefix + loader

        changed, unresolved = step("#! lines", lambda: relocate.rewrite_shebangs(work, spec.prefix))
        facts["scripts_relocated"] = changed
        facts["scripts_without_interpreter"] = [f"{rel}: {interp}" for rel, interp in unresolved]
        for rel, interp in unresolved:
            log.info("%s keeps #!%s: the interpreter is not in the layer", rel, interp)
        facts["text_relocated"] = step(
            "text files", lambda: relocate.relocate_text_files(work, spec.prefix, pset.relocate_text)
        )
        facts["host_links"] = step("host links", lambda: prefixfiles.link_host_files(work, pset.host_files))
        facts["locales"] = step(
            "locales",
            lambda: prefixfiles.compile_locales(work, loader_rel, pset.debian.triplet, pset.locales),
        )
        default_locale = pset.locales[0] if pset.locales else "C.UTF-8"
        step(
            "startprefix",
            lambda: prefixfiles.write_startprefix(
                work, spec.prefix, pset.debian.triplet, default_locale, NAME
            ),
        )
        facts["special_bits_cleared"] = step("modes", lambda: relocate.clear_special_bits(work))
        versions = {d.package: d.version for d in debs}
        for req, _ in wheels:
            name, _, version = req.partition("==")
            versions[f"pypi:{name}"] = version
        self._manifest(work, spec, pset.family, versions, request)
        return BuildOutcome(versions, facts, timings)

    # -- steps ----------------------------------------------------------------------------------------------
    @staticmethod
    def _wheels(spec: LayerSpec, requirements: tuple[str, ...]) -> list[tuple[str, Path]]:
        into = spec.cache_dir / "wheels"
        todo = [r for r in requirements if prefixfiles.cached_wheel(into, r) is None]
        if todo:
            into.mkdir(parents=True, exist_ok=True)
            try:
                run(prefixfiles.wheel_argv(sys.executable, todo, into), timeout=PIP_TIMEOUT)
            except CommandFailed as e:
                raise CompatError(
                    f"pip could not download {', '.join(todo)}: {e}\ncheck access to PyPI (or put the wheels "
                    f"into {into})"
                ) from e
        out = []
        for r in requirements:
            wheel = prefixfiles.cached_wheel(into, r)
            if wheel is None:
                raise CompatError(f"no wheel for {r} in {into} after pip download; check the requirement")
            out.append((r, wheel))
        return out

    @staticmethod
    def _unpack(files: list[Path], work: Path) -> None:
        for deb in files:
            try:
                run(["dpkg-deb", "-x", str(deb), str(work)], timeout=UNPACK_TIMEOUT)
            except CommandFailed as e:
                raise CompatError(
                    f"could not unpack {deb.name}: {e}\ndelete it from the cache and build again"
                ) from e

    @staticmethod
    def _prune(work: Path, globs: list[str]) -> list[str]:
        removed = []
        for pattern in globs:
            for path in sorted(work.glob(pattern), reverse=True):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    path.unlink()
                removed.append(path.relative_to(work).as_posix())
        return removed

    @staticmethod
    def _manifest(
        work: Path, spec: LayerSpec, family: str, versions: dict[str, str], request: BuildRequest
    ) -> None:
        pset = request.packages
        data = {
            "backend": NAME,
            "version": spec.version,
            "family": family,
            "prefix": spec.prefix,
            "package_set_sha256": pset.sha256,
            "packages": dict(sorted(versions.items())),
            "tools": [
                {"package": p.name, "command": t.command, "args": list(t.args), "expect": t.expect}
                for p in pset.packages
                for t in p.tools
            ],
            "host_files": list(pset.host_files),
            "locales": list(pset.locales),
        }
        path = work / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
