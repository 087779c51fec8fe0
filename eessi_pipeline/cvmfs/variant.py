"""Variant symlinks: a symlink target with ``$(VAR)`` or ``$(VAR:-default)`` in it, as CernVM-FS has them.

The repository stores the target as written; each client expands it with its own environment when the
link is read (the real client takes the variables from its configuration, e.g. ``/etc/cvmfs/default.local``,
which it exports to its process).  EESSI publishes ``host_injections -> $(EESSI_HOST_INJECTIONS:-/opt/eessi)``
at the repository root this way, so every site points it at a local directory of its own.  An unset
variable without a default expands to nothing, as in cvmfs.  Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)(?::-([^)]*))?\)")


def is_variant(target: str) -> bool:
    """Whether ``target`` names a variable to expand."""
    return _VARIABLE.search(target) is not None


def expand(target: str, environ: Mapping[str, str]) -> str:
    """``target`` with every ``$(VAR)``/``$(VAR:-default)`` replaced from ``environ``.

    ``$(VAR:-default)`` takes the default when ``VAR`` is unset or empty, as the shell's ``${VAR:-x}``.
    """

    def one(m: re.Match[str]) -> str:
        value = environ.get(m.group(1), "")
        return value if value or m.group(2) is None else m.group(2)

    return _VARIABLE.sub(one, target)
