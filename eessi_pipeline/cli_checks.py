"""``eessi-pipeline references …``: the performance references of the ReFrame checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from .checks.references import (
    REFERENCES_FILE,
    ChecksError,
    dump_references,
    load_references,
    parse_references,
    update_from_report,
)
from .matrix import load_matrix
from .yamlio import load_yaml


def cmd_references_update(args: argparse.Namespace, out: TextIO) -> int:
    matrix = load_matrix()
    target = matrix.target(args.target).name
    path = Path(args.file)
    try:
        report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ChecksError(f"cannot read the ReFrame report {args.report}: {e}") from e
    current = load_yaml(path, ChecksError) if path.exists() else {"schema_version": 1, "checks": {}}
    new, changes = update_from_report(current, report, target, args.lower, args.upper)
    parse_references(new, path, [t.name for t in matrix.targets])  # never write what would not load
    if not args.dry_run:
        path.write_text(dump_references(new), encoding="utf-8")
    for line in changes:
        out.write(line + "\n")
    out.write(f"{'would write' if args.dry_run else 'wrote'} {path}; review with `git diff {path}`\n")
    return 0


def cmd_references_validate(args: argparse.Namespace, out: TextIO) -> int:
    refs = load_references(Path(args.file), [t.name for t in load_matrix().targets])
    out.write(f"{refs.path}: {len(refs.entries)} references, valid\n")
    return 0


def _bound(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def add_checks_parser(sub: Any) -> None:
    refs = sub.add_parser("references", help="performance references of the ReFrame checks")
    rsub = refs.add_subparsers(dest="references_command", metavar="ACTION", required=True)
    p = rsub.add_parser("update", help="write the measured values of a ReFrame run report for review")
    p.add_argument("--target", required=True, metavar="NAME", help="target the report was measured on")
    p.add_argument("--from", dest="report", required=True, metavar="REPORT", help="ReFrame JSON run report")
    p.add_argument("--file", default=str(REFERENCES_FILE), metavar="FILE", help="references file to update")
    p.add_argument("--lower", type=_bound, default=-0.5, metavar="FRAC", help="lower bound of new entries")
    p.add_argument("--upper", type=_bound, default=None, metavar="FRAC", help="upper bound of new entries")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    p.set_defaults(handler=cmd_references_update)
    p = rsub.add_parser("validate", help="check the references file against its schema and the matrix")
    p.add_argument("--file", default=str(REFERENCES_FILE), metavar="FILE")
    p.set_defaults(handler=cmd_references_validate)


__all__ = ["add_checks_parser"]
