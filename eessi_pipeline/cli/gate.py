"""``eessi-pipeline gate record|check``, ``approve`` and ``publish``: the gate to the repository."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from .. import inputs
from ..cvmfs.cvmfs_server import CvmfsServerBackend
from ..cvmfs.repository import Repository
from ..errors import GateRefused, UsageError
from ..gate.distribute import distribute
from ..gate.policy import load_policy
from ..gate.publish import CvmfsServerTarget, judge, publish
from ..gate.record import RECORD_SUFFIX, CaseResult, parse_junit
from ..gate.staging import Staging
from ..gate.write import write_record
from ..settings import resolve_settings
from .options import add_json, add_setting


def _settings(args: argparse.Namespace) -> Any:
    return resolve_settings(
        repository=getattr(args, "repo", None), state_dir=getattr(args, "state_dir", None)
    )


def cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    tests: list[CaseResult] = []
    for junit in args.junit:
        text = inputs.read_text(Path(junit), "JUnit XML report", "pass the file pytest wrote with --junitxml")
        tests += parse_junit(text, junit)
    report = Path(args.reframe_report) if args.reframe_report else None
    if report is not None:
        inputs.check_regular_file(report, "ReFrame report", "pass the file ReFrame wrote with --report-file")
    written = write_record(
        Path(args.tarball), tuple(tests), state_dir=settings.state_dir, repository=settings.repository,
        policy=load_policy(args.policy), reframe_report=report, target=args.target,
        key=Path(args.key) if args.key else None, stage=args.stage,
    )  # fmt: skip
    out.write(f"{written.path}\n")
    staged = {"": "", "new": ", staged"}.get(written.state, f", {written.state} already")
    sys.stderr.write(f"[gate] {len(tests)} test results, signed {written.signature.name}{staged}\n")
    return 0


def cmd_stage(args: argparse.Namespace, out: TextIO) -> int:
    tarball = Path(args.tarball)
    record = Path(args.record) if args.record else Path(f"{tarball}{RECORD_SUFFIX}")
    signature = Path(args.signature) if args.signature else Path(f"{record}.sig")
    # issue 16: validated (schema, signature, binding, history) before anything enters staging
    from ..gate.admit import admit

    item = admit(
        tarball, record, signature, state_dir=_settings(args).state_dir, policy=load_policy(args.policy)
    )
    out.write(f"{item.name}: staged ({item.state})\n")
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    item = Staging(settings.state_dir).find(args.tarball)
    if item is None:
        raise GateRefused(f"{args.tarball} is not staged")
    repo = Repository(settings.state_dir, settings.repository)
    now = dt.datetime.now(dt.UTC)
    decision = judge(item, repo, load_policy(args.policy), now, Staging(settings.state_dir)).decision
    out.write(f"{item.name}: {decision.line()}\n")
    return 0 if decision.accept else 1


def cmd_approve(args: argparse.Namespace, out: TextIO) -> int:
    item = Staging(_settings(args).state_dir).approve(args.tarball, getpass.getuser())
    out.write(f"{item.name}: approved\n")
    return 0


def cmd_publish(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    policy = load_policy(args.policy)
    staging = Staging(settings.state_dir)
    if not args.tarballs and not staging.list(("new", "approved")):
        msg = f"nothing staged in {staging.root}: no tarball to publish"
        out.write(
            json.dumps({"published": [], "refused": [], "message": msg}) + "\n" if args.json else msg + "\n"
        )
        return 0
    target = publish_target(args, settings.repository)
    outcomes = publish(settings.state_dir, settings.repository, policy, args.tarballs or None,
                       dry_run=args.dry_run, target=target)  # fmt: skip
    if any(o.accepted and not o.dry_run for o in outcomes) and not args.no_distribute:
        if target is None:
            distribute(settings.state_dir, settings.repository, policy.post_publish_checks)
        else:
            sys.stderr.write("[publish] cvmfs_server backend: the Stratum 1s replicate it with their own "
                             "`cvmfs_server snapshot`; no embedded snapshot\n")  # fmt: skip
    if args.json:
        out.write(json.dumps([{"tarball": o.tarball, "accepted": o.accepted, "reasons": list(o.reasons),
                               "revision_before": o.revision_before, "revision_after": o.revision_after,
                               "dry_run": o.dry_run} for o in outcomes], indent=2) + "\n")  # fmt: skip
    else:
        for o in outcomes:
            out.write(o.line() + "\n")
    return 0 if all(o.accepted or o.skipped for o in outcomes) else 1


BACKEND_ENV = "EESSI_PIPELINE_PUBLISH_BACKEND"
STRATUM0_SSH_ENV = "EESSI_PIPELINE_STRATUM0_SSH"
STRATUM0_URL_ENV = "EESSI_PIPELINE_STRATUM0_URL"
BACKENDS = ("embedded", "cvmfs_server")


def publish_target(args: argparse.Namespace, repository: str) -> CvmfsServerTarget | None:
    """None for the embedded Stratum 0; else the real one, through ``cvmfs_server`` (here or over SSH)."""
    backend = args.backend or os.environ.get(BACKEND_ENV) or "embedded"
    ssh = args.stratum0_ssh or os.environ.get(STRATUM0_SSH_ENV) or None
    url = args.stratum0_url or os.environ.get(STRATUM0_URL_ENV) or None
    if backend not in BACKENDS:
        raise UsageError(f"publish backend {backend!r} (from --backend or ${BACKEND_ENV}): use one of "
                         f"{', '.join(BACKENDS)}")  # fmt: skip
    if backend == "embedded":
        if args.stratum0_ssh or args.stratum0_url:
            raise UsageError("--stratum0-ssh and --stratum0-url go with --backend cvmfs_server")
        return None
    local = Path("/srv/cvmfs") / repository
    source = url or (str(local) if not ssh and local.is_dir() else None)
    return CvmfsServerTarget(CvmfsServerBackend(repository, ssh=ssh), source)


def add_gate_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        add_setting(p, "state_dir")
        add_setting(p, "repository")
        p.add_argument("--policy", metavar="FILE", help="publication policy (default: matrices/policy.yaml)")

    gate = sub.add_parser("gate", help="gate records: what a test run proves about a tarball, signed")
    gsub = gate.add_subparsers(dest="gate_command", metavar="ACTION", required=True)
    p = gsub.add_parser("record", help="write and sign <tarball>.gate.json from JUnit and ReFrame reports")
    p.add_argument("--tarball", required=True, metavar="T")
    p.add_argument(
        "--junit", action="append", default=[], metavar="XML", help="pytest --junitxml report (repeatable)"
    )
    p.add_argument("--reframe-report", metavar="JSON", help="ReFrame --report-file")
    p.add_argument(
        "--target", metavar="SUBDIR", help="tested target subdir or compat family (default: from the tarball)"
    )
    p.add_argument(
        "--key", metavar="FILE", help="SSH private key to sign with (default: <state>/keys/build-node)"
    )
    p.add_argument("--stage", action="store_true", help="also put the tarball and record into staging (new)")
    common(p)
    p.set_defaults(handler=cmd_record)
    p = gsub.add_parser("stage", help="stage a tarball with its signed record (e.g. from another machine)")
    p.add_argument("tarball", metavar="TARBALL")
    p.add_argument("--record", metavar="FILE", help="its gate record (default: TARBALL.gate.json)")
    p.add_argument("--signature", metavar="FILE", help="the record's signature (default: RECORD.sig)")
    common(p)
    p.set_defaults(handler=cmd_stage)
    p = gsub.add_parser("check", help="what the gate decides for a staged tarball (changes nothing)")
    p.add_argument("tarball", metavar="TARBALL")
    common(p)
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("approve", help="approve a staged tarball (when the policy requires a human)")
    p.add_argument("tarball", metavar="TARBALL")
    common(p)
    p.set_defaults(handler=cmd_approve)

    p = sub.add_parser(
        "publish", help="publish staged tarballs the gate accepts (what `tox -e publish` runs)"
    )
    p.add_argument("tarballs", nargs="*", metavar="TARBALL", help="only these (default: everything staged)")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    add_json(p)
    p.add_argument(
        "--no-distribute", action="store_true", help="skip the Stratum 1 snapshot and post-publish checks"
    )
    p.add_argument("--backend", choices=BACKENDS, help=f"Stratum 0 to ingest into (default: ${BACKEND_ENV} "
                   "or embedded)")  # fmt: skip
    p.add_argument(
        "--stratum0-ssh",
        metavar="USER@HOST",
        help=f"cvmfs_server backend: run it over SSH there (default: ${STRATUM0_SSH_ENV})",
    )
    p.add_argument("--stratum0-url", metavar="URL", help="cvmfs_server backend: where to read the revision "
                   f"(default: ${STRATUM0_URL_ENV}, or /srv/cvmfs/<repo> when local)")  # fmt: skip
    common(p)
    p.set_defaults(handler=cmd_publish)
