"""The ``eessi-pipeline`` command: a table of subcommands, loaded lazily, and one error boundary.

Only the module of the command being run is imported (``detect`` never loads the CVMFS writer,
EasyBuild glue or pytest); ``--help`` lists every command from the table below without importing
any of them.

Exit codes: 0 ok; 1 refusal or failure (one line saying why); 2 usage;
3 unexpected error (traceback in the log file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..errors import PipelineError, UsageError
from .options import add_setting

Handler = Callable[[argparse.Namespace, TextIO], int]


@dataclass(frozen=True, slots=True)
class CommandGroup:
    """Subcommands one module declares: ``module.adder(subparsers)`` adds them all."""

    module: str
    adder: str
    commands: tuple[tuple[str, str], ...]  # (name, one-line help), in the order --help lists them


COMMANDS: tuple[CommandGroup, ...] = (
    CommandGroup("arch", "add_arch_parsers", (
        ("validate", "check the architecture matrix against its schema"),
        ("detect", "print the software subdirectory for this host's CPU"),
        ("targets", "list the matrix's targets"),
        ("plan", "show what would be built, tested and published for a target (no side effects)"),
        ("check-node", "may this host build TARGET natively? (exit 1 with the reason if not)"),
    )),
    CommandGroup("repo", "add_repo_parser", (
        ("repo", "the embedded CVMFS Stratum 0, and readers for any CVMFS repository"),
    )),
    CommandGroup("stratum", "add_stratum_parser", (
        ("stratum", "the embedded Stratum 0/1 web servers and squid proxy on loopback"),
    )),
    CommandGroup("cluster", "add_cluster_parser", (
        ("cluster", "the embedded Slurm cluster (slurmctld + slurmd nodes) on this machine"),
    )),
    CommandGroup("client", "add_client_parser", (
        ("client", "read or mount a repository through its mirrors, like a CVMFS client"),
        ("init", "the init scripts users source (versions/<version>/init/)"),
    )),
    CommandGroup("compat", "add_compat_parser", (
        ("compat", "compatibility layers: build and check one per CPU family"),
    )),
    CommandGroup("build", "add_build_parser", (
        ("build", "build a target's software layer with EasyBuild into its tarball"),
    )),
    CommandGroup("gate", "add_gate_parsers", (
        ("gate", "gate records: what a test run proves about a tarball, signed"),
        ("approve", "approve a staged tarball (when the policy requires a human)"),
        ("publish", "publish staged tarballs the gate accepts (what `tox -e publish` runs)"),
    )),
    CommandGroup("test", "add_test_parser", (
        ("test", "build and test a target as `pytest -m arch_<target>` does, with the gate"),
    )),
    CommandGroup("run", "add_run_parser", (
        ("run", "the whole flow for a target: build, test, gate, publish, distribute, use"),
    )),
    CommandGroup("gpu", "add_gpu_parser", (
        ("gpu", "NVIDIA GPUs: link the host's driver into host_injections, build the CUDA stack"),
    )),
    CommandGroup("checks", "add_checks_parser", (
        ("references", "performance references of the ReFrame checks"),
        ("checks", "the ReFrame checks of the software layer"),
    )),
)  # fmt: skip

_GLOBAL_WITH_VALUE = frozenset({"--state-dir"})
# Commands that never touch the state directory (no check of it before they run).
_NO_STATE = frozenset(name for name, _ in COMMANDS[0].commands) | {"references", "checks"}


def command_names() -> list[str]:
    return [name for group in COMMANDS for name, _ in group.commands]


def selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), or None (pure)."""
    names = set(command_names())
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _GLOBAL_WITH_VALUE:
            skip = True
        elif word in names:
            return word
        elif not word.startswith("-"):
            return None  # an unknown command: argparse says which ones exist
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser.  Only ``command``'s module is imported and declares its options; the other
    commands are listed by name and help only.  ``"*"`` declares every command (documentation, tests)."""
    parser = argparse.ArgumentParser(
        prog="eessi-pipeline",
        description="Test-first build, validation and publishing of EESSI-style software stacks.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"eessi-pipeline {__version__}")
    parser.add_argument("--program-version", action="version", version=f"eessi-pipeline {__version__}",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    add_setting(parser, "state_dir", default=None)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for group in COMMANDS:
        names = {name for name, _ in group.commands}
        if command == "*" or command in names:
            adder = getattr(importlib.import_module(f"{__package__}.{group.module}"), group.adder)
            adder(sub)
        else:  # listed for --help and for argparse's choices, declared when chosen
            for name, helptext in group.commands:
                sub.add_parser(name, help=helptext, add_help=False)
    return parser


def _log_unexpected(state_dir: str | None) -> Path | None:
    from ..settings import resolve_settings

    try:
        log_dir = resolve_settings(state_dir=state_dir).log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "eessi-pipeline.log"
        with path.open("a", encoding="utf-8") as fh:
            import traceback

            fh.write(traceback.format_exc())
        return path
    except OSError:
        return None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    words = list(argv) if argv is not None else sys.argv[1:]
    try:
        parser = build_parser(selected_command(words))
    except ImportError as e:  # a command whose extra is not installed
        sys.stderr.write(f"eessi-pipeline: error: {missing_extra_message(e)}\n")
        return 1
    try:
        args = parser.parse_args(words)
    except SystemExit as e:  # argparse: --help (0) or usage error (2)
        return int(e.code) if isinstance(e.code, int) else 2
    if args.verbose:  # without -v, Python's last-resort handler prints warnings and errors as they are
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    # Nothing this program creates (state, keys, staging, repository) may be writable by group or others,
    # whatever umask it was started with; explicit modes elsewhere only ever remove bits from this.
    os.umask(os.umask(0o022) | 0o022)
    try:
        if args.subcommand not in _NO_STATE:
            from ..settings import check_state_dir, resolve_settings

            check_state_dir(resolve_settings(state_dir=getattr(args, "state_dir", None)).state_dir)
        return handler(args, stream)
    except UsageError as e:
        sys.stderr.write(f"eessi-pipeline: usage: {e}\n")
        return e.exit_code
    except PipelineError as e:
        sys.stderr.write(f"eessi-pipeline: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("eessi-pipeline: interrupted\n")
        return 130
    except ImportError as e:
        sys.stderr.write(f"eessi-pipeline: error: {missing_extra_message(e)}\n")
        return 1
    except Exception as e:  # the one boundary for bugs: keep the traceback, print one line
        where = _log_unexpected(getattr(args, "state_dir", None))
        detail = f"; details in {where}" if where else ""
        sys.stderr.write(f"eessi-pipeline: unexpected error: {type(e).__name__}: {e}{detail}\n")
        return 3


def missing_extra_message(e: ImportError) -> str:
    from ..extras import install_hint

    return f"this command cannot start: {install_hint(e.name or str(e))}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
