"""The files that make a tree of packages a prefix: ``startprefix``, host links, locales, links, wheels.

Texts are produced by pure functions (:func:`startprefix_script`,
:func:`console_script`); the writers put them into a staged layer.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import shlex
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompatError
from ..proc import CommandFailed, run
from .packageset import Link

log = logging.getLogger(__name__)

STARTPREFIX = "startprefix"
LEAVING = "Leaving compat layer {prefix} with exit status {status}"
"""What startprefix writes to stderr when the command or shell ends (the checks parse it)."""
LEAVING_RE = re.compile(r"Leaving compat layer (\S+) with exit status (\d+)")
BASHRC = "etc/eessi-compat/bashrc"
LOCALEDEF_TIMEOUT = 300.0
#: Variables startprefix points into the layer: data and plugins that libraries would otherwise load from
#: paths compiled into them (the host's /usr/lib/...), which no RUNPATH can redirect.
PLUGIN_PATHS = (
    ("LOCPATH", "usr/lib/locale", "glibc's compiled locales"),
    ("GCONV_PATH", "usr/lib/{triplet}/gconv", "glibc's iconv modules"),
    ("SASL_PATH", "usr/lib/{triplet}/sasl2", "libsasl2 plugins (curl, ldap)"),
    ("OPENSSL_CONF", "usr/lib/ssl/openssl.cnf", "OpenSSL's configuration"),
    ("OPENSSL_MODULES", "usr/lib/{triplet}/ossl-modules", "OpenSSL 3 providers"),
)
SITE_PACKAGES = "usr/lib/python3/dist-packages"


def locale_dirname(name: str) -> str:
    """glibc's normalised directory name of a locale: ``en_US.UTF-8`` -> ``en_US.utf8``."""
    base, _, codeset = name.partition(".")
    if not codeset:
        return name
    return f"{base}.{re.sub(r'[^a-z0-9]', '', codeset.lower())}"


def startprefix_script(prefix: str, triplet: str, default_locale: str, backend: str) -> str:
    """The ``startprefix`` script: run a command (or a shell) inside the layer with a clean environment.

    It is a POSIX ``sh`` script run by the layer's own shell: invoked as ``sh``, bash reads no
    start-up file, so a ``BASH_ENV`` of the caller's (Lmod sets one) cannot run host code in it.
    """
    q = shlex.quote
    leaving = LEAVING.format(prefix="$EPREFIX", status="$status")
    plugin_env = "".join(
        f'    {var}="$EPREFIX/{rel.format(triplet=triplet)}" \\\n' for var, rel, _why in PLUGIN_PATHS
    )
    return f"""#!{prefix}/bin/sh
# startprefix: run a command, or start a shell, inside the compatibility layer at
#   {prefix}
# with a clean environment: only the layer's programs on PATH, its Python without the user's
# site-packages, and the layer's own locales, gconv, SASL and OpenSSL modules and configuration
# (glibc, libsasl2 and OpenSSL would otherwise load those from the host's compiled-in paths).
#
#   startprefix                 a shell (interactive, or reading commands from standard input)
#   startprefix CMD [ARG...]    run CMD inside the layer
#
# When it ends, "{LEAVING.format(prefix=prefix, status="N")}" goes to stderr and the exit
# status is N.  Written by eessi-pipeline ({backend} backend): rebuild the layer rather than edit it.
EPREFIX={q(prefix)}
if [ ! -x "$EPREFIX/bin/bash" ]; then
    echo "startprefix: $EPREFIX/bin/bash is missing: the layer is incomplete; rebuild it" >&2
    exit 127
fi
lang=${{LC_ALL:-${{LANG:-}}}}
case $lang in
    ''|C|POSIX) lang={q(default_locale)} ;;
esac
case $lang in
    *.[Uu][Tt][Ff]-8|*.[Uu][Tt][Ff]8) norm=${{lang%%.*}}.utf8 ;;
    *) norm=$lang ;;
esac
[ -d "$EPREFIX/usr/lib/locale/$norm" ] || lang={q(default_locale)}
if [ $# -eq 0 ]; then
    set -- "$EPREFIX/bin/bash" --noprofile --rcfile "$EPREFIX/{BASHRC}"
fi
"$EPREFIX/usr/bin/env" -i \\
    HOME="${{HOME:-/}}" USER="${{USER:-}}" LOGNAME="${{LOGNAME:-}}" TERM="${{TERM:-dumb}}" \\
    TMPDIR="${{TMPDIR:-/tmp}}" \\
    EPREFIX="$EPREFIX" SHELL="$EPREFIX/bin/bash" \\
    PATH="$EPREFIX/usr/local/bin:$EPREFIX/usr/bin:$EPREFIX/bin:$EPREFIX/usr/sbin:$EPREFIX/sbin" \\
    LANG="$lang" PYTHONNOUSERSITE=1 \\
{plugin_env}    "$@"
status=$?
echo "{leaving}" >&2
exit $status
"""


def bashrc_text(prefix: str) -> str:
    """The rc file of startprefix's interactive shell: a prompt that shows where one is, and Lmod."""
    return f"""# Interactive shells of {prefix}/startprefix (written by eessi-pipeline).
PS1='[compat] \\w \\$ '
if [ -r "$EPREFIX/usr/share/Lmod/init/bash" ]; then
    . "$EPREFIX/usr/share/Lmod/init/bash"
fi
"""


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def write_startprefix(root: Path, prefix: str, triplet: str, default_locale: str, backend: str) -> Path:
    write_executable(root / STARTPREFIX, startprefix_script(prefix, triplet, default_locale, backend))
    rc = root / BASHRC
    rc.parent.mkdir(parents=True, exist_ok=True)
    rc.write_text(bashrc_text(prefix), encoding="utf-8")
    rc.chmod(0o644)
    return root / STARTPREFIX


def _replace_with_link(path: Path, target: str) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        raise CompatError(f"{path} is a directory; cannot make it a symlink to {target}: fix the package set")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def link_host_files(root: Path, host_files: Sequence[str]) -> list[str]:
    """Make ``<layer>/etc/<name>`` a symlink to the host's ``/etc/<name>``; return the links (relative)."""
    made = []
    for host in host_files:
        rel = host.lstrip("/")
        _replace_with_link(root / rel, host)
        made.append(rel)
    return made


def make_links(root: Path, links: Sequence[Link]) -> list[str]:
    """Create the package set's links (what update-alternatives would); a missing target is an error."""
    made = []
    for link in links:
        path = root / link.path
        if not os.path.lexists(path.parent / link.target):
            raise CompatError(
                f"links.{link.path}: target {link.target} does not exist in the layer; fix the package set"
            )
        _replace_with_link(path, link.target)
        made.append(link.path)
    return made


def loader_argv(root: Path, loader_rel: str, triplet: str, program_rel: str) -> list[str]:
    """Run a staged (not yet mounted) layer program with the staged loader and libraries."""
    libs = ":".join(str(root / d) for d in (f"lib/{triplet}", f"usr/lib/{triplet}"))
    return [str(root / loader_rel), "--library-path", libs, str(root / program_rel)]


def compile_locales(root: Path, loader_rel: str, triplet: str, locales: Sequence[str]) -> list[str]:
    """Compile each UTF-8 locale with the layer's localedef into ``usr/lib/locale/<name>.utf8``."""
    made = []
    env = {"PATH": "/usr/bin:/bin", "I18NPATH": str(root / "usr/share/i18n"), "LC_ALL": "C"}
    for name in locales:
        base, _, codeset = name.partition(".")
        out = root / "usr/lib/locale" / locale_dirname(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            *loader_argv(root, loader_rel, triplet, "usr/bin/localedef"),
            "--no-archive",
            "-i",
            base,
            "-f",
            codeset,
            str(out),
        ]
        try:
            run(argv, timeout=LOCALEDEF_TIMEOUT, env=env)
        except CommandFailed as e:
            raise CompatError(
                f"localedef could not compile {name} into the layer: {e}\n"
                "check that the locales package (usr/share/i18n) is in the package set"
            ) from e
        made.append(out.name)
    return made


# -- PyPI wheels ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleScript:
    name: str
    module: str
    function: str


def console_scripts(entry_points_text: str) -> list[ConsoleScript]:
    """The ``[console_scripts]`` of a wheel's ``entry_points.txt``."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    cp.read_string(entry_points_text)
    if not cp.has_section("console_scripts"):
        return []
    out = []
    for name, value in cp.items("console_scripts"):
        module, _, func = value.partition(":")
        out.append(ConsoleScript(name, module.strip(), func.strip().split()[0] if func.strip() else "main"))
    return out


def console_script(prefix: str, script: ConsoleScript, requirement: str) -> str:
    """A console script run by the layer's Python."""
    top = script.function.split(".")[0]
    return (
        f"#!{prefix}/usr/bin/python3\n"
        f"# {script.name}: console script of {requirement}, installed into the layer by eessi-pipeline\n"
        "import sys\n"
        f"from {script.module} import {top}\n"
        "if __name__ == '__main__':\n"
        f"    sys.exit({script.function}())\n"
    )


def wheel_argv(python: str, requirements: Sequence[str], into: Path) -> list[str]:
    """``pip download`` of pure wheels, without dependencies (pin every requirement in the package set)."""
    return [
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(into),
        *requirements,
    ]


def cached_wheel(into: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for p in sorted(into.glob("*.whl")) if into.is_dir() else []:
        parts = p.name.split("-")
        if len(parts) >= 2 and re.sub(r"[-_.]+", "_", parts[0]).lower() == norm and parts[1] == version:
            return p
    return None


def install_wheel(root: Path, prefix: str, wheel: Path, requirement: str) -> list[str]:
    """Unpack a pure-Python wheel into the layer's dist-packages and write its console scripts."""
    site = root / SITE_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    scripts: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if any(n.split("/", 1)[0].endswith(".data") for n in names):
            raise CompatError(
                f"{wheel.name} has a .data directory; only plain pure-Python wheels are supported"
            )
        tag = next((n for n in names if n.endswith(".dist-info/WHEEL")), None)
        if tag is None or "Root-Is-Purelib: true" not in zf.read(tag).decode("utf-8", "replace"):
            raise CompatError(f"{wheel.name} is not a pure-Python wheel; the layer's Python needs one")
        for n in names:
            target = (site / n).resolve()
            if not str(target).startswith(str(site.resolve()) + os.sep):
                raise CompatError(f"{wheel.name}: member {n!r} escapes the install directory; refusing it")
        zf.extractall(site)
        ep = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        if ep is not None:
            for cs in console_scripts(zf.read(ep).decode("utf-8")):
                write_executable(root / "usr/bin" / cs.name, console_script(prefix, cs, requirement))
                scripts.append(f"usr/bin/{cs.name}")
        info_dir = next((n.split("/", 1)[0] for n in names if ".dist-info/" in n), None)
        if info_dir is not None:
            (site / info_dir / "INSTALLER").write_text("eessi-pipeline\n", encoding="utf-8")
    for path in site.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else stat.S_IMODE(path.stat().st_mode) | 0o644)
    return scripts
