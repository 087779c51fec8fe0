"""Acceptance checks of a built layer, in Python (the ReFrame checks in ``checks/compat`` assert the same).

Each check runs real programs of the layer through its :class:`LayerView` (at the
prefix, read-only) and hands what it observed to a pure verdict function, so that
every verdict is tested on recorded good and bad observations as well:

* ``startprefix``: runs commands from stdin in the layer's own shell and passes the exit status on;
  the shell names its executable from its own ``/proc/self/maps`` (read by the shell itself, through
  a redirection), not from ``/proc/$$/exe``, which under qemu-user is the emulator;
* ``tool``: every tool of the package set is found on the layer's PATH, inside the layer, runs,
  prints what it should, and every shared object the loader maps for it is the layer's
  (``LD_DEBUG=libs``, the loader's own account, dlopen included);
* ``loader``: a layer process's ``/proc/self/maps`` shows the layer's ``ld.so`` and ``libc.so.6``
  and no file from outside the layer;
* ``no-host-libraries``: the layer's loader (``ld.so --list``) resolves every library of every ELF
  file of the layer inside the layer;
* ``lmod``: ``module avail`` works from the layer's Lmod, and every object it loads is the layer's;
* ``archspec``: ``archspec cpu`` runs with the layer's Python and names the microarchitecture expected
  here (:func:`cpu_expectation`: this host's, or the family's generic one under emulation);
* ``locale``: a UTF-8 locale of the layer is used (its files appear in a process's maps);
* ``python-paths``: the layer's Python searches only the layer;
* ``host-links``: ``etc/passwd`` & co. are symlinks to the host's files.

A layer of another CPU family runs here under qemu-user (binfmt_misc).  Every process's
``/proc/self/maps`` is then the emulated program's own map (qemu-user answers it for the guest: the
layer's files at guest addresses, without the emulator), so the loader and locale checks judge the
layer's program; a *second* process reading ``/proc/<pid>/maps`` or ``/proc/<pid>/exe`` sees the
kernel's view, which names the emulator.  That is why the checks read only ``/proc/self``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompatError
from ..proc import CommandFailed, CommandResult
from .ldlist import STDIN_SCRIPT, Listing, parse_list_output
from .prefixfiles import STARTPREFIX, locale_dirname
from .relocate import scan_elves
from .runner import LayerView

log = logging.getLogger(__name__)

MANIFEST = "etc/eessi-compat/manifest.json"
TIMEOUT = 120.0
LEAVING_RE = re.compile(
    r"Leaving (?:compat layer (?P<prefix>\S+)|Gentoo Prefix) with exit status (?P<status>\d+)"
)
_MAPS_LINE = re.compile(r"^[0-9a-f]+-[0-9a-f]+\s+\S+\s+\S+\s+\S+\s+\d+\s*(?P<path>.*)$")
_LD_DEBUG_PATH = re.compile(r"(?:calling init: |trying file=)(?P<path>/\S+)")
_LOADER_NAME = re.compile(r"^(ld-linux[-\w.]*\.so\.\d+|ld64\.so\.\d+|ld\.so\.\d+)$")
#: Shell code printing ``shell=<the running shell's executable>``: the path of the first mapping of the
#: shell's own ``/proc/self/maps`` (its executable), read by the shell itself (``read`` with a redirection,
#: no child process).  ``readlink /proc/$$/exe`` would ask a child, which qemu-user does not answer for
#: the guest: under emulation it names the emulator, natively the shell.
SHELL_SELF = 'read -r _ _ _ _ _ exe < /proc/self/maps; echo "shell=$exe"'


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


# -- pure verdicts ------------------------------------------------------------------------------------------


def startprefix_verdict(result: CommandResult, prefix: str, token: str, status: int) -> Verdict:
    """startprefix ran ``echo <token>; exit <status>`` in the layer's shell (``shell=`` is the file the
    shell's own first mapping comes from: :data:`SHELL_SELF`)."""
    problems = []
    if token not in result.stdout:
        problems.append(f"the command's output {token!r} is missing from stdout")
    shell = next((ln.split("=", 1)[1] for ln in result.stdout.splitlines() if ln.startswith("shell=")), None)
    if shell is None or not under(shell, prefix):
        problems.append(f"the shell is {shell!r}, not one of the layer's programs")
    m = LEAVING_RE.search(result.stderr)
    if m is None:
        problems.append("no 'Leaving … with exit status N' line on stderr")
    elif int(m.group("status")) != status:
        problems.append(f"it reported exit status {m.group('status')}, the command exited {status}")
    if result.returncode != status:
        problems.append(f"startprefix exited {result.returncode}, not the command's {status}")
    if problems:
        return Verdict(False, "; ".join(problems) + f"\n{result.tail(20)}")
    return Verdict(True, f"ran in {shell}; exit status {status} passed on")


def maps_paths(maps_text: str) -> list[str]:
    """The file paths of a ``/proc/<pid>/maps`` text (anonymous and ``[special]`` mappings left out)."""
    out = []
    for line in maps_text.splitlines():
        m = _MAPS_LINE.match(line)
        if not m:
            continue
        path = m.group("path").strip()
        if path.startswith("/"):
            out.append(path.removesuffix(" (deleted)"))
    return list(dict.fromkeys(out))


def maps_verdict(
    maps_text: str, prefix: str, allowed: Iterable[str] = ("/dev/", "/proc/", "/memfd:")
) -> Verdict:
    """The process mapped the layer's ld.so and libc, and no file from outside the layer."""
    paths = maps_paths(maps_text)
    if not paths:
        return Verdict(
            False, "no file mappings in the maps text: not a /proc/<pid>/maps of a running process"
        )
    libc = [p for p in paths if re.search(r"/libc[.-][^/]*so", p)]
    ldso = [p for p in paths if re.search(r"/ld-linux[^/]*\.so|/ld64\.so|/ld\.so\.", p)]
    allow = tuple(allowed)
    outside = [p for p in paths if not under(p, prefix) and not p.startswith(allow)]
    problems = []
    if not libc:
        problems.append("no libc is mapped")
    problems += [f"libc {p} is not the layer's" for p in libc if not under(p, prefix)]
    if not ldso:
        problems.append("no dynamic loader is mapped")
    problems += [f"loader {p} is not the layer's" for p in ldso if not under(p, prefix)]
    problems += [f"{p} is mapped from outside the layer" for p in outside if p not in libc + ldso]
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, f"ld.so {ldso[0]}, libc {libc[0]}; {len(paths)} mapped files, all in the layer")


@dataclass(frozen=True, slots=True)
class LoaderTrace:
    """What the loader of one process reported (``LD_DEBUG=libs``, one output file per process)."""

    pid: int
    loader: str | None  # the dynamic loader that ran the process
    objects: tuple[str, ...]  # every object it tried or initialised


def parse_ld_debug(pid: int, text: str) -> LoaderTrace:
    paths = list(dict.fromkeys(m.group("path") for m in _LD_DEBUG_PATH.finditer(text)))
    loader = next((p for p in paths if _LOADER_NAME.match(p.rsplit("/", 1)[-1])), None)
    return LoaderTrace(pid, loader, tuple(paths))


def ld_debug_verdict(traces: Sequence[LoaderTrace], prefix: str) -> Verdict:
    """The first process (the program asked for) and every process the layer's loader ran touched only
    the layer's objects.  Processes run by the host's loader are host programs that a layer program
    started (glibc's ``system()`` and ``popen()`` run the host's ``/bin/sh``, a path compiled into
    glibc): they are named in the detail, not counted as leaks."""
    if not traces or not any(t.objects for t in traces):
        return Verdict(False, "the loader wrote no debug output: LD_DEBUG did not reach the program")
    ordered = sorted(traces, key=lambda t: t.pid)
    problems = []
    host_programs = 0
    for i, t in enumerate(ordered):
        layer_loader = t.loader is not None and under(t.loader, prefix)
        if i == 0 and not layer_loader:
            problems.append(f"the program ran with the loader {t.loader or '(unknown)'}, not the layer's")
            continue
        if not layer_loader:
            host_programs += 1
            continue
        outside = [p for p in t.objects if not under(p, prefix)]
        if outside:
            problems.append(
                f"process {t.pid} used {len(outside)} objects from outside the layer: "
                f"{', '.join(outside[:6])}"
            )
    if problems:
        return Verdict(False, "; ".join(problems))
    n = len({p for t in ordered for p in t.objects})
    note = f"; {host_programs} host program(s) started through /bin/sh" if host_programs else ""
    return Verdict(True, f"{n} objects tried or loaded by the layer's loader, all in the layer{note}")


def listing_verdict(listings: Mapping[str, Listing], prefix: str, expected: int) -> Verdict:
    problems = []
    if len(listings) < expected:
        problems.append(f"only {len(listings)} of {expected} ELF files were listed")
    for elf, listing in sorted(listings.items()):
        if listing.rc != 0:
            problems.append(f"{elf}: the loader failed ({listing.text.strip()[:200]})")
            continue
        for name, path in listing.stray(lambda p: under(p, prefix)):
            problems.append(
                f"{elf}: {name} not found" if path is None else f"{elf}: {name} => {path} (a host path)"
            )
    if problems:
        return Verdict(False, f"{len(problems)} problems: " + "; ".join(problems[:10]))
    n = sum(len(v.libraries) for v in listings.values())
    return Verdict(True, f"{len(listings)} ELF files, {n} resolved libraries, all in the layer")


def tool_verdict(
    found: str, result: CommandResult, expect: str, debug: Sequence[LoaderTrace], prefix: str
) -> Verdict:
    problems = []
    if not under(found.strip(), prefix):
        problems.append(f"the command resolves to {found.strip() or 'nothing'!r}, not to the layer")
    if result.returncode != 0:
        problems.append(f"it exited {result.returncode}")
    if expect and not re.search(expect, result.stdout + result.stderr):
        problems.append(f"its output lacks /{expect}/")
    return _with_loading(problems, debug, prefix, result, 10, f"{found.strip()}: ")


def lmod_verdict(result: CommandResult, debug: Sequence[LoaderTrace], prefix: str) -> Verdict:
    text = result.stdout + result.stderr
    problems = []
    if result.returncode != 0:
        problems.append(f"exited {result.returncode}")
    lmod_cmd = next(
        (ln.split("=", 1)[1] for ln in result.stdout.splitlines() if ln.startswith("LMOD_CMD=")), ""
    )
    if not under(lmod_cmd, prefix):
        problems.append(f"LMOD_CMD is {lmod_cmd!r}, not the layer's Lmod")
    if not re.search(r"\blmod\b", text) or "settarg" not in text:
        problems.append("`module avail` did not list Lmod's own modules (lmod, settarg)")
    return _with_loading(
        problems, debug, prefix, result, 15, f"module avail listed lmod and settarg with {lmod_cmd}; "
    )


def _with_loading(
    problems: list[str],
    debug: Sequence[LoaderTrace],
    prefix: str,
    result: CommandResult,
    tail: int,
    passed: str,
) -> Verdict:
    """The verdict of a program run: ``problems`` plus the loader's (``debug``, must stay in the
    layer); failed with the run's last ``tail`` lines, or passed as ``passed`` and what was loaded."""
    loaded = ld_debug_verdict(debug, prefix)
    if not loaded.ok:
        problems.append(loaded.detail)
    if problems:
        return Verdict(False, "; ".join(problems) + f"\n{result.tail(tail)}")
    return Verdict(True, passed + loaded.detail)


@dataclass(frozen=True, slots=True)
class CpuExpectation:
    """What ``archspec cpu`` of a layer must print here, and why."""

    name: str
    why: str


def cpu_expectation(family: str, host_family: str, host_name: str) -> CpuExpectation:
    """The microarchitecture the layer's archspec must name on a host of ``host_family`` (pure).

    Natively it is the host's own (``host_name``, what the pipeline's archspec says).  A layer of
    another family runs under qemu-user, which (qemu 7.2, Debian 12) shows the emulated program the
    host's ``/proc/cpuinfo``: an x86 text describes no core of the layer's family, so archspec knows
    the machine only by its family (``uname -m``) and names that family's generic root, the family
    itself (``aarch64``).  A tuned name there would be a guess, so it fails the check.
    """
    if family == host_family:
        return CpuExpectation(host_name, "this host's microarchitecture")
    return CpuExpectation(
        family,
        f"the generic {family}: the layer runs emulated on this {host_family} host, whose /proc/cpuinfo "
        f"describes no {family} core",
    )


def expected_cpu(family: str) -> CpuExpectation:
    """:func:`cpu_expectation` for a layer of ``family`` on this host (archspec of the pipeline's Python)."""
    import archspec.cpu

    host = archspec.cpu.host()
    return cpu_expectation(family, str(host.family), str(host.name))


def archspec_verdict(
    result: CommandResult, expected: str, prefix: str, why: str = "this host's microarchitecture"
) -> Verdict:
    lines = result.stdout.split()
    problems = []
    if result.returncode != 0:
        problems.append(f"exited {result.returncode}: {result.tail(5)}")
    if expected not in lines:
        printed = lines[0] if lines else ""
        problems.append(f"it printed {printed!r}, expected {expected!r} ({why})")
    module = next((w for w in lines if w.endswith("__init__.py")), "")
    if not under(module, prefix):
        problems.append(f"archspec was imported from {module!r}, not from the layer")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, f"archspec cpu: {expected}, {why} (from {module})")


def locale_verdict(result: CommandResult, locale: str, prefix: str) -> Verdict:
    problems = []
    if result.returncode != 0:
        problems.append(f"exited {result.returncode}")
    if "UTF-8" not in result.stdout.splitlines()[:1]:
        problems.append(f"`locale charmap` printed {result.stdout.splitlines()[:1]}, not UTF-8")
    if "annot set" in result.stderr or "annot change locale" in result.stderr:
        problems.append(f"setting {locale} failed: {result.stderr.strip()[:200]}")
    want = f"{prefix}/usr/lib/locale/{locale_dirname(locale)}/LC_CTYPE"
    if want not in maps_paths(result.stdout):
        problems.append(f"{want} is not mapped: the locale does not come from the layer")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, f"{locale} is UTF-8 and its LC_CTYPE is mapped from the layer")


def python_paths_verdict(result: CommandResult, prefix: str) -> Verdict:
    try:
        paths = [p for p in json.loads(result.stdout) if p]
    except (json.JSONDecodeError, TypeError):
        return Verdict(False, f"no sys.path printed: {result.tail(5)}")
    outside = [p for p in paths if not under(p, prefix)]
    if outside:
        return Verdict(False, f"the layer's Python searches outside the layer: {', '.join(outside)}")
    return Verdict(True, f"{len(paths)} sys.path entries, all in the layer")


def host_links_verdict(root: Path, host_files: Sequence[str]) -> Verdict:
    problems = []
    for host in host_files:
        link = root / host.lstrip("/")
        if not link.is_symlink():
            problems.append(f"{link} is not a symlink")
            continue
        target = str(link.readlink())
        if target != host:
            problems.append(f"{link} points to {target}, not {host}")
    if not host_files:
        problems.append("the layer names no host files")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, ", ".join(f"etc/{Path(h).name} -> {h}" for h in host_files))


# -- running the checks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the layer says about itself (``etc/eessi-compat/manifest.json``)."""

    prefix: str
    family: str
    tools: tuple[tuple[str, tuple[str, ...], str], ...]  # (command, args, expect)
    host_files: tuple[str, ...]
    locales: tuple[str, ...]

    @classmethod
    def read(cls, staging: Path) -> Manifest:
        path = staging / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                prefix=str(data["prefix"]),
                family=str(data["family"]),
                tools=tuple((t["command"], tuple(t["args"]), t["expect"]) for t in data["tools"]),
                host_files=tuple(data["host_files"]),
                locales=tuple(data["locales"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CompatError(
                f"{path}: cannot read the layer's manifest ({e}); the layer is incomplete: build it again"
            ) from e


class Acceptance:
    """The acceptance checks of one staged layer."""

    def __init__(
        self, view: LayerView, manifest: Manifest, expected_cpu: CpuExpectation | None = None
    ) -> None:
        self.view = view
        self.manifest = manifest
        self.prefix = view.prefix
        self.expected_cpu = expected_cpu

    @classmethod
    def for_layer(cls, staging: Path, expected_cpu: CpuExpectation | None = None) -> Acceptance:
        manifest = Manifest.read(staging)
        return cls(LayerView.for_host(staging, manifest.prefix), manifest, expected_cpu)

    @property
    def startprefix(self) -> str:
        return f"{self.prefix}/{STARTPREFIX}"

    def _run(
        self,
        argv: Sequence[str],
        *,
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> CommandResult:
        return self.view.run(argv, timeout=timeout, input_bytes=input_bytes, check=False, env=env)

    def _in_layer(self, *argv: str, **kw: Any) -> CommandResult:
        return self._run([self.startprefix, *argv], **kw)

    def _debugged(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[CommandResult, list[LoaderTrace]]:
        """Run ``argv`` in the layer with ``LD_DEBUG=libs``; return the result and the loader's account."""
        with tempfile.TemporaryDirectory(prefix="eessi-compat-ld-") as tmp:
            result = self._in_layer("env", "LD_DEBUG=libs", f"LD_DEBUG_OUTPUT={tmp}/ld", *argv, env=env)
            traces = [
                parse_ld_debug(
                    int(p.suffix.lstrip(".") or 0), p.read_text(encoding="utf-8", errors="replace")
                )
                for p in Path(tmp).glob("ld.*")
                if p.suffix.lstrip(".").isdigit()
            ]
        return result, traces

    # -- the checks ------------------------------------------------------------------------------------------
    def check_startprefix(self) -> CheckResult:
        token = "eessi-compat-startprefix-ok"
        script = f"echo {token}; {SHELL_SELF}; exit 3\n".encode()
        result = self._run([self.startprefix], input_bytes=script)
        v = startprefix_verdict(result, self.prefix, token, 3)
        return CheckResult("startprefix", v.ok, v.detail)

    def check_tool(self, command: str, args: Sequence[str], expect: str) -> CheckResult:
        name = "tool: " + " ".join([command, *args])
        found = self._in_layer("sh", "-c", 'command -v "$1"', "sh", command)
        result, debug = self._debugged([command, *args])
        v = tool_verdict(found.stdout, result, expect, debug, self.prefix)
        return CheckResult(name, v.ok, v.detail)

    def check_loader(self) -> CheckResult:
        result = self._in_layer("cat", "/proc/self/maps")
        v = maps_verdict(result.stdout, self.prefix)
        if result.returncode != 0:
            v = Verdict(False, f"cat /proc/self/maps exited {result.returncode}: {result.tail(5)}")
        return CheckResult("loader", v.ok, v.detail)

    def elf_files(self) -> list[str]:
        """The layer's dynamically linked ELF files (the loader itself left out), as paths at the prefix."""
        out = []
        for elf in scan_elves(self.view.staging, self.manifest.family):
            names = (Path(elf.rel).name, elf.info.soname or "")
            if any(_LOADER_NAME.match(n) for n in names):
                continue  # the loader cannot list itself
            if elf.info.dynamic and (elf.info.needed or elf.info.interpreter):
                out.append(f"{self.prefix}/{elf.rel}")
        return out

    def check_no_host_libraries(self) -> CheckResult:
        files = self.elf_files()
        loader = f"{self.prefix}/{self._loader_rel()}"
        script = STDIN_SCRIPT
        result = self._run(
            [f"{self.prefix}/bin/bash", "-c", script, "bash", loader],
            input_bytes=("\n".join(files) + "\n").encode(),
            timeout=600,
        )
        v = listing_verdict(parse_list_output(result.stdout), self.prefix, len(files))
        return CheckResult("no-host-libraries", v.ok, v.detail)

    def _loader_rel(self) -> str:
        for elf in scan_elves(self.view.staging, self.manifest.family):
            if elf.rel in ("bin/bash", "usr/bin/bash") and elf.info.interpreter:
                return elf.info.interpreter[len(self.prefix) :].lstrip("/")
        raise CompatError(f"{self.view.staging}: no bin/bash with an interpreter in the layer; rebuild it")

    def check_lmod(self) -> CheckResult:
        script = '. "$EPREFIX/usr/share/Lmod/init/profile" && echo "LMOD_CMD=$LMOD_CMD" && module avail 2>&1'
        result, debug = self._debugged(["bash", "-c", script])
        v = lmod_verdict(result, debug, self.prefix)
        return CheckResult("lmod", v.ok, v.detail)

    def check_archspec(self) -> CheckResult:
        script = "archspec cpu && python3 -c 'import archspec; print(archspec.__file__)'"
        result = self._in_layer("sh", "-c", script)
        expected = self.expected_cpu or expected_cpu(self.manifest.family)
        v = archspec_verdict(result, expected.name, self.prefix, expected.why)
        return CheckResult("archspec", v.ok, v.detail)

    def check_locale(self) -> CheckResult:
        wanted = self.manifest.locales[0] if self.manifest.locales else "C.UTF-8"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")} | {"LANG": wanted}
        result = self._in_layer("sh", "-c", "locale charmap && cat /proc/self/maps", env=env)
        v = locale_verdict(result, wanted, self.prefix)
        return CheckResult(f"locale {wanted}", v.ok, v.detail)

    def check_python_paths(self) -> CheckResult:
        result = self._in_layer("python3", "-c", "import json, sys; print(json.dumps(sys.path))")
        v = python_paths_verdict(result, self.prefix)
        return CheckResult("python-paths", v.ok, v.detail)

    def check_host_links(self) -> CheckResult:
        v = host_links_verdict(self.view.staging, self.manifest.host_files)
        return CheckResult("host-links", v.ok, v.detail)

    def checks(self) -> list[tuple[str, Callable[[], CheckResult]]]:
        table: list[tuple[str, Callable[[], CheckResult]]] = [
            ("startprefix", self.check_startprefix),
            ("loader", self.check_loader),
            ("no-host-libraries", self.check_no_host_libraries),
            ("lmod", self.check_lmod),
            ("archspec", self.check_archspec),
            ("locale", self.check_locale),
            ("python-paths", self.check_python_paths),
            ("host-links", self.check_host_links),
        ]
        for command, args, expect in self.manifest.tools:
            label = "tool: " + shlex.join([command, *args])
            table.append((label, functools.partial(self.check_tool, command, args, expect)))
        return table

    def run_all(
        self, jobs: int = 2, progress: Callable[[CheckResult], None] | None = None
    ) -> list[CheckResult]:
        """Run every check (``jobs`` at a time); a check that crashes is a failed check, not an abort."""

        def one(item: tuple[str, Callable[[], CheckResult]]) -> CheckResult:
            name, fn = item
            try:
                result = fn()
            except (CompatError, CommandFailed, OSError) as e:
                result = CheckResult(name, False, f"could not run: {e}")
            if progress is not None:
                progress(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, self.checks()))
