"""``eessi-pipeline gpu``: the host's NVIDIA driver in host_injections, and the GPU stack.

* ``gpu link-drivers`` links the driver's libraries from ``ldconfig -p`` into
  ``<root>/nvidia/<family>/<version>`` and moves ``latest`` there (:mod:`eessi_pipeline.gpu.drivers`);
* ``gpu build`` builds an accelerator target's GPU stack with EasyBuild (:mod:`eessi_pipeline.gpu.stack`);
* ``gpu checks`` runs ReFrame's GPU checks on it (:mod:`eessi_pipeline.gpu.checks`; device checks skip
  without a GPU, saying why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, TextIO

from ..errors import BuildError
from ..gpu.drivers import (
    DriverLinkError,
    driver_versions_in,
    install_links,
    parse_ldconfig,
    plan_links,
    resolve_present,
)

HOST_INJECTIONS_ENV = "EESSI_HOST_INJECTIONS"
DEFAULT_ROOT = "/opt/eessi"  # EESSI's default target of the host_injections variant symlink
LDCONFIG_TIMEOUT = 60.0
MAX_LDCONFIG_BYTES = 16 << 20


def _ldconfig_text(path: str | None) -> tuple[str, str]:
    if path:
        from ..inputs import read_text

        text = read_text(
            Path(path), "`ldconfig -p` listing", "save `ldconfig -p` output to a file and pass it",
            MAX_LDCONFIG_BYTES,
        )  # fmt: skip
        return text, path
    from ..proc import run

    program = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None)
    program = program or shutil.which("ldconfig")
    if program is None:
        raise DriverLinkError("no ldconfig on this host; pass --ldconfig FILE with `ldconfig -p` output")
    res = run([program, "-p"], timeout=LDCONFIG_TIMEOUT)
    if len(res.stdout) > MAX_LDCONFIG_BYTES:
        raise DriverLinkError(
            f"{program} -p printed more than {MAX_LDCONFIG_BYTES} bytes; pass --ldconfig FILE"
        )
    return res.stdout, f"{program} -p"


def _driver_version(args: argparse.Namespace, versions_in_names: tuple[str, ...]) -> tuple[str, str]:
    if args.driver_version:
        return args.driver_version, "--driver-version"
    if not args.ldconfig or args.nvidia_smi:  # a live host: ask its driver, as EESSI's script does
        from ..arch.accel import query_nvidia_smi

        acc = query_nvidia_smi(args.nvidia_smi, os.environ)
        if acc.gpus:
            return acc.gpus[0].driver_version, acc.source
    if len(versions_in_names) == 1:
        return versions_in_names[0], "the versioned library names ldconfig lists"
    seen = ", ".join(versions_in_names)
    why = f"several in the library names: {seen}" if versions_in_names else "no GPU answers"
    raise DriverLinkError(
        f"cannot tell the driver version ({why}); "
        "pass --driver-version as nvidia-smi prints it (e.g. 580.159.04)"
    )


def cmd_link_drivers(args: argparse.Namespace, out: TextIO) -> int:
    family = args.family or platform.machine()
    root = Path(args.root or os.environ.get(HOST_INJECTIONS_ENV) or DEFAULT_ROOT)
    text, source = _ldconfig_text(args.ldconfig)
    entries = parse_ldconfig(text, source)
    version, version_source = _driver_version(args, driver_versions_in(entries))
    plan = plan_links(entries, family, version)
    plan = resolve_present(plan, Path(args.sysroot) if args.sysroot else None)
    where = None if args.dry_run else install_links(plan, root)
    summary: dict[str, Any] = {
        **plan.to_json(),
        "driver_version_from": version_source,
        "ldconfig": source,
        "directory": str(where) if where else None,
        "latest": str(root / "nvidia" / family / "latest") if where else None,
        "dry_run": bool(args.dry_run),
    }
    if args.json:
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        verb = "would link" if args.dry_run else "linked"
        out.write(
            f"{verb} {len(plan.links)} NVIDIA driver {version} libraries for {family}"
            f"{' into ' + str(where) if where else ''} ({len(plan.skipped)} left out)\n"
        )
        if where:
            out.write(f"programs find them through {summary['latest']} (the GPU modules add it)\n")
    return 0


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    from ..gpu.stack import build_gpu_stack

    summary = build_gpu_stack(
        args.target, args.prefix, getattr(args, "state_dir", None), args.version, tarball=args.tarball
    )
    if args.json:
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        out.write(
            f"built {', '.join(summary['modules'])} for {summary['subdir']} ({summary['cuda_arch']}); "
            f"module use {summary['modulepath']}\n"
        )
        if "tarball" in summary:
            out.write(f"packed {summary['tarball']} ({summary['members']} entries)\n")
    return 0


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from ..gpu.plan import make_gpu_plan
    from ..matrix import load_matrix
    from ..settings import resolve_settings
    from ..software.stacks import load_stacks

    matrix = load_matrix()
    settings = resolve_settings(state_dir=getattr(args, "state_dir", None), version=args.version)
    plan = make_gpu_plan(matrix, load_stacks(), matrix.accel_target(args.target), settings.version,
                         settings.repository)  # fmt: skip
    if args.json:
        out.write(json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n")
        return 0
    at = plan.target
    out.write(f"plan for {at.name} ({at.subdir}), stack version {plan.version}\n")
    out.write(f"  install prefix: {plan.install_prefix}\n")
    out.write(f"  tarball:        {plan.tarball}\n")
    out.write(f"  modules:        {', '.join(plan.modules)} ({at.accel.sm})\n")
    for i, step in enumerate(plan.steps, 1):
        out.write(f"  {i}. {step.name}: {step.detail}\n       {step.command}\n")
    return 0


def cmd_checks(args: argparse.Namespace, out: TextIO) -> int:
    from ..gpu.checks import run_gpu_checks
    from ..gpu.stack import plan_gpu_build
    from ..matrix import load_matrix
    from ..settings import resolve_settings
    from ..software.stacks import load_stacks

    matrix = load_matrix()
    at = matrix.accel_target(args.target)
    settings = resolve_settings(state_dir=getattr(args, "state_dir", None), version=args.version)
    plan = plan_gpu_build(matrix, load_stacks(), at, settings.version, settings.state_dir,
                          Path(args.prefix) if args.prefix else None)  # fmt: skip
    if not plan.modulepath.is_dir():
        raise BuildError(
            f"{plan.modulepath}: no GPU modules; run `eessi-pipeline gpu build --target {at.name}` first"
        )
    outcome = run_gpu_checks(
        at, plan.installpath, settings.state_dir / "gpu" / plan.version / at.name / "reframe"
    )
    cases: list[dict[str, Any]] = [
        {"name": c.name, "result": c.result, "perf": {p.metric: p.value for p in c.perf}}
        for c in outcome.result.cases
    ]
    if args.json:
        out.write(json.dumps({"target": at.name, "report": str(outcome.paths.report), "cases": cases},
                             indent=2, sort_keys=True) + "\n")  # fmt: skip
    else:
        for c in cases:
            perf = ", ".join(f"{k}={v:g}" for k, v in c["perf"].items())
            out.write(f"{c['result']:<5} {c['name']}{'  ' + perf if perf else ''}\n")
        out.write(f"ReFrame report: {outcome.paths.report}\n")
    return 1 if outcome.result.failures else 0


def add_gpu_parser(sub: Any) -> None:
    from .options import add_json, add_stack_version

    p = sub.add_parser(
        "gpu", help="NVIDIA GPUs: host driver libraries, the CUDA stack of accelerator targets"
    )
    gsub = p.add_subparsers(dest="gpu_command", metavar="ACTION", required=True)

    q = gsub.add_parser(
        "link-drivers",
        help="link the host's NVIDIA driver libraries into host_injections/nvidia/<family>/latest",
    )
    q.add_argument("--ldconfig", metavar="FILE", help="read `ldconfig -p` output from FILE (default: run it)")
    q.add_argument(
        "--root",
        metavar="DIR",
        help=f"the host_injections directory (default: ${HOST_INJECTIONS_ENV} or {DEFAULT_ROOT})",
    )
    q.add_argument(
        "--sysroot", metavar="DIR", help="the host's file tree is mounted at DIR (tests, containers)"
    )
    q.add_argument(
        "--driver-version", metavar="V", help="the running driver's version (default: from nvidia-smi)"
    )
    q.add_argument("--nvidia-smi", metavar="PROGRAM", help="the nvidia-smi to ask for the driver version")
    q.add_argument("--family", metavar="FAMILY", help="CPU family (default: this machine's)")
    q.add_argument("--dry-run", action="store_true", help="show what would be linked, write nothing")
    add_json(q)
    q.set_defaults(handler=cmd_link_drivers)

    b = gsub.add_parser(
        "build", help="build an accelerator target's GPU stack (CUDA from PyPI wheels, our GPU program)"
    )
    b.add_argument(
        "--target", default="zen4_cc90", metavar="NAME", help="accelerator target (default: zen4_cc90)"
    )
    b.add_argument(
        "--prefix", metavar="DIR", help="install here (default: the accelerator prefix under <state dir>/gpu)"
    )
    b.add_argument(
        "--tarball",
        action="store_true",
        help="install at /cvmfs/<repo>/... through the build overlay (root or user namespaces) and pack the "
        "accelerator tarball for the gate",
    )
    add_stack_version(b)
    add_json(b)
    b.set_defaults(handler=cmd_build)

    c = gsub.add_parser("checks", help="run the ReFrame GPU checks of an accelerator target's GPU stack")
    c.add_argument(
        "--target", default="zen4_cc90", metavar="NAME", help="accelerator target (default: zen4_cc90)"
    )
    c.add_argument("--prefix", metavar="DIR", help="where `gpu build --prefix` installed it")
    add_stack_version(c)
    add_json(c)
    c.set_defaults(handler=cmd_checks)

    p = gsub.add_parser("plan", help="what the pipeline does for an accelerator target (no side effects)")
    p.add_argument(
        "--target", default="zen4_cc90", metavar="NAME", help="accelerator target (default: zen4_cc90)"
    )
    add_stack_version(p)
    add_json(p)
    p.set_defaults(handler=cmd_plan)
