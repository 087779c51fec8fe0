# ReFrame declares test attributes as mutable class-level lists and sets; its metaclass copies them per test.
# ruff: noqa: RUF012
"""ReFrame acceptance checks of a compatibility layer (reframe-hpc 4.10.0).

The layer is named by ``EESSI_COMPAT_PREFIX`` (its prefix, e.g.
``/cvmfs/software.eessi.local/versions/2023.06/compat/linux/x86_64``); the tools to run
and the host files come from the layer's own manifest
(``<prefix>/etc/eessi-compat/manifest.json``).  ``eessi-pipeline compat check`` writes a
minimal configuration (one local partition) and runs these checks with the layer
visible at its prefix.  Every check runs the layer's programs through its
``startprefix``, extracts what they printed and asserts on it; nothing is built.

A layer of another CPU family runs here under qemu-user: the checks read only ``/proc/self``
(qemu-user answers it for the emulated program; another process's ``/proc/<pid>`` names the
emulator), and ``archspec cpu`` must print ``EESSI_COMPAT_EXPECTED_CPU`` (set by
``eessi_pipeline.compat.rfm_runner``: the host's microarchitecture natively, the family's generic
one under emulation; without it, the host's).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from typing import Any

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import parameter, run_after, sanity_function, variable

PREFIX = os.environ.get("EESSI_COMPAT_PREFIX", "")
LEAVING = r"Leaving (?:compat layer \S+|Gentoo Prefix) with exit status (\d+)"
_LOADER_NAME = re.compile(r"^(ld-linux[-\w.]*\.so\.\d+|ld64\.so\.\d+|ld\.so\.\d+)$")


def _manifest() -> dict[str, Any]:
    try:
        with open(os.path.join(PREFIX, "etc/eessi-compat/manifest.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


MANIFEST = _manifest()
TOOLS = [(t["command"], tuple(t["args"]), t["expect"]) for t in MANIFEST.get("tools", [])]
HOST_FILES = list(
    MANIFEST.get(
        "host_files", ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf"]
    )
)
LOCALE = (MANIFEST.get("locales") or ["en_US.UTF-8"])[0]
EXPECTED_CPU = os.environ.get("EESSI_COMPAT_EXPECTED_CPU", "")
EXPECTED_CPU_WHY = os.environ.get("EESSI_COMPAT_EXPECTED_CPU_WHY", "this host's microarchitecture")


def _under(path: str) -> bool:
    return path.startswith(PREFIX.rstrip("/") + "/")


def _maps_paths(text: str) -> list[str]:
    paths = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.append(fields[5].removesuffix(" (deleted)"))
    return paths


class compat_layer_check(rfm.RunOnlyRegressionTest):
    """Base: run through the layer's startprefix on the local partition."""

    compat_prefix = variable(str, value=PREFIX)
    valid_systems = ["*"]
    valid_prog_environs = ["*"]
    time_limit = "5m"
    tags = {"compat"}

    @run_after("init")
    def use_startprefix(self) -> None:
        self.executable = os.path.join(self.compat_prefix, "startprefix")
        what = getattr(self, "descr", "") or type(self).__name__
        self.descr = f"compat layer {self.compat_prefix}: {what}"

    def leaving_status(self) -> Any:
        return sn.extractsingle(LEAVING, self.stderr, 1, int)


@rfm.simple_test
class compat_startprefix(compat_layer_check):
    """startprefix runs commands from stdin in the layer's own shell and passes the exit status on.
    The shell names its executable from its own /proc/self/maps (first mapping), read by itself."""

    descr = "startprefix runs a command"

    @run_after("init")
    def feed_commands(self) -> None:
        own_exe = 'read -r _ _ _ _ _ exe < /proc/self/maps; echo "shell=$exe"'
        self.executable_opts = ["<<<", shlex.quote(f"echo eessi-compat-ok; {own_exe}; exit 3")]

    @sanity_function
    def assert_ran_in_layer(self) -> Any:
        return sn.all(
            [
                sn.assert_found(r"^eessi-compat-ok$", self.stdout),
                sn.assert_found(
                    rf"^shell={re.escape(self.compat_prefix)}/\S+$",
                    self.stdout,
                    msg=f"the shell is not the layer's: {self.shell_seen()}",
                ),
                sn.assert_eq(self.leaving_status(), 3),
                sn.assert_eq(self.job.exitcode, 3),
            ]
        )

    def shell_seen(self) -> str:
        with open(os.path.join(self.stagedir, str(self.stdout)), encoding="utf-8", errors="replace") as fh:
            return ", ".join(re.findall(r"^shell=(.*)$", fh.read(), re.M)) or "no shell= line"


@rfm.simple_test
class compat_tool(compat_layer_check):
    """Every tool of the package set: found in the layer, runs, prints what it should, loads only the
    layer's objects (the loader's own LD_DEBUG account, dlopen included)."""

    tool = parameter(TOOLS, fmt=lambda t: "_".join([t[0], *t[1]])[:40])
    descr = "a tool of the package set runs"

    @run_after("init")
    def run_tool(self) -> None:
        command, args, _ = self.tool
        script = 'echo "found=$(command -v "$0")"; exec env LD_DEBUG=libs LD_DEBUG_OUTPUT="$PWD/ld" "$0" "$@"'
        self.executable_opts = [
            "sh",
            "-c",
            shlex.quote(script),
            command,
            *map(shlex.quote, args),
            "</dev/null",
        ]

    @sanity_function
    def assert_tool_runs(self) -> Any:
        _, _, expect = self.tool
        checks = [
            sn.assert_found(
                rf"^found={re.escape(self.compat_prefix)}/\S+$",
                self.stdout,
                msg="the command is not the layer's",
            ),
            sn.assert_eq(self.leaving_status(), 0),
            sn.assert_true(self.loaded_only_layer(), msg="objects from outside the layer were loaded"),
        ]
        if expect:
            checks.append(
                sn.assert_true(re.search(expect, self.output()), msg=f"the output lacks /{expect}/")
            )
        return sn.all(checks)

    def output(self) -> Any:
        with (
            open(os.path.join(self.stagedir, str(self.stdout)), encoding="utf-8", errors="replace") as out,
            open(os.path.join(self.stagedir, str(self.stderr)), encoding="utf-8", errors="replace") as err,
        ):
            return out.read() + err.read()

    def loaded_only_layer(self) -> Any:
        files = sorted(glob.glob(os.path.join(self.stagedir, "ld.*")), key=lambda p: int(p.rsplit(".", 1)[1]))
        if not files:
            return False
        for i, path in enumerate(files):
            with open(path, encoding="utf-8", errors="replace") as fh:
                objects = re.findall(r"(?:calling init: |trying file=)(/\S+)", fh.read())
            loader = next((o for o in objects if _LOADER_NAME.match(o.rsplit("/", 1)[-1])), "")
            if not _under(loader):
                if i == 0:
                    return False  # the tool itself ran with a host loader
                continue  # a host program the tool started through /bin/sh (glibc's system/popen)
            if any(not _under(o) for o in objects):
                return False
        return True


@rfm.simple_test
class compat_loaded_libc(compat_layer_check):
    """A layer process's /proc/self/maps shows the layer's ld.so and libc, and no file from the host."""

    descr = "libc and ld.so of a layer process come from the layer"
    executable_opts = ["cat", "/proc/self/maps"]

    @sanity_function
    def assert_layer_libc(self) -> Any:
        with open(os.path.join(self.stagedir, str(self.stdout)), encoding="utf-8") as fh:
            paths = _maps_paths(fh.read())
        libc = [p for p in paths if re.search(r"/libc[.-][^/]*so", p)]
        ldso = [p for p in paths if re.search(r"/ld-linux[^/]*\.so|/ld64\.so", p)]
        outside = [p for p in paths if not _under(p) and not p.startswith(("/dev/", "/proc/"))]
        return sn.all(
            [
                sn.assert_true(libc and all(_under(p) for p in libc), msg=f"libc mapped from {libc}"),
                sn.assert_true(ldso and all(_under(p) for p in ldso), msg=f"ld.so mapped from {ldso}"),
                sn.assert_eq(outside, [], msg="files mapped from outside the layer: {0}"),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )


@rfm.simple_test
class compat_no_host_libraries(compat_layer_check):
    """The layer's own loader (ld.so --list) resolves every library of every ELF file inside the layer."""

    descr = "no ELF file of the layer resolves a library from the host"
    sourcesdir = "src"
    time_limit = "15m"

    @run_after("init")
    def list_everything(self) -> None:
        loader = os.path.join(self.compat_prefix, "lib64", "ld-linux-x86-64.so.2")
        for name in sorted(glob.glob(os.path.join(self.compat_prefix, "lib*", "ld-linux*.so.*"))):
            loader = name
        self.executable_opts = ["bash", "list_libraries.sh", loader]

    @sanity_function
    def assert_all_in_layer(self) -> Any:
        return sn.all(
            [
                sn.assert_gt(sn.extractsingle(r"^CHECKED (\d+)", self.stdout, 1, int), 0),
                sn.assert_not_found(r"^(HOST|MISSING|FAIL) ", self.stdout),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )


@rfm.simple_test
class compat_lmod(compat_layer_check):
    """`module avail` works with the layer's Lmod (as EESSI's own compat-layer test runs it)."""

    descr = "Lmod module avail works from the layer"
    executable_opts = [
        "bash",
        "-c",
        "'. \"$EPREFIX/usr/share/Lmod/init/profile\" && echo LMOD_CMD=$LMOD_CMD && module avail'",
    ]

    @sanity_function
    def assert_module_avail(self) -> Any:
        return sn.all(
            [
                sn.assert_found(
                    rf"^LMOD_CMD={re.escape(self.compat_prefix)}/\S+$",
                    self.stdout,
                    msg="LMOD_CMD is not the layer's",
                ),
                sn.assert_found(r"Core/lmod", self.stderr),
                sn.assert_found(r"settarg", self.stderr),
                sn.assert_found(r"module spider", self.stderr),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )


@rfm.simple_test
class compat_archspec(compat_layer_check):
    """`archspec cpu` runs with the layer's Python and names the expected microarchitecture."""

    descr = "archspec cpu runs with the layer's python"
    executable_opts = [
        "sh",
        "-c",
        "'archspec cpu && python3 -c \"import archspec; print(archspec.__file__)\"'",
    ]

    @sanity_function
    def assert_expected_cpu(self) -> Any:
        expected = EXPECTED_CPU
        if not expected:
            import archspec.cpu

            expected = str(archspec.cpu.host().name)
        return sn.all(
            [
                sn.assert_found(
                    rf"^{re.escape(expected)}$",
                    self.stdout,
                    msg=f"archspec cpu did not print {expected} ({EXPECTED_CPU_WHY})",
                ),
                sn.assert_found(
                    rf"^{re.escape(self.compat_prefix)}/\S+/archspec/__init__\.py$",
                    self.stdout,
                    msg="archspec is not the layer's",
                ),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )


@rfm.simple_test
class compat_utf8_locale(compat_layer_check):
    """A UTF-8 locale of the layer is used: its LC_CTYPE is mapped from the layer."""

    descr = "a UTF-8 locale exists in the layer"
    executable_opts = ["sh", "-c", "'locale charmap && cat /proc/self/maps'"]

    @run_after("init")
    def set_locale(self) -> None:
        self.env_vars = {"LANG": LOCALE}

    @sanity_function
    def assert_utf8(self) -> Any:
        name = LOCALE.split(".")[0] + ".utf8"
        return sn.all(
            [
                sn.assert_found(r"^UTF-8$", self.stdout),
                sn.assert_found(
                    re.escape(f"{self.compat_prefix}/usr/lib/locale/{name}/LC_CTYPE"), self.stdout
                ),
                sn.assert_not_found(r"annot (set|change) (LC_|locale)", self.stderr),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )


@rfm.simple_test
class compat_host_symlink(compat_layer_check):
    """etc/passwd & co. of the layer are symlinks to the host's files."""

    host_file = parameter(HOST_FILES, fmt=lambda h: h.rsplit("/", 1)[-1])
    descr = "a symlink to a host file"

    @run_after("init")
    def read_link(self) -> None:
        self.executable_opts = ["readlink", os.path.join(self.compat_prefix, self.host_file.lstrip("/"))]

    @sanity_function
    def assert_points_to_host(self) -> Any:
        return sn.all(
            [
                sn.assert_found(rf"^{re.escape(self.host_file)}$", self.stdout),
                sn.assert_eq(self.leaving_status(), 0),
            ]
        )
