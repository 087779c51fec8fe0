"""``eessi-pipeline compat …``: build a compatibility layer, pack it, run its acceptance checks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, TextIO

from ..compat.acceptance import Acceptance, CheckResult, Manifest
from ..compat.backend import BACKENDS, DEFAULT_BACKEND, BuildRequest, get_backend
from ..compat.layout import FAMILIES, LayerSpec
from ..compat.pack import pack_layer
from ..compat.packageset import load_package_set
from ..compat.rfm_runner import run_checks
from ..compat.runner import LayerView
from ..compat.state import ensure_layer, read_record
from ..errors import CompatError
from ..matrix import load_matrix
from ..settings import resolve_settings
from .options import add_json, add_setting, add_stack_version
from .output import emit_json

log = logging.getLogger(__name__)


def _progress(msg: str) -> None:
    sys.stderr.write(f"[compat] {msg}\n")


def _spec(args: argparse.Namespace) -> LayerSpec:
    settings = resolve_settings(version=args.version, state_dir=args.state_dir, repository=args.repo)
    version = settings.version or load_matrix().default_version
    return LayerSpec.create(
        version, args.family, settings.state_dir, repository=settings.repository, prefix=args.prefix
    )


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    spec = _spec(args)
    request = BuildRequest(spec, load_package_set(args.family), refresh=args.refresh, jobs=args.jobs)
    backend = get_backend(args.backend)
    if args.dry_run:
        plan = backend.plan(request)
        if args.json:
            emit_json(
                {"dry_run": True, **plan.to_json(), "tarball": str(spec.tarball_dir / spec.tarball_name(0))},
                out,
            )
            return 0
        out.write(f"would build the {plan.backend} layer for {spec.prefix}\n  staged at {spec.staging}\n")
        for i, step in enumerate(plan.steps, 1):
            out.write(f"  {i}. {step.name}: {step.detail}\n")
            if step.command:
                out.write(f"       {step.command}\n")
        for note in plan.notes:
            out.write(f"  note: {note}\n")
        return 0
    result = ensure_layer(backend, request, force=args.force)
    if result.reused:
        _progress(f"reusing {spec.staging}: inputs unchanged (built {result.record.built_at})")
    else:
        _progress(f"built {spec.staging} in {result.record.seconds:.0f} s ({result.reason})")
    packed = None if args.no_pack else pack_layer(spec, url_base=args.url_base)
    if args.json:
        emit_json(
            {
                "layer": str(spec.staging),
                "prefix": spec.prefix,
                "backend": backend.name,
                "tarball": str(packed.tarball) if packed else None,
                "meta": str(packed.meta) if packed else None,
                "reused": result.reused,
                "seconds": result.record.seconds,
                "packages": len(result.record.packages),
            },
            out,
        )
    else:
        out.write(f"{spec.staging}\n")
        if packed is not None:
            out.write(f"{packed.tarball}\n")
    return 0


def _report(result: CheckResult) -> None:
    tag = "[  OK  ]" if result.ok else "[ FAIL ]"
    first = result.detail.splitlines()[0] if result.detail else ""
    sys.stderr.write(f"{tag} {result.name}{': ' + first if first else ''}\n")


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    spec = _spec(args)
    record = read_record(spec)
    if not (spec.staging / "startprefix").is_file():
        raise CompatError(
            f"no layer at {spec.staging}; run `eessi-pipeline compat build --family {args.family}` first"
        )
    prefix = record.prefix if record is not None else spec.prefix
    view = LayerView.for_host(spec.staging, prefix)
    results: list[dict[str, Any]] = []
    ok = True
    if args.runner in ("python", "both"):
        checks = Acceptance(view, Manifest.read(spec.staging)).run_all(
            jobs=args.jobs, progress=None if args.json else _report
        )
        results += [r.to_json() for r in checks]
        ok = ok and all(r.ok for r in checks)
    if args.runner in ("reframe", "both"):
        workdir = spec.compat_dir / "checks" / f"{spec.version}-linux-{spec.family}"
        verdict = run_checks(view, workdir)
        cases = [
            CheckResult(
                f"reframe: {case.name}",
                case.result in ("pass", "xfail"),
                "" if case.result in ("pass", "xfail") else f"{case.fail_phase}: {case.fail_reason}",
            )
            for case in verdict.cases
        ]
        if not verdict.ok:  # the run as a whole: no case ran, some failed, or ReFrame itself failed
            cases.append(CheckResult("reframe", False, verdict.detail))
        for case_result in cases:
            results.append(case_result.to_json())
            if not args.json:
                _report(case_result)
        ok = ok and verdict.ok
    failed = [r for r in results if not r["ok"]]
    if args.json:
        emit_json({"layer": str(spec.staging), "prefix": prefix, "ok": ok, "checks": results}, out)
    else:
        out.write(f"{len(results) - len(failed)} passed, {len(failed)} failed\n")
    if not ok:
        raise CompatError(
            f"{len(failed)} acceptance check(s) of {spec.staging} failed "
            f"({', '.join(r['name'] for r in failed[:5])}); see the lines above, fix the package set or the "
            "build, and run `eessi-pipeline compat build` again"
        )
    return 0


def add_compat_parser(sub: Any) -> None:
    compat = sub.add_parser(
        "compat", help="build and check compatibility layers (versions/<v>/compat/linux/<family>)"
    )
    csub = compat.add_subparsers(dest="compat_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--family", required=True, choices=FAMILIES, help="CPU family of the layer, e.g. x86_64"
        )
        add_stack_version(p)
        add_setting(p, "repository", "repository whose /cvmfs path is the default prefix")
        p.add_argument(
            "--prefix",
            metavar="PATH",
            help="where clients see the layer (default: /cvmfs/<repo>/versions/<v>/compat/linux/<family>)",
        )
        add_setting(p, "state_dir")
        p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N", help="parallel jobs")
        add_json(p)

    p = csub.add_parser(
        "build", help="build (or reuse) the layer and pack it; print the layer's and the tarball's paths"
    )
    common(p)
    p.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        default=DEFAULT_BACKEND,
        help=f"how to build it (default: {DEFAULT_BACKEND})",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument("--force", action="store_true", help="build even when the inputs are unchanged")
    p.add_argument("--refresh", action="store_true", help="fetch fresh package lists first")
    p.add_argument("--no-pack", action="store_true", help="do not write the tarball")
    p.add_argument("--url-base", metavar="URL", help="payload URL prefix in .meta.txt (default: file:// URL)")
    p.set_defaults(handler=cmd_build)

    p = csub.add_parser("check", help="run the acceptance checks on a built layer")
    common(p)
    p.add_argument(
        "--runner",
        choices=["reframe", "python", "both"],
        default="reframe",
        help="ReFrame checks of checks/compat (default), the built-in Python checks, or both",
    )
    p.set_defaults(handler=cmd_check)
