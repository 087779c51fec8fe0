"""Make unpacked Debian packages a self-contained prefix: links, ELF interpreters and RUNPATHs, scripts.

The decisions are pure functions of what the tree contains (:func:`plan_elf_patches`,
:func:`relative_target`, :func:`relocate_text_content`); :func:`apply_patches` runs
``patchelf`` on the plan, several files per call and on every core.

* **Symlinks** with an absolute target (``lib64/ld-linux-x86-64.so.2 ->
  /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2``) would point at the host: they become
  relative links to the same path inside the layer.
* **ELF files**: an executable's interpreter becomes ``<prefix>`` + its Debian
  interpreter, so the layer's own ``ld.so`` loads it; every executable and library
  gets a RUNPATH of the layer's library directories (plus the directories of any
  library it needs that lives elsewhere in the layer, plus its own RUNPATH entries
  moved into the layer), so each library it needs is found in the layer before the
  loader would look at the host's ``/etc/ld.so.cache`` or ``/lib``.  The loader and
  ``libc.so.6`` are left as Debian built them.
* **Scripts**: a ``#!`` line naming an absolute interpreter gets the prefix in front.
* **Text files** named by a package's ``relocate_text`` (Lmod's Lua sources and init
  scripts) get the prefix in front of their absolute ``/usr``, ``/etc``, ``/bin``,
  ``/sbin``, ``/lib`` and ``/lib64`` paths.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompatError
from ..proc import CommandFailed, run
from .elf import ET_DYN, ET_EXEC, MACHINES, ElfInfo, read_elf

log = logging.getLogger(__name__)

PATCHELF_TIMEOUT = 600.0
PATCHELF_BATCH = 64
#: Objects the relocation leaves alone: the dynamic loader and the C library it is paired with.
NEVER_PATCH = re.compile(r"^(ld-linux[-\w.]*\.so\.\d+|ld64\.so\.\d+|ld\.so\.\d+|libc\.so\.6)$")
_TEXT_PATH = re.compile(r"(?<![\w./~$-])/(usr|etc|bin|sbin|lib|lib64)(?=/)")


def walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (files, links, directories), not following symlinks, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def relative_target(link_rel: str, target_abs: str) -> str:
    """The relative target that points from ``link_rel`` (relative to the layer root) to the layer's copy
    of the absolute path ``target_abs``; e.g. ``lib64/ld.so`` + ``/lib/x/ld.so`` -> ``../lib/x/ld.so``."""
    inside = posixpath.normpath(target_abs).lstrip("/") or "."
    start = posixpath.dirname(link_rel) or "."
    return posixpath.relpath(inside, start)


def rewrite_absolute_symlinks(root: Path, keep: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """Point every absolute symlink under ``root`` at the same path inside ``root``; return the changes
    as (link, old target, new target).  ``keep``: links (relative paths) to leave absolute."""
    kept = frozenset(keep)
    changes = []
    for path in walk(root):
        if not path.is_symlink():
            continue
        target = os.readlink(path)
        rel = path.relative_to(root).as_posix()
        if not target.startswith("/") or rel in kept:
            continue
        new = relative_target(rel, target)
        path.unlink()
        path.symlink_to(new)
        changes.append((rel, target, new))
    return changes


@dataclass(frozen=True, slots=True)
class ElfFile:
    rel: str
    info: ElfInfo


@dataclass(frozen=True, slots=True)
class PatchAction:
    """What patchelf must change in one file (None: leave that part as it is)."""

    rel: str
    interpreter: str | None
    runpath: str | None


def scan_elves(root: Path, family: str) -> list[ElfFile]:
    """Every regular ELF executable or shared object of the family's machine under ``root``."""
    machine = MACHINES[family]
    out = []
    for path in walk(root):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                if fh.read(4) != b"\x7fELF":
                    continue
        except OSError:
            continue
        info = read_elf(path)
        if info is None or info.machine != machine or info.elf_type not in (ET_EXEC, ET_DYN):
            continue
        out.append(ElfFile(path.relative_to(root).as_posix(), info))
    return out


def library_index(root: Path) -> dict[str, list[str]]:
    """File name -> directories (relative to ``root``) holding a file or link of that name that looks like
    a shared library (``*.so`` or ``*.so.*``)."""
    index: dict[str, list[str]] = defaultdict(list)
    for path in walk(root):
        name = path.name
        if ".so" not in name or path.is_dir():
            continue
        if name.endswith(".so") or ".so." in name:
            index[name].append(path.parent.relative_to(root).as_posix())
    return dict(index)


def standard_dirs(triplet: str) -> tuple[str, ...]:
    """The loader's default search directories on Debian, relative to the layer root."""
    return (f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib")


def plan_elf_patches(
    elves: Sequence[ElfFile],
    index: dict[str, list[str]],
    prefix: str,
    triplet: str,
    existing_dirs: Iterable[str],
) -> tuple[list[PatchAction], list[str]]:
    """Decide interpreter and RUNPATH of every ELF file; return the actions and the problems (a needed
    library that is nowhere in the layer)."""
    present = frozenset(existing_dirs)
    std = [d for d in standard_dirs(triplet) if d in present]
    std_set = frozenset(std)
    actions: list[PatchAction] = []
    problems: list[str] = []
    for elf in elves:
        info = elf.info
        name = posixpath.basename(elf.rel)
        if (info.soname and NEVER_PATCH.match(info.soname)) or NEVER_PATCH.match(name):
            continue
        interp = None
        if info.interpreter and not info.interpreter.startswith(prefix + "/"):
            interp = prefix + info.interpreter
        runpath = None
        if info.dynamic and (info.needed or interp):
            entries: list[str] = []
            for old in info.runpath or info.rpath:
                if old.startswith("$ORIGIN") or old.startswith("${ORIGIN}") or old.startswith(prefix + "/"):
                    entries.append(old)
                elif old.startswith("/"):
                    entries.append(prefix + posixpath.normpath(old))
            extra: list[str] = []
            for lib in info.needed:
                if NEVER_PATCH.match(lib):
                    continue
                dirs = index.get(lib, [])
                if not dirs:
                    problems.append(f"{elf.rel} needs {lib}, which is nowhere in the layer")
                    continue
                if not any(d in std_set for d in dirs):
                    extra.extend(d for d in dirs if d not in extra)
            entries.extend(f"{prefix}/{d}" for d in extra)
            entries.extend(f"{prefix}/{d}" for d in std)
            runpath = ":".join(dict.fromkeys(entries))
        if interp is not None or runpath is not None:
            actions.append(PatchAction(elf.rel, interp, runpath))
    return actions, problems


def patchelf_batches(actions: Sequence[PatchAction], patchelf: str, root: Path) -> list[list[str]]:
    """Argument vectors that apply ``actions``: files with the same change share one patchelf call."""
    groups: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    for a in actions:
        groups[(a.interpreter, a.runpath)].append(str(root / a.rel))
    argvs = []
    for (interp, runpath), files in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        opts: list[str] = []
        if interp is not None:
            opts += ["--set-interpreter", interp]
        if runpath is not None:
            opts += ["--set-rpath", runpath]
        for i in range(0, len(files), PATCHELF_BATCH):
            argvs.append([patchelf, *opts, *files[i : i + PATCHELF_BATCH]])
    return argvs


def apply_patches(actions: Sequence[PatchAction], root: Path, patchelf: str, jobs: int) -> None:
    """Run patchelf for ``actions`` on ``jobs`` cores; files that are read-only are made writable first."""
    unique: list[PatchAction] = []
    inodes: set[tuple[int, int]] = set()
    for a in actions:  # hard links: patch each file once, never from two threads at a time
        st = (root / a.rel).stat()
        if (st.st_dev, st.st_ino) in inodes:
            continue
        inodes.add((st.st_dev, st.st_ino))
        unique.append(a)
        if not st.st_mode & stat.S_IWUSR:
            (root / a.rel).chmod(stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    argvs = patchelf_batches(unique, patchelf, root)

    def one(argv: list[str]) -> None:
        try:
            run(argv, timeout=PATCHELF_TIMEOUT)
        except CommandFailed as e:
            raise CompatError(f"patchelf failed while relocating the layer: {e}") from e

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for _ in pool.map(one, argvs):
            pass


# -- scripts and text -------------------------------------------------------------------------------------


def shebang_interpreter(head: bytes) -> str | None:
    """The absolute interpreter path of a ``#!`` line, or None."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    if not line.startswith(b"/"):
        return None
    return line.split()[0].decode("utf-8", "surrogateescape")


def rewrite_shebangs(root: Path, prefix: str) -> tuple[int, list[tuple[str, str]]]:
    """Prefix the interpreters of ``#!`` scripts; return how many changed and the scripts whose interpreter
    is not in the layer (left as they are)."""
    changed = 0
    missing: list[tuple[str, str]] = []
    for path in walk(root):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                head = fh.read(512)
        except OSError:
            continue
        interp = shebang_interpreter(head)
        if interp is None or interp.startswith(prefix + "/"):
            continue
        rel = path.relative_to(root).as_posix()
        if not os.path.lexists(root / interp.lstrip("/")):
            missing.append((rel, interp))
            continue
        data = path.read_bytes()
        path.write_bytes(b"#!" + prefix.encode() + data[2:].lstrip(b" \t"))
        changed += 1
    return changed, missing


def relocate_text_content(text: str, prefix: str) -> str:
    """Put ``prefix`` in front of absolute /usr, /etc, /bin, /sbin, /lib and /lib64 paths in ``text``
    (paths already under the prefix, and words that merely contain such a part, are left alone)."""
    return _TEXT_PATH.sub(lambda m: prefix + m.group(0), text)


def relocate_text_files(root: Path, prefix: str, globs: Sequence[str]) -> list[str]:
    """Apply :func:`relocate_text_content` to the text files matching ``globs``; return those changed."""
    changed = []
    seen: set[Path] = set()
    for pattern in globs:
        # Path.glob matches only directories with a trailing "**" (before Python 3.13): take their files.
        full = pattern + "/*" if pattern == "**" or pattern.endswith("/**") else pattern
        for path in sorted(root.glob(full)):
            if path in seen or path.is_symlink() or not path.is_file():
                continue
            seen.add(path)
            data = path.read_bytes()
            if b"\0" in data[:8192]:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            new = relocate_text_content(text, prefix)
            if new != text:
                mode = path.stat().st_mode
                path.write_text(new, encoding="utf-8")
                path.chmod(stat.S_IMODE(mode))
                changed.append(path.relative_to(root).as_posix())
    return changed


def clear_special_bits(root: Path) -> list[str]:
    """Drop setuid, setgid and sticky bits (CVMFS carries none of them); return the paths changed."""
    special = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
    changed = []
    for path in walk(root):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if mode & special:
            path.chmod(stat.S_IMODE(mode) & ~special)
            changed.append(path.relative_to(root).as_posix())
    return changed
