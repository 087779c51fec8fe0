"""Command-line options that many subcommands share, declared once (cheap to import: argparse only).

``--stack-version V`` selects the stack version (``2023.06``).  Subcommands used to spell it
``--version V``; that spelling is still accepted with a note on stderr, while the program's
own ``eessi-pipeline -V/--version`` prints the program version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

VERSION_ENV = "EESSI_PIPELINE_VERSION"  # the same name as settings.VERSION_ENV (tested)
STACK_VERSION_HELP = f"stack version, e.g. 2023.06 (default: ${VERSION_ENV} or the matrix's default)"


class _DeprecatedStackVersion(argparse.Action):
    """``--version V`` on a subcommand: stores V like ``--stack-version`` and says so once."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        sys.stderr.write(
            f"note: '{parser.prog} --version {values}' is deprecated: "
            f"use '--stack-version {values}' (--version alone prints the program version)\n"
        )
        setattr(namespace, self.dest, values)


def add_stack_version(p: argparse.ArgumentParser, help: str = STACK_VERSION_HELP) -> None:
    p.add_argument("--stack-version", dest="version", metavar="V", help=help)
    p.add_argument(
        "--version", dest="version", metavar="V", action=_DeprecatedStackVersion, help=argparse.SUPPRESS
    )


def add_setting(p: argparse.ArgumentParser, name: str, help: str | None = None, **kwargs: Any) -> None:
    """The option of setting ``name`` from the one table (``settings.SETTINGS``): its flag, metavar and a
    help text naming its environment variable and default.  The state dir defaults to SUPPRESS, so a
    subcommand's ``--state-dir`` never hides the global one."""
    from ..settings import setting

    s = setting(name)
    text = f"{help or s.help} (default: ${s.env}, else {s.default})"
    if name == "state_dir":
        kwargs.setdefault("default", argparse.SUPPRESS)
    p.add_argument(s.flag, metavar=s.metavar, help=text, **kwargs)


JSON_HELP = "print JSON for machines"


def add_json(p: argparse.ArgumentParser, help: str = JSON_HELP) -> None:
    """``--json``: the command prints its result as JSON instead of lines for people."""
    p.add_argument("--json", action="store_true", help=help)
