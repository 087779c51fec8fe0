"""``eessi-pipeline references …`` (the performance references of the ReFrame checks) and
``eessi-pipeline checks report`` (a report of ReFrame runs for people: HTML, markdown, plots)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from .. import inputs
from ..checks.htmlreport import (
    DEFAULT_TITLE,
    HTML_NAME,
    JSON_NAME,
    MARKDOWN_NAME,
    summarise,
    target_of,
    write_report,
)
from ..checks.references import (
    REFERENCES_FILE,
    ChecksError,
    dump_references,
    load_references,
    parse_references,
    update_from_report,
)
from ..checks.report import REPORT_FIX, RunResult, load_report
from ..matrix import load_matrix
from ..yamlio import load_yaml
from .options import add_json
from .output import emit_json


def cmd_references_update(args: argparse.Namespace, out: TextIO) -> int:
    matrix = load_matrix()
    accel = "/accel/" in args.target or "_cc" in args.target  # a GPU target, e.g. zen4_cc90 (issue 19)
    target = matrix.accel_target(args.target).name if accel else matrix.target(args.target).name
    path = Path(args.file)
    text = inputs.read_text(Path(args.report), "ReFrame report", REPORT_FIX)
    try:
        report = json.loads(text)
    except ValueError as e:
        raise ChecksError(f"{args.report}: not JSON ({e}); {REPORT_FIX}") from e
    current = load_yaml(path, ChecksError) if path.exists() else {"schema_version": 1, "checks": {}}
    new, changes = update_from_report(current, report, target, args.lower, args.upper)
    parse_references(new, path, matrix.target_names())  # never write what would not load
    if not args.dry_run:
        path.write_text(dump_references(new), encoding="utf-8")
    for line in changes:
        out.write(line + "\n")
    out.write(f"{'would write' if args.dry_run else 'wrote'} {path}; review with `git diff {path}`\n")
    return 0


def cmd_references_validate(args: argparse.Namespace, out: TextIO) -> int:
    refs = load_references(Path(args.file), load_matrix().target_names())  # CPU and accelerator targets
    out.write(f"{refs.path}: {len(refs.entries)} references, valid\n")
    return 0


def _named_report(spec: str) -> tuple[str, RunResult]:
    """``[TARGET=]REPORT`` read into ``(target, result)``; without TARGET, the partition the cases ran on."""
    name, sep, rest = spec.partition("=")
    explicit = bool(sep) and bool(name) and "/" not in name
    path = Path(rest if explicit else spec)
    result = load_report(path)
    if explicit:
        return name, result
    inferred = target_of(result)
    if inferred is None:
        raise ChecksError(
            f"{path}: cannot tell which target the report is of (its cases ran on no single partition); "
            f"fix: name it, --from TARGET={path}"
        )
    return inferred, result


def cmd_checks_report(args: argparse.Namespace, out: TextIO) -> int:
    results = [_named_report(spec) for spec in args.reports]
    out_dir = Path(args.out)
    if args.dry_run:
        summary = summarise(results, args.title)
        names = [out_dir / HTML_NAME, out_dir / MARKDOWN_NAME, out_dir / JSON_NAME]
        names += [out_dir / f"{ch.slug}.png" for t in summary.targets for ch in t.charts]
        if args.json:
            emit_json({"ok": summary.ok, "would_write": [str(n) for n in names]}, out)
        else:
            out.writelines(f"would write {n}\n" for n in names)
        return 0
    paths = write_report(results, out_dir, title=args.title)
    if args.json:
        data = {
            "html": str(paths.html),
            "markdown": str(paths.markdown),
            "json": str(paths.json),
            "plots": [str(p) for p in paths.plots],
            "ok": all(r.ok for _, r in results),
        }
        emit_json(data, out)
    else:
        out.write(f"{paths.html}\n{paths.markdown}\n")
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

    checks = sub.add_parser("checks", help="the ReFrame checks of the software layer")
    csub = checks.add_subparsers(dest="checks_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "report",
        help="write an HTML and a markdown report, with plots, of ReFrame JSON run reports",
        description="Write DIR/report.html (self-contained), DIR/report.md with a PNG per plot beside it, "
        "and DIR/report.json; print the paths of the HTML and the markdown file. Exits 0 when the "
        "report is written, whether the checks passed or not (report.json's `ok` says).",
    )
    p.add_argument(
        "--from",
        dest="reports",
        action="append",
        required=True,
        metavar="[TARGET=]REPORT",
        help="a ReFrame JSON run report (--report-file), optionally named by its target; repeat for "
        "several targets (default name: the partition its cases ran on)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the report into")
    p.add_argument("--title", default=DEFAULT_TITLE, help=f"report title (default: {DEFAULT_TITLE})")
    add_json(p, "print the written paths as JSON")
    p.add_argument("--dry-run", action="store_true", help="read the reports, print what would be written")
    p.set_defaults(handler=cmd_checks_report)


__all__ = ["add_checks_parser"]
