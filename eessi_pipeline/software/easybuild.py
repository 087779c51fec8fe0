"""EasyBuild configuration per target (pure) and the ``eb`` argument vectors built from it.

EasyBuild runs as ``<python> -m easybuild.main`` of the interpreter that has it installed (the
project's ``build`` extra pins ``easybuild==5.4.1``), so no ``eb`` wrapper or ``python`` on PATH is needed.
The options follow what EESSI-extend sets: Lmod with Lua
modules, RPATH, filtered dependencies, a hooks file, ``--optarch=GENERIC`` for generic targets, and
``--allow-use-as-root-and-accept-consequences`` only when running as root.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import archspec.cpu

from ..errors import BuildError

EASYBUILD_VERSION = "5.4.1"
LMOD_CMD = "/usr/share/lmod/lmod/libexec/lmod"
LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
HOOKS = Path(__file__).resolve().parent / "eb_hooks.py"
FILTER_DEPS = (
    "Autoconf", "Automake", "Autotools", "binutils", "bzip2", "DBus", "flex", "gettext", "gperf", "help2man",
    "intltool", "libreadline", "libtool", "M4", "makeinfo", "ncurses", "util-linux", "XZ", "zlib",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EasyBuildConfig:
    installpath: str
    sourcepath: Path
    buildpath: Path
    prefix: Path
    robot_paths: tuple[Path, ...]
    hooks: Path
    generic: bool
    as_root: bool
    system_cflags: str
    filter_deps: tuple[str, ...] = FILTER_DEPS
    python: str = sys.executable


def system_cflags(archspec_name: str, generic: bool, gcc_version: str) -> str:
    """Compiler flags for SYSTEM-toolchain builds of a target, from archspec (pure)."""
    if generic:
        return "-O2 -march=x86-64 -mtune=generic" if archspec_name == "x86_64" else "-O2"
    # archspec compares versions as written: 12.2.0 falls outside its range "10.3:12.2", 12.2 does not.
    short = ".".join(gcc_version.split(".")[:2])
    try:
        flags = archspec.cpu.TARGETS[archspec_name].optimization_flags("gcc", short)
    except (KeyError, ValueError) as e:
        raise BuildError(
            f"no gcc {gcc_version} flags for {archspec_name} in archspec ({e}); use a newer gcc"
        ) from e
    return f"-O2 {flags}".strip()


def eb_options(cfg: EasyBuildConfig) -> list[str]:
    """EasyBuild's configuration as command-line options (pure)."""
    opts = [
        f"--installpath={cfg.installpath}",
        f"--sourcepath={cfg.sourcepath}",
        f"--buildpath={cfg.buildpath}",
        f"--prefix={cfg.prefix}",
        # exactly the stack's robot paths (no trailing ':'): EasyBuild's default robot path, its shipped
        # easyconfigs, is searched only where the stack names it (robot: [..., easybuild])
        f"--robot-paths={':'.join(str(p) for p in cfg.robot_paths)}",
        f"--hooks={cfg.hooks}",
        "--modules-tool=Lmod",
        "--module-syntax=Lua",
        "--rpath",
        f"--filter-deps={','.join(cfg.filter_deps)}",
        "--filter-env-vars=LD_LIBRARY_PATH",
        "--ignore-osdeps",
        "--umask=022",
        "--read-only-installdir",
        "--detect-loaded-modules=unload",
        "--trace",
    ]
    if cfg.generic:
        opts.append("--optarch=GENERIC")
    if cfg.as_root:
        opts.append("--allow-use-as-root-and-accept-consequences")
    return opts


def eb_install_argv(cfg: EasyBuildConfig, easystack: Path) -> list[str]:
    return [cfg.python, "-m", "easybuild.main", *eb_options(cfg), f"--easystack={easystack}", "--robot"]


def eb_missing_argv(cfg: EasyBuildConfig, easystack: Path) -> list[str]:
    return [cfg.python, "-m", "easybuild.main", *eb_options(cfg), f"--easystack={easystack}", "--missing"]


def eb_resolve_argv(cfg: EasyBuildConfig, easystack: Path) -> list[str]:
    """EasyBuild's own dry run: resolve the easystack's whole dependency graph, build nothing (pure)."""
    return [*eb_install_argv(cfg, easystack), "--dry-run"]


@dataclass(frozen=True, slots=True)
class Resolved:
    """One line of ``eb --dry-run``: an easyconfig of the dependency graph and whether it is installed."""

    module: str
    easyconfig: str
    installed: bool


_DRY_RUN_LINE = re.compile(r"^\s*\*\s+\[(?P<mark>[ xFR])\]\s+(?P<ec>\S+)\s+\(module:\s*(?P<module>[^)]+)\)")


def parse_dry_run(output: str) -> tuple[Resolved, ...]:
    """The graph ``eb --dry-run`` prints (`` * [ ] $CFGS/g/GCC/GCC-12.3.0.eb (module: GCC/12.3.0)``), in
    build order, each module once (an easystack prints one graph per entry; pure)."""
    seen: dict[str, Resolved] = {}
    for line in output.splitlines():
        m = _DRY_RUN_LINE.match(line)
        if m and m["module"] not in seen:
            seen[m["module"]] = Resolved(m["module"].strip(), m["ec"], m["mark"] == "x")
    return tuple(seen.values())


def eb_environment(cfg: EasyBuildConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The environment ``eb`` runs with: Lmod found, MODULEPATH = the target's modules, flags for hooks."""
    env = {k: v for k, v in base.items() if not k.startswith(("EASYBUILD_", "LMOD_", "_LMOD", "__LMOD"))}
    env.pop("LOADEDMODULES", None)
    env.pop("_LMFILES_", None)
    bindir = str(Path(cfg.python).parent)
    path = env.get("PATH", os.defpath)
    env["PATH"] = bindir + os.pathsep + path if bindir not in path.split(os.pathsep) else path
    env["LMOD_CMD"] = LMOD_CMD
    env["MODULEPATH"] = f"{cfg.installpath}/modules/all"
    env["EESSI_PIPELINE_SYSTEM_CFLAGS"] = cfg.system_cflags
    env["LC_ALL"] = "C.UTF-8"
    return env


def installed_easybuild_version() -> str:
    try:
        return importlib.metadata.version("easybuild-framework")
    except importlib.metadata.PackageNotFoundError as e:
        raise BuildError(
            f"EasyBuild is not installed in {sys.prefix}; run "
            f"`.venv/bin/pip install 'eessi-pipeline[build]'` "
            f"(easybuild=={EASYBUILD_VERSION})"
        ) from e


def missing_modules(output: str) -> list[str]:
    """Modules ``eb --missing`` lists as missing (EESSI's check_missing_installations; pure)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "required modules missing:" in line:
            out = []
            for rest in lines[i + 1 :]:
                item = rest.strip()
                if item.startswith("* "):
                    out.append(item[2:].split(" ")[0])
                elif item and out:
                    break
            return out or ["(unparsed)"]
    return []
