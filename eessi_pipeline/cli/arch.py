"""The matrix and host commands: ``validate``, ``detect``, ``targets``, ``plan``, ``check-node``.

Imports stay cheap: ``detect`` loads the matrix, archspec and the cpuinfo reader, nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from ..arch.cpuinfo import CPUINFO_ENV, MACHINE_ENV, read_host_cpu
from ..arch.emulation import emulators_for
from ..arch.select import OVERRIDE_ENV, require_build_node, select_from_environ, why_not
from ..errors import UsageError
from ..matrix import MATRIX_ENV, Matrix, load_matrix
from ..settings import Settings, resolve_settings
from .options import add_json, add_stack_version
from .output import emit_json


def _settings(args: argparse.Namespace) -> Settings:
    return resolve_settings(
        version=getattr(args, "version", None), state_dir=getattr(args, "state_dir", None)
    )


def _matrix(args: argparse.Namespace) -> Matrix:
    return load_matrix(args.matrix)


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    m = _matrix(args)
    per_version = {v.name: [t.name for t in m.targets_for(v.name)] for v in m.versions}
    summary: dict[str, Any] = {
        "file": str(m.path),
        "sha256": m.sha256,
        "versions": [v.name for v in m.versions],
        "default_version": m.default_version,
        "families": [f.name for f in m.families],
        "targets": per_version,
    }
    if args.json:
        emit_json({"ok": True, **summary}, out)
    else:
        counts = ", ".join(f"{v}: {len(ts)} targets" for v, ts in per_version.items())
        out.write(f"{m.path}: OK ({counts}; default version {m.default_version})\n")
    return 0


def _accel_json(args: argparse.Namespace, sel: Any, env: dict[str, str]) -> dict[str, Any]:
    """The accelerator part of ``detect --json``; a failing nvidia-smi is an error only with --accel."""
    from ..arch.accel import AccelError, query_nvidia_smi

    try:
        acc = query_nvidia_smi(args.nvidia_smi, env)
    except AccelError as e:
        if args.accel:
            raise
        return {"subdir": None, "error": str(e)}
    data = acc.to_json()
    built = sel.target is not None and any(a.subdir == acc.subdir for a in sel.target.accelerators)
    data["software_subdir"] = f"{sel.subdir}/{acc.subdir}" if acc.subdir and built else None
    if acc.subdir and not built:
        data["notes"].append(
            f"the matrix builds no {acc.subdir} for {sel.subdir}: GPU software is not available here"
        )
    return data


def cmd_detect(args: argparse.Namespace, out: TextIO) -> int:
    env = dict(os.environ)
    if args.accel and not args.json:
        # EESSI's `accelpath`: the accelerator subdirectory, or nothing.  No matrix is read, so this
        # also runs from a bare checkout with archspec only (benchmarks/device_gpu.sh).
        from ..arch.accel import query_nvidia_smi

        acc = query_nvidia_smi(args.nvidia_smi, env)
        if args.verbose:
            for note in acc.notes:
                sys.stderr.write(f"note: {note}\n")
        if acc.subdir:
            out.write(acc.subdir + "\n")
        return 0
    m = _matrix(args)
    settings = _settings(args)
    if args.machine:
        env[MACHINE_ENV] = args.machine
    host = read_host_cpu(args.cpuinfo, env)
    sel = select_from_environ(host, m, settings.version, env)
    explanation = why_not(host, m, args.why_not, sel.version) if args.why_not else None
    if args.json:
        data = sel.to_json()
        if explanation is not None:
            data["why_not"] = {"target": args.why_not, "explanation": explanation}
        data["accel"] = _accel_json(args, sel, env)
        emit_json(data, out)
    elif explanation is not None:
        out.write(explanation + "\n")
    elif args.all:
        out.write(":".join(sel.candidates) + "\n")
    else:
        out.write(sel.subdir + "\n")
    if not args.json:
        for note in sel.notes:
            sys.stderr.write(f"note: {note}\n")
    return 0


def cmd_targets(args: argparse.Namespace, out: TextIO) -> int:
    m = _matrix(args)
    settings = _settings(args)
    targets = m.targets_for(settings.version) if settings.version else m.targets
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "subdir": t.subdir,
            "family": t.family,
            "archspec": t.archspec,
            "versions": list(t.versions),
            "marker": t.marker,
            "runner": list(m.runner_for(t)),
            "accel": [  # GPU builds of the target: <subdir>/accel/nvidia/ccXY (issue 19)
                {
                    "name": f"{t.name}_{a.cc}",
                    "subdir": f"{t.subdir}/{a.subdir}",
                    "marker": f"{t.marker}_{a.cc}",
                }
                for a in t.accelerators
            ],
        }
        for t in targets
    ]
    if args.json:
        emit_json(rows, out)
        return 0
    width = max(len(r["name"]) for r in rows)
    swidth = max(len(r["subdir"]) for r in rows)
    for r in rows:
        out.write(f"{r['name']:<{width}}  {r['subdir']:<{swidth}}  {','.join(r['versions'])}\n")
    return 0


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    m = _matrix(args)
    settings = _settings(args)
    if args.target in {at.name for at in m.every_accel_target()}:  # a GPU target: its own plan
        raise UsageError(
            f"{args.target} is an accelerator target; use `eessi-pipeline gpu plan --target {args.target}`"
        )
    target = m.target(args.target)
    host = read_host_cpu(args.cpuinfo) if not args.no_host else None
    from ..plan import make_plan  # only `plan` needs it (it brings the tarball-name rules)

    emulators = emulators_for(host, target) if host is not None else {}
    plan = make_plan(m, target, settings.version, settings.repository, host, emulators)
    if args.json:
        emit_json(plan.to_json(), out)
        return 0
    out.write(f"plan for {target.name} ({target.subdir}), stack version {plan.version}\n")
    out.write(f"  install prefix: {plan.install_prefix}\n")
    out.write(f"  tarball:        {plan.tarball_pattern}\n")
    if plan.build_node is not None:
        node = plan.build_node
        verdict = "yes" if node.ok else "no: " + "; ".join(node.reasons)
        if node.emulated_by:
            verdict = f"yes, emulated ({node.emulated_by}): proves function, not performance"
        out.write(f"  this host can build it: {verdict}\n")
    for i, s in enumerate(plan.steps, 1):
        state = "ready" if s.available else "cannot run here"
        out.write(f"  {i}. [{state}] {s.name}: {s.detail}\n")
        out.write(f"       {s.command}\n")
        if s.blocked:
            out.write(f"       why not: {s.blocked}\n")
    return 0


def cmd_check_node(args: argparse.Namespace, out: TextIO) -> int:
    m = _matrix(args)
    settings = _settings(args)
    target = m.target(args.target)
    host = read_host_cpu(args.cpuinfo)
    emulators = emulators_for(host, target)
    verdict = require_build_node(host, target, m, settings.version, emulators)  # or BuildNodeError
    emulator = emulators.get(target.family) if verdict.emulated_by else None
    if args.json:
        doc: dict[str, object] = {"target": target.name, "ok": verdict.ok, "reasons": list(verdict.reasons)}
        doc["emulated"] = emulator is not None
        doc["emulator"] = emulator.to_json() if emulator else None
        emit_json(doc, out)
    elif emulator is not None:
        out.write(
            f"yes, emulated ({emulator.label}): this host builds {target.name} ({target.subdir}) through "
            f"{emulator.interpreter} (binfmt_misc entry {emulator.entry}, fix-binary); "
            "the results prove function, not performance\n"
        )
    else:
        out.write(f"yes, natively: this host can build {target.name} ({target.subdir})\n")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--matrix",
        metavar="FILE",
        help=f"architecture matrix (default: ${MATRIX_ENV} or matrices/targets.yaml)",
    )
    add_stack_version(p)
    add_json(p)


def add_arch_parsers(sub: Any) -> None:
    p = sub.add_parser("validate", help="check the architecture matrix against its schema")
    _common(p)
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("detect", help="print the software subdirectory for this host's CPU")
    _common(p)
    p.add_argument(
        "--cpuinfo",
        metavar="FILE",
        help=f"read /proc/cpuinfo or lscpu text from FILE (default: ${CPUINFO_ENV} or /proc/cpuinfo)",
    )
    p.add_argument(
        "--machine",
        metavar="FAMILY",
        help=f"CPU family of FILE when its text does not say (default: ${MACHINE_ENV})",
    )
    p.add_argument("--all", action="store_true", help="print every candidate, best first, ':'-separated")
    p.add_argument(
        "--why-not", metavar="TARGET", help="explain whether and why this host does not get TARGET"
    )
    p.add_argument(
        "--accel",
        action="store_true",
        help="print the accelerator subdirectory (accel/nvidia/ccXY) from nvidia-smi; nothing without a GPU",
    )
    p.add_argument(
        "--nvidia-smi",
        metavar="PROGRAM",
        help="the nvidia-smi to ask (default: $EESSI_PIPELINE_NVIDIA_SMI or nvidia-smi on PATH)",
    )
    p.epilog = (
        f"{OVERRIDE_ENV}=SUBDIR forces the answer (it must be a target of the stack version); "
        "EESSI_ACCELERATOR_TARGET_OVERRIDE=accel/nvidia/ccXY forces the accelerator answer."
    )
    p.set_defaults(handler=cmd_detect)

    p = sub.add_parser("targets", help="list the matrix's targets")
    _common(p)
    p.set_defaults(handler=cmd_targets)

    p = sub.add_parser(
        "plan", help="show what would be built, tested and published for a target (no side effects)"
    )
    _common(p)
    p.add_argument(
        "--target", required=True, metavar="NAME", help="target name (zen3) or subdir (x86_64/amd/zen3)"
    )
    p.add_argument("--cpuinfo", metavar="FILE", help="judge the build node from FILE instead of this host")
    p.add_argument("--no-host", action="store_true", help="leave out the build-node check")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser(
        "check-node", help="may this host build TARGET natively? (exit 1 with the reason if not)"
    )
    _common(p)
    p.add_argument("--target", required=True, metavar="NAME")
    p.add_argument("--cpuinfo", metavar="FILE", help="judge the build node from FILE instead of this host")
    p.set_defaults(handler=cmd_check_node)
