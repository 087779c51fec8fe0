"""``eessi-pipeline build --target NAME``: the target's EasyBuild stack, built through the overlay, packed.

``--runtime namespace|apptainer|singularity`` (``$EESSI_PIPELINE_BUILD_RUNTIME``) picks where EasyBuild
runs, ``--image`` (``$EESSI_PIPELINE_BUILD_IMAGE``) the build container; ``--stack NAME`` builds another
stack of the version than the one ``matrices/stacks.yaml`` assigns; ``--resolve`` asks EasyBuild for the
stack's dependency graph (``eb --robot --dry-run``) and builds nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from ..arch.cpuinfo import read_host_cpu
from ..arch.emulation import emulators_for
from ..arch.select import require_build_node
from ..matrix import load_matrix
from ..settings import resolve_settings
from ..software.container import ContainerView
from ..software.driver import BuildPlan, ensure_build, lmod_cache_argv, resolve_stack
from ..software.easybuild import eb_install_argv
from ..software.runtime import IMAGE_ENV, RUNTIME_ENV, Runtime, require_binary, resolve_runtime
from ..software.stacks import load_stacks
from .options import add_json, add_setting, add_stack_version
from .output import emit_json

DRY_RUN_GCC = "12.2.0"  # --dry-run shows the flags for Debian 12's gcc instead of asking gcc


def _dry_run(plan: BuildPlan, args: argparse.Namespace, out: TextIO) -> int:
    view = plan.view(require=False)
    cfg = plan.eb_config(DRY_RUN_GCC, as_root=view.eb_sees_root)
    compat = plan.compat_spec
    steps: dict[str, str] = {}
    if compat is not None:
        steps["compat_layer"] = (
            f"build or reuse the {compat.family} compatibility layer in {compat.compat_dir} "
            f"(as `eessi-pipeline compat build --family {compat.family}`), shown read-only at {compat.prefix}"
        )
    if compat is not None and plan.layer_tools:
        steps["layer_tools"] = (
            f"EasyBuild's commands find the layer's gcc (--sysroot={compat.prefix}), python3, binutils "
            f"and bash first on PATH (wrappers in {plan.target_dir / 'layer-tools'}), "
            f"QEMU_LD_PREFIX={compat.prefix}: {plan.target.family} programs run under emulation"
        )
    steps["eb"] = shlex.join(view.wrap(eb_install_argv(cfg, plan.stack.easystack)))
    if compat is not None:
        steps["link"] = (
            f"with the layer's patchelf: executables get the layer's loader, ELF files {compat.prefix}'s "
            "library dirs after their own RPATH/RUNPATH (manylinux wheels left alone); then the layer's "
            "loader checks (--list) that nothing resolves to the host"
        )
    steps["lmod_cache"] = shlex.join(view.wrap(lmod_cache_argv(plan.prefix)))
    data: dict[str, Any] = {
        "dry_run": True,
        "target": plan.target.name,
        "prefix": plan.prefix,
        "stack": plan.stack.name,
        "toolchain": plan.stack.toolchain,
        "robot_paths": [str(p) for p in plan.stack.robot_paths],
        "easystack": str(plan.stack.easystack),
        "modules": list(plan.stack.modules),
        "runtime": plan.runtime.runtime.value,
        "runtime_from": plan.runtime.source,
        "environment": view.describe(),
        "upper": str(view.upper),
        "commands": steps,
        "compat_layer": None
        if compat is None
        else {"family": compat.family, "prefix": compat.prefix, "staging": str(compat.staging)},
    }
    if isinstance(view, ContainerView):
        data["image"] = str(view.sif)
        data["container_definition"] = view.definition()
    if args.json:
        emit_json(data, out)
        return 0
    out.write(
        f"would build stack {plan.stack.name} (toolchain {plan.stack.toolchain}: "
        f"{', '.join(plan.stack.modules)}) into {plan.prefix}\n  in: {view.describe()}\n"
    )
    if compat is not None:
        out.write(
            f"  links to the compatibility layer at {compat.prefix} (its loader and libc, not the host's; "
            f"staged at {compat.staging})\n"
        )
    for name, cmd in steps.items():
        out.write(f"  {name}: {cmd}\n")
    if data.get("container_definition"):
        out.write(f"  container definition (built into {data['image']} on first use):\n")
        out.write("".join(f"    {line}\n" for line in data["container_definition"].splitlines()))
    return 0


def _resolve(plan: BuildPlan, args: argparse.Namespace, out: TextIO) -> int:
    graph = resolve_stack(plan)
    if args.json:
        emit_json(
            {
                "target": plan.target.name,
                "stack": plan.stack.name,
                "toolchain": plan.stack.toolchain,
                "graph": [
                    {"module": r.module, "easyconfig": r.easyconfig, "installed": r.installed} for r in graph
                ],
            },
            out,
        )
        return 0
    missing = sum(not r.installed for r in graph)
    out.write(
        f"stack {plan.stack.name} for {plan.target.name}: {len(graph)} easyconfigs, {missing} to build\n"
    )
    for r in graph:
        out.write(f"  [{'x' if r.installed else ' '}] {r.module}  ({r.easyconfig})\n")
    return 0


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(
        version=args.version, state_dir=getattr(args, "state_dir", None), repository=args.repo
    )
    runtime = resolve_runtime(args.runtime, args.image, os.environ)
    matrix = load_matrix()
    target = matrix.target(args.target)
    host = read_host_cpu(args.cpuinfo)
    require_build_node(host, target, matrix, settings.version, emulators_for(host, target))
    stacks = load_stacks(Path(args.stacks) if args.stacks else None)
    plan = BuildPlan.create(
        matrix,
        stacks,
        target,
        settings.version,
        settings.repository,
        settings.state_dir,
        stack_name=args.stack,
        runtime=runtime,
    )
    if args.dry_run:
        return _dry_run(plan, args, out)
    if args.resolve:
        return _resolve(plan, args, out)
    if args.scheduler == "slurm":  # issue 20: the same build, as a batch job
        return _build_as_job(args, settings.state_dir, plan, out)
    require_binary(runtime)
    sys.stderr.write(f"[build] {target.name}: stack {plan.stack.name} into {plan.prefix}\n")
    result = ensure_build(plan, stacks)
    if args.json:
        emit_json(result.to_json(), out)
    else:
        how = "reused (inputs unchanged)" if result.reused else f"built in {result.seconds:.0f} s"
        sys.stderr.write(f"[build] {how}\n")
        out.write(f"{result.tarball}\n")
    return 0


def _build_as_job(args: argparse.Namespace, state_dir: Path, plan: BuildPlan, out: TextIO) -> int:
    """Submit this build as a batch job (embedded cluster, or ``--site``'s partition) and wait for it."""
    from ..cluster.jobs import BuildJob, job_script, submit_build
    from ..cluster.manager import Cluster
    from ..matrix import PROJECT_ROOT

    state = state_dir.resolve()
    build_argv = ["--state-dir", str(state), "build", "--target", plan.target.name, "--stack-version",
                  plan.version, "--repo", plan.repository, "--stack", plan.stack.name,
                  "--runtime", plan.runtime.runtime.value, "--scheduler", "local", "--json"]  # fmt: skip
    if args.stacks:
        build_argv += ["--stacks", str(Path(args.stacks).resolve())]
    if args.site:
        from ..checks.rfmconfig import load_site, site_partition

        sp = site_partition(load_site(Path(args.site)), plan.target)
        access, cpus, prefix, env = sp.access, sp.num_cpus, [], dict(os.environ)
    else:
        cluster = Cluster(state)
        cluster.require_running()
        access, cpus = ("--partition=eessi",), cluster.plan.cpus
        prefix, env = cluster.client_prefix(), cluster.client_env()
    jobs = state / "build" / "jobs"
    name = f"eessi-build-{plan.target.name}"
    job = BuildJob(name, jobs / f"{name}.sh", jobs / f"{name}.json", jobs / f"{name}.log", PROJECT_ROOT,
                   tuple(access), cpus)  # fmt: skip
    sys.stderr.write(f"[build] {plan.target.name}: submitting it as a batch job ({shlex.join(access)})\n")
    script = job_script(sys.executable, PROJECT_ROOT, build_argv)
    done = submit_build(job, script, client_prefix=prefix, env=env)
    summary = {**done.summary, "job_id": done.job_id, "job_log": str(done.log)}
    if args.json:
        emit_json(summary, out)
    else:
        how = "reused (inputs unchanged)" if summary.get("reused") else f"built in {summary.get('seconds')} s"
        sys.stderr.write(f"[build] job {done.job_id}: {how}; log {done.log}\n")
        out.write(f"{summary['tarball']}\n")
    return 0


def add_build_parser(sub: Any) -> None:
    """Register ``build`` on the main parser's subparsers."""
    p = sub.add_parser(
        "build", help="build a target's EasyBuild stack into /cvmfs through an overlay and pack it"
    )
    p.add_argument("--target", required=True, help="target name or subdir (e.g. zen4, x86_64_generic)")
    add_setting(p, "state_dir")
    add_stack_version(p)
    add_setting(p, "repository")
    p.add_argument("--stacks", help="stacks file (default: matrices/stacks.yaml)")
    p.add_argument(
        "--stack", help="build this stack of the version instead of the target's (e.g. production)"
    )
    p.add_argument(
        "--runtime",
        help=f"where EasyBuild runs: {', '.join(r.value for r in Runtime)} "
        f"(default: ${RUNTIME_ENV}, else namespace)",
    )
    p.add_argument(
        "--image",
        help="build container for apptainer/singularity: a .sif, or the docker:// base image of the "
        f"generated definition (default: ${IMAGE_ENV}, else EESSI's docker://ghcr.io/eessi/build-node:debian12)",
    )
    p.add_argument(
        "--resolve",
        action="store_true",
        help="ask EasyBuild for the stack's dependency graph (eb --robot --dry-run); build nothing",
    )
    p.add_argument("--cpuinfo", help="describe the build host from FILE (default: /proc/cpuinfo)")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="build here (default) or as a Slurm batch job: on the embedded cluster "
                   "(`eessi-pipeline cluster up`) or on --site's partition for the target")  # fmt: skip
    p.add_argument("--site", help="with --scheduler slurm: a real cluster's site file")
    p.add_argument("--dry-run", action="store_true", help="show what would run, change nothing")
    add_json(p, "machine-readable output")
    p.set_defaults(handler=cmd_build)
