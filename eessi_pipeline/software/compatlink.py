"""Link a stack's new installations to the compatibility layer, as EESSI's software layer is linked.

In EESSI every program of the software layer runs with the compatibility layer's loader and C library,
so that only the kernel (and drivers) come from the client's OS.  Our embedded stacks are built with the
host's compiler (``toolchain: SYSTEM``), which links against the host's loader and glibc; a stack with
``compat_layer: true`` in ``matrices/stacks.yaml`` is linked to the layer after EasyBuild has installed
it, in the build's mount namespace, where the layer is visible read-only at its prefix:

* every dynamically linked **executable** (an ELF file with ``PT_INTERP``) gets the layer's loader as
  its interpreter;
* every dynamically linked **executable and shared object** that needs libraries gets the layer's library
  directories appended to its run-time search path; the entries it has (EasyBuild's ``--rpath`` puts the
  installation's own ``lib`` directories and ``$ORIGIN`` there) stay first.  A file that carries
  ``DT_RPATH`` keeps that tag (``patchelf --force-rpath``): EasyBuild's RPATH wrappers link with
  ``--disable-new-dtags`` on purpose, so that ``$LD_LIBRARY_PATH`` cannot redirect a library; other files
  get ``DT_RUNPATH``;
* files installed from a **manylinux/musllinux wheel** (NumPy's extension modules and the libraries in
  ``numpy.libs``) get the layer's library directories after their own ``$ORIGIN`` entries too.  They are
  loaded into the Python process that imports them, which is the layer's ``python3`` (first on ``PATH``
  after ``init/bash``): left alone, the libraries they need beyond the wheel's own (``libpthread.so.0``,
  ``libstdc++``, ``libgcc_s``) were resolved by the layer's loader through the host's
  ``/etc/ld.so.cache`` and ``/usr/lib`` (seen in ``/proc/<pid>/maps`` of ``python3 -c 'import numpy'``),
  because a ``RUNPATH`` only serves its own object's needs.  The price: the hashes in the wheel's
  ``RECORD`` no longer match those files (``pip check`` does not read them; ``pip install --force`` would).
  The host's python3 must not import such a stack (it would mix two C libraries): the ``ci-hostlinked``
  stack is the one for that;
* statically linked programs, and copies of a loader or ``libc.so.6``, are left alone.

Before anything is changed, :func:`plan_links` checks that every library a linked file needs is found
in its search path (its own entries, then the layer's directories): a library found nowhere would be
loaded from the host by the layer's loader (Debian's glibc keeps ``/etc/ld.so.cache`` and ``/lib``), so
the build stops and names it.  After patchelf, :func:`listing_problems` checks what the layer's loader
really resolves (``ld.so --list``): only files of the layer or of the stack's own prefix may appear.

The compiler's run-time libraries (``libgomp``, ``libstdc++``, ``libgcc_s``) are found in the layer
(package ``gcc-runtime`` of ``matrices/compat/<family>.yaml``, as EESSI's Gentoo Prefix layer has GCC's).
Programs are still compiled against the host's glibc headers: the layer's glibc must be at least as new
(the debian backend takes the host release's own glibc); a symbol version the layer lacks makes the
loader's ``--list`` fail, and with it the build.

Decisions (:func:`plan_links`, :func:`patchelf_script`, :func:`listing_problems`) are pure; scanning reads
files, and :func:`apply_links`/:func:`verify_links` run the layer's own ``patchelf``, ``bash`` and loader
through the build's view.  Planning is idempotent: a linked file needs no edit.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compat.backend import BuildRequest, get_backend
from ..compat.elf import ElfInfo, read_elf
from ..compat.layout import LayerSpec
from ..compat.ldlist import ARGS_SCRIPT, Listing, parse_list_output
from ..compat.packageset import load_package_set
from ..compat.relocate import NEVER_PATCH, ElfFile, scan_elves, standard_dirs
from ..compat.state import digest, ensure_layer, host_release, inputs
from ..errors import BuildError
from .overlay import OverlayView

log = logging.getLogger(__name__)

#: The compatibility layer is built (or reused) with this backend, as ``compat_layer(family)`` does.
COMPAT_BACKEND = "debian"
LINK_TIMEOUT = 600.0
LIST_BATCH = 200
_PLATFORM_WHEEL = re.compile(r"-(manylinux|musllinux)[^-]*$")


@dataclass(frozen=True, slots=True)
class LayerLink:
    """What linking needs to know about a compatibility layer."""

    prefix: str  # where clients see the layer: /cvmfs/<repo>/versions/<v>/compat/linux/<family>
    staging: Path  # where it is staged in the state dir (shown at the prefix in the build's namespace)
    loader: str  # the layer's ELF interpreter, at the prefix
    library_dirs: tuple[str, ...]  # the layer's library directories, at the prefix, in search order
    identity: str  # the layer's inputs digest: a different layer means a different build

    @property
    def patchelf(self) -> str:
        return f"{self.prefix}/usr/bin/patchelf"

    @property
    def bash(self) -> str:
        return f"{self.prefix}/bin/bash"

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "staging": str(self.staging),
            "loader": self.loader,
            "library_dirs": list(self.library_dirs),
            "identity": self.identity,
        }


@dataclass(frozen=True, slots=True)
class WheelInstall:
    """One distribution pip installed from a wheel: its ``.dist-info`` dir, wheel tags and files."""

    dist_info: str  # relative to the scanned root
    tags: tuple[str, ...]
    files: frozenset[str]  # relative to the scanned root

    @property
    def platform_wheel(self) -> bool:
        """Whether the wheel is a manylinux/musllinux one (self-contained binaries by policy)."""
        return any(_PLATFORM_WHEEL.search(t) for t in self.tags)


@dataclass(frozen=True, slots=True)
class LinkEdit:
    """What patchelf changes in one file (None: leave that part as it is)."""

    rel: str  # relative to the repository root (the overlay's upper dir)
    interpreter: str | None
    runpath: str | None
    rpath_tag: bool  # write DT_RPATH (the file had it) rather than DT_RUNPATH


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """The edits, the files already linked, the files left alone (with why) and the problems."""

    edits: tuple[LinkEdit, ...]
    linked: tuple[str, ...]  # files that already use the layer: nothing to change
    skipped: tuple[tuple[str, str], ...]  # (file, reason)
    problems: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """Every file that uses the layer once the edits are applied."""
        return tuple(sorted({e.rel for e in self.edits} | set(self.linked)))

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = defaultdict(int)
        for _, why in self.skipped:
            reasons[why] += 1
        return {
            "edited": len(self.edits),
            "interpreters": sum(e.interpreter is not None for e in self.edits),
            "already_linked": len(self.linked),
            "skipped": dict(sorted(reasons.items())),
        }


# -- pure decisions ------------------------------------------------------------------------------------------


def wheel_tags(wheel_text: str) -> tuple[str, ...]:
    """The ``Tag:`` lines of a ``.dist-info/WHEEL`` file (pure)."""
    return tuple(
        line.partition(":")[2].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    )


def record_paths(record_text: str) -> tuple[str, ...]:
    """The file names of a ``.dist-info/RECORD`` file (CSV: path, hash, size), normalised (pure)."""
    rows = csv.reader(io.StringIO(record_text))
    return tuple(posixpath.normpath(row[0]) for row in rows if row and row[0])


def expand_origin(entry: str, origin: str) -> str:
    """A search-path entry with ``$ORIGIN``/``${ORIGIN}`` replaced by ``origin``, normalised (pure)."""
    text = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
    return posixpath.normpath(text) if text.startswith("/") else text


def own_search_path(info: ElfInfo) -> tuple[str, ...]:
    """The entries a linked file keeps before the layer's directories (pure): its own RUNPATH or RPATH;
    a shared library without either gets ``$ORIGIN``, its siblings (the libraries a wheel bundles in
    ``numpy.libs`` find each other through the *importing* module's DT_RPATH, which a RUNPATH of their
    own would switch off)."""
    own = tuple(info.runpath or info.rpath)
    return own if own or info.interpreter else ("$ORIGIN",)


def search_dirs(at: str, info: ElfInfo, layer: LayerLink) -> tuple[str, ...]:
    """Where the layer's loader looks for the libraries of the file at ``at`` once it is linked: its own
    entries (``$ORIGIN`` expanded), then the layer's directories (pure)."""
    own = [expand_origin(e, posixpath.dirname(at)) for e in own_search_path(info)]
    return tuple(dict.fromkeys([*own, *layer.library_dirs]))


def _skip_reason(rel: str, info: ElfInfo) -> str | None:
    name = posixpath.basename(rel)
    if (info.soname and NEVER_PATCH.match(info.soname)) or NEVER_PATCH.match(name):
        return "a copy of a loader or C library"
    if not info.dynamic:
        return "statically linked"
    if not info.interpreter and not info.needed:
        return "needs no library"
    return None


def plan_links(
    elves: Sequence[ElfFile],
    repository_root: str,
    layer: LayerLink,
    index: Mapping[str, frozenset[str]] | None = None,
) -> LinkPlan:
    """Decide the patchelf edits that link ``elves`` (paths relative to the repository's root, which
    clients see at ``repository_root``) to ``layer`` (pure).

    ``index`` maps directories (at their run-time paths) to the names in them; a library a file needs
    that none of its search directories holds is a problem (it would come from the host).  Without an
    index nothing is resolved.
    """
    edits: list[LinkEdit] = []
    linked: list[str] = []
    skipped: list[tuple[str, str]] = []
    problems: list[str] = []
    for elf in sorted(elves, key=lambda e: e.rel):
        info = elf.info
        why = _skip_reason(elf.rel, info)
        if why is not None:
            skipped.append((elf.rel, why))
            continue
        interp = layer.loader if info.interpreter and info.interpreter != layer.loader else None
        current = list(info.runpath or info.rpath)
        own = list(own_search_path(info))
        rpath_tag = not info.runpath and bool(info.rpath)
        runpath = None
        if info.needed:
            wanted = [*own, *(d for d in layer.library_dirs if d not in own)]
            if wanted != current:
                runpath = ":".join(wanted)
        if interp is None and runpath is None:
            linked.append(elf.rel)
        else:
            edits.append(LinkEdit(elf.rel, interp, runpath, rpath_tag))
        if index is not None:
            at = f"{repository_root.rstrip('/')}/{elf.rel}"
            dirs = search_dirs(at, info, layer)
            for lib in info.needed:
                if not any(lib in index.get(d, frozenset()) for d in dirs):
                    problems.append(
                        f"{at} needs {lib}, which is neither in its own search path nor in the "
                        f"compatibility layer ({layer.prefix}): the host would provide it"
                    )
    return LinkPlan(tuple(edits), tuple(linked), tuple(skipped), tuple(problems))


def patchelf_argvs(edits: Sequence[LinkEdit], patchelf: str, repository_root: str) -> list[list[str]]:
    """patchelf command lines that apply ``edits``; files with the same change share one (pure)."""
    groups: dict[tuple[str | None, str | None, bool], list[str]] = defaultdict(list)
    for e in edits:
        groups[(e.interpreter, e.runpath, e.rpath_tag)].append(f"{repository_root.rstrip('/')}/{e.rel}")
    argvs = []
    for (interp, runpath, rpath_tag), files in sorted(
        groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "", kv[0][2])
    ):
        opts: list[str] = []
        if interp is not None:
            opts += ["--set-interpreter", interp]
        if runpath is not None:
            opts += ["--force-rpath"] if rpath_tag else []
            opts += ["--set-rpath", runpath]
        argvs.append([patchelf, *opts, *files])
    return argvs


def patchelf_script(edits: Sequence[LinkEdit], patchelf: str, repository_root: str) -> str:
    """A shell script (``set -e``) running :func:`patchelf_argvs`, every word quoted (pure)."""
    lines = ["set -e", *(shlex.join(a) for a in patchelf_argvs(edits, patchelf, repository_root))]
    return "\n".join(lines) + "\n"


def list_argv(layer: LayerLink, files: Sequence[str]) -> list[str]:
    """The layer's bash running the layer's loader with ``--list`` on each file, marked for
    :func:`parse_list_output` (pure)."""
    return [layer.bash, "-c", ARGS_SCRIPT, "bash", layer.loader, *files]


def listing_problems(
    listings: Mapping[str, Listing], files: Sequence[str], allowed: Sequence[str]
) -> list[str]:
    """What is wrong with the loader's account of ``files``: a file not listed, a loader failure, a
    library not found or resolved outside the ``allowed`` prefixes (pure; empty: all is well)."""
    roots = [a.rstrip("/") + "/" for a in allowed]
    problems = []
    for f in files:
        listing = listings.get(f)
        if listing is None:
            problems.append(f"{f}: not listed by the loader")
            continue
        if listing.rc != 0:
            problems.append(f"{f}: the loader failed: {listing.text.strip()[-300:]}")
            continue
        for name, path in listing.stray(lambda p: posixpath.normpath(p).startswith(tuple(roots))):
            problems.append(
                f"{f}: {name} not found"
                if path is None
                else f"{f}: {name} => {path}, outside {' and '.join(allowed)}"
            )
    return problems


# -- the layer ---------------------------------------------------------------------------------------------


def _request(spec: LayerSpec) -> BuildRequest:
    return BuildRequest(spec, load_package_set(spec.family))


def layer_identity(spec: LayerSpec) -> str:
    """The inputs digest the layer has (or will have) once built: known without building it."""
    return digest(inputs(get_backend(COMPAT_BACKEND), _request(spec), host_release()))


def ensure_layer_link(spec: LayerSpec) -> LayerLink:
    """Build or reuse the layer (the code behind ``compat_layer(family)`` and ``compat build``) and say
    how to link to it."""
    result = ensure_layer(get_backend(COMPAT_BACKEND), _request(spec))
    how = "reused" if result.reused else f"built in {result.record.seconds:.0f} s"
    log.info("compatibility layer %s %s", spec.staging, how)
    staging, prefix = spec.staging, result.record.prefix
    loader = str(result.record.facts.get("loader") or "")
    if not loader:
        bash = read_elf(staging / "bin" / "bash")
        loader = bash.interpreter if bash is not None and bash.interpreter else ""
    if not loader.startswith(prefix + "/") or not os.path.lexists(staging / loader[len(prefix) + 1 :]):
        raise BuildError(
            f"the compatibility layer at {staging} names no loader of its own ({loader or 'none'}); "
            f"rebuild it with `eessi-pipeline compat build --family {spec.family} --force`"
        )
    triplet = load_package_set(spec.family).debian.triplet
    dirs = tuple(f"{prefix}/{d}" for d in standard_dirs(triplet) if (staging / d).is_dir())
    for tool in ("usr/bin/patchelf", "bin/bash"):
        if not (staging / tool).exists():
            raise BuildError(
                f"the compatibility layer at {staging} lacks {tool}, which linking needs; add it to "
                f"matrices/compat/{spec.family}.yaml and rebuild the layer"
            )
    return LayerLink(prefix, staging, loader, dirs, result.record.inputs_digest)


def code_sha256() -> str:
    """The digest of this module: a change in how stacks are linked means a new build."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# -- scanning (reads files) --------------------------------------------------------------------------------


def scan_wheels(root: Path, below: str) -> list[WheelInstall]:
    """Every wheel installation (``*.dist-info`` with a ``WHEEL`` file) under ``root/below``."""
    out = []
    for wheel_file in sorted((root / below).rglob("*.dist-info/WHEEL")):
        dist_info = wheel_file.parent
        site = dist_info.parent
        try:
            tags = wheel_tags(wheel_file.read_text(encoding="utf-8", errors="replace"))
            record = (dist_info / "RECORD").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        files = frozenset(
            posixpath.normpath((site / p).relative_to(root).as_posix())
            for p in record_paths(record)
            if not p.startswith("..") and not p.startswith("/")
        )
        out.append(WheelInstall(dist_info.relative_to(root).as_posix(), tags, files))
    return out


def scan_installations(root: Path, below: str, family: str) -> list[ElfFile]:
    """Every regular ELF executable or shared object of the family under ``root/below`` (one path per
    inode: hard links are patched once), with paths relative to ``root``."""
    base = root / below
    if not base.is_dir():
        return []
    seen: set[tuple[int, int]] = set()
    out = []
    for elf in scan_elves(base, family):
        st = (base / elf.rel).stat()
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(ElfFile(f"{below.strip('/')}/{elf.rel}", elf.info))
    return out


def directory_index(
    dirs: Sequence[str], repository_root: str, trees: Sequence[Path], layer: LayerLink
) -> dict[str, frozenset[str]]:
    """The names in each of ``dirs`` (run-time paths): the layer's from its staging tree, the
    repository's from ``trees`` (the overlay's upper dir and its lower); host directories stay out."""
    root = repository_root.rstrip("/")
    out: dict[str, frozenset[str]] = {}
    for d in dict.fromkeys(dirs):
        if d == layer.prefix or d.startswith(layer.prefix + "/"):
            places = [layer.staging / d[len(layer.prefix) :].lstrip("/")]
        elif d.startswith(root + "/"):
            places = [t / d[len(root) + 1 :] for t in trees]
        else:
            continue
        names: set[str] = set()
        for place in places:
            try:
                names.update(os.listdir(place))
            except OSError:
                continue
        out[d] = frozenset(names)
    return out


# -- running (through the build's view, where the layer is visible) ----------------------------------------


def plan_for_upper(view: OverlayView, below: str, family: str, layer: LayerLink) -> LinkPlan:
    """Scan what the build added under ``below`` (relative to the repository) and plan the links."""
    elves = scan_installations(view.upper, below, family)
    dirs = [d for e in elves for d in search_dirs(f"{view.mount}/{e.rel}", e.info, layer)]
    index = directory_index(dirs, view.mount, [view.upper, view.lower], layer)
    return plan_links(elves, view.mount, layer, index=index)


def apply_links(view: OverlayView, plan: LinkPlan, layer: LayerLink) -> None:
    """Run the layer's patchelf on the plan's edits inside the build's namespace (one call)."""
    if not plan.edits:
        return
    script = patchelf_script(plan.edits, layer.patchelf, view.mount)
    view.run([layer.bash, "-c", script], timeout=LINK_TIMEOUT)


def verify_links(
    view: OverlayView, files: Sequence[str], layer: LayerLink, allowed: Sequence[str]
) -> list[str]:
    """Ask the layer's loader what each linked file loads (``ld.so --list``); return the problems."""
    at = [f"{view.mount}/{f}" for f in files]
    problems: list[str] = []
    for i in range(0, len(at), LIST_BATCH):
        batch = at[i : i + LIST_BATCH]
        result = view.run(list_argv(layer, batch), timeout=LINK_TIMEOUT, check=False)
        if result.returncode != 0:  # the loop ends with printf: the script itself could not run
            problems.append(
                f"listing with {layer.loader} failed (exit {result.returncode}): {result.tail(5)}"
            )
        problems += listing_problems(parse_list_output(result.stdout), batch, allowed)
    return problems
