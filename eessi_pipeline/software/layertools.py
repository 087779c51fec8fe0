"""The compatibility layer's own compiler and Python, for a stack of another CPU family than the build host's.

On an x86_64 host an aarch64 stack cannot use the host's gcc or python3: they make x86_64 code and install
x86_64 wheels.  The aarch64 layer carries Debian's arm64 ``gcc`` (with ``libc6-dev``), binutils, Python 3.11
and pip (``matrices/compat/aarch64.yaml``), as EESSI's Gentoo Prefix layer carries GCC; qemu-user runs
them through binfmt_misc.  EasyBuild itself stays on the host's Python (it only runs commands); what it
runs finds the layer's tools first:

* ``PATH`` starts with a small directory of wrappers (``gcc``, ``cc``: the layer's gcc with
  ``--sysroot=<layer prefix>``, so headers, ``crt*.o`` and ``libc.so``'s linker script come from the
  layer and never from the host's ``/usr/include`` or ``/usr/lib``; ``python``: the layer's ``python3``,
  which EasyBuild's PythonPackage picks before ``python3``), then the layer's ``usr/bin`` and ``bin``
  (``as``, ``ld``, ``python3``, ``pip``), then the host's ``PATH``;
* ``QEMU_LD_PREFIX=<layer prefix>``: an emulated program that opens an absolute path (its ELF interpreter
  ``/lib/ld-linux-aarch64.so.1``, a library in ``/usr/lib/aarch64-linux-gnu``) gets the layer's file
  when the layer has one.  The layer plays the part a native arm64 build host's own ``/`` plays for
  EasyBuild's sanity checks, which run the new programs (STREAM) and import NumPy before the link step
  (:mod:`eessi_pipeline.software.compatlink`) gives them the layer's loader and library directories for
  good.  Host (x86_64) programs are not emulated and do not see it.

The decisions are pure (:func:`layer_compiles`, :func:`wrapper_texts`, :func:`layer_environment`);
:func:`write_wrappers` writes the wrappers.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

#: Programs the wrapper directory provides (``cc``: make's default compiler, e.g. STREAM's Makefile).
WRAPPED = ("gcc", "cc", "python")


def layer_compiles(target_family: str, host_machine: str) -> bool:
    """Does a stack of ``target_family`` build with the layer's tools on a host whose ``uname -m`` is
    ``host_machine``?  Only when the families differ: a native build keeps the host's compiler (pure)."""
    return target_family != host_machine


def wrapper_texts(prefix: str) -> dict[str, str]:
    """The wrapper scripts for the layer at ``prefix`` (name -> text; pure)."""
    gcc = (
        "#!/bin/sh\n"
        "# the compatibility layer's gcc with the layer as its system root (eessi-pipeline)\n"
        f'exec {shlex.quote(prefix + "/usr/bin/gcc")} --sysroot={shlex.quote(prefix)} "$@"\n'
    )
    python = (
        "#!/bin/sh\n"
        "# the compatibility layer's Python (eessi-pipeline)\n"
        f'exec {shlex.quote(prefix + "/usr/bin/python3")} "$@"\n'
    )
    return {"gcc": gcc, "cc": gcc, "python": python}


def write_wrappers(directory: Path, prefix: str) -> Path:
    """Write the wrappers for the layer at ``prefix`` into ``directory`` (replaced); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in wrapper_texts(prefix).items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(path)
    return directory


def layer_environment(base: Mapping[str, str], prefix: str, wrappers: Path) -> dict[str, str]:
    """``base`` with the wrappers and the layer's bin directories first on ``PATH`` and
    ``QEMU_LD_PREFIX`` set to the layer (pure)."""
    env = dict(base)
    first = [str(wrappers), f"{prefix}/usr/bin", f"{prefix}/bin"]
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p not in first]
    env["PATH"] = os.pathsep.join([*first, *rest])
    env["QEMU_LD_PREFIX"] = prefix
    return env


def code_sha256() -> str:
    """The digest of this module: other wrappers or environment mean another build."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
