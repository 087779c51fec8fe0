"""``eessi-pipeline build --target NAME``: the target's EasyBuild stack, built through the overlay, packed."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from .arch.cpuinfo import read_host_cpu
from .arch.select import require_build_node
from .build.driver import BuildPlan, ensure_build, lmod_cache_argv
from .build.easybuild import HOOKS, EasyBuildConfig, eb_install_argv, system_cflags
from .build.overlay import OverlayView
from .build.stacks import load_stacks
from .matrix import load_matrix
from .settings import resolve_settings


def _emit(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _dry_config(plan: BuildPlan) -> EasyBuildConfig:
    """The EasyBuild configuration without asking gcc for its version (flags shown for gcc 12)."""
    return EasyBuildConfig(
        installpath=plan.prefix,
        sourcepath=plan.sourcepath,
        buildpath=plan.target_dir / "eb" / "build",
        prefix=plan.target_dir / "eb" / "prefix",
        robot_paths=(plan.stack.easyconfigs[0].path.parents[2],),
        hooks=HOOKS,
        generic=plan.target.is_generic,
        as_root=os.geteuid() == 0,
        system_cflags=system_cflags(plan.target.archspec, plan.target.is_generic, "12.2.0"),
    )


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(
        version=args.version, state_dir=getattr(args, "state_dir", None), repository=args.repo
    )
    matrix = load_matrix()
    target = matrix.target(args.target)
    require_build_node(read_host_cpu(args.cpuinfo), target, matrix, settings.version)
    stacks = load_stacks(Path(args.stacks) if args.stacks else None)
    plan = BuildPlan.create(matrix, stacks, target, settings.version, settings.repository, settings.state_dir)
    if args.dry_run:
        overlay = OverlayView.for_repository(settings.repository, plan.target_dir / "overlay")
        cfg = _dry_config(plan)
        steps = {
            "eb": shlex.join(overlay.wrap(eb_install_argv(cfg, plan.stack.easystack))),
            "lmod_cache": shlex.join(lmod_cache_argv(plan.prefix)),
        }
        data = {
            "dry_run": True,
            "target": target.name,
            "prefix": plan.prefix,
            "stack": plan.stack.name,
            "easystack": str(plan.stack.easystack),
            "modules": list(plan.stack.modules),
            "upper": str(overlay.upper),
            "commands": steps,
        }
        if args.json:
            _emit(data, out)
        else:
            out.write(
                f"would build stack {plan.stack.name} ({', '.join(plan.stack.modules)}) into {plan.prefix}\n"
            )
            for name, cmd in steps.items():
                out.write(f"  {name}: {cmd}\n")
        return 0
    sys.stderr.write(f"[build] {target.name}: stack {plan.stack.name} into {plan.prefix}\n")
    result = ensure_build(plan, stacks)
    if args.json:
        _emit(result.to_json(), out)
    else:
        how = "reused (inputs unchanged)" if result.reused else f"built in {result.seconds:.0f} s"
        sys.stderr.write(f"[build] {how}\n")
        out.write(f"{result.tarball}\n")
    return 0


def add_build_parser(sub: Any) -> None:
    """Register ``build`` on the main parser's subparsers."""
    p = sub.add_parser(
        "build", help="build a target's EasyBuild stack into /cvmfs through an overlay and pack it"
    )
    p.add_argument("--target", required=True, help="target name or subdir (e.g. zen4, x86_64_generic)")
    p.add_argument(
        "--state-dir", default=argparse.SUPPRESS, help="state directory (default: $EESSI_PIPELINE_STATE_DIR)"
    )
    p.add_argument("--version", help="stack version (default: $EESSI_PIPELINE_VERSION or the matrix default)")
    p.add_argument(
        "--repo", help="repository name (default: $EESSI_PIPELINE_REPOSITORY, software.eessi.local)"
    )
    p.add_argument("--stacks", help="stacks file (default: matrices/stacks.yaml)")
    p.add_argument("--cpuinfo", help="describe the build host from FILE (default: /proc/cpuinfo)")
    p.add_argument("--dry-run", action="store_true", help="show what would run, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_build)
