"""The GPU stack of an accelerator target: CUDA from PyPI wheels and our GPU program, built by EasyBuild.

``eessi-pipeline gpu build --target zen4_cc90`` installs the ``gpu`` stack of ``matrices/stacks.yaml``
into the accelerator prefix, laid out as in the repository::

    <state>/gpu/<version>/<target>/versions/<version>/software/linux/x86_64/amd/zen4/accel/nvidia/cc90/
        software/CUDA/13.5.37-pypi/...   modules/all/CUDA/13.5.37-pypi.lua
        software/GPUBandwidth/...        modules/all/GPUBandwidth/0.1-CUDA-13.5.37-pypi.lua

(``--prefix DIR`` puts the ``software``/``modules`` tree elsewhere).  Sources are provisioned offline
like every other stack's (:mod:`eessi_pipeline.build.sources`: ``pip download`` of the pinned wheels,
checked against the easyconfigs' sha256).  EasyBuild gets the target's compute capability
(``--cuda-compute-capabilities=9.0``: its CUDA sanity check reads the built binaries with
``cuobjdump`` and fails on any other architecture) and ``$EESSI_PIPELINE_CUDA_ARCH=sm_90`` for our
program's build command.  The CPU flow (``build``, ``run``) never builds this stack.

Not done here (yet): building inside the overlay at ``/cvmfs/...`` and packing the accelerator tarball
(the CPU driver's job, :mod:`eessi_pipeline.build.driver`), and linking CUDA's binaries to the
compatibility layer; the installation is for checks on this host and on a GPU node.

Planning is pure (:func:`plan_gpu_build`); :func:`build_gpu_stack` provisions and runs EasyBuild.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build.easybuild import (
    HOOKS,
    EasyBuildConfig,
    eb_environment,
    eb_install_argv,
    installed_easybuild_version,
)
from ..build.stacks import Stack, StackConfig, load_stacks
from ..errors import BuildError
from ..locks import wait_lock
from ..matrix import AccelTarget, Matrix, load_matrix
from ..settings import resolve_settings

log = logging.getLogger(__name__)

GPU_STACK = "gpu"
ARCH_ENV = "EESSI_PIPELINE_CUDA_ARCH"
EB_TIMEOUT = 1800.0
LOCK_TIMEOUT = 3600.0
# what the build runs from the host besides EasyBuild: the CUDA easyconfig unpacks wheels with unzip
# (it keeps their file modes), and nvcc compiles host code with the system C++ compiler
HOST_TOOLS = (("unzip", "to unpack NVIDIA's wheels"), ("g++", "nvcc's host compiler"))


@dataclass(frozen=True, slots=True)
class GpuBuildPlan:
    """Everything one GPU stack build needs, decided before anything runs."""

    target: AccelTarget
    version: str
    stack: Stack
    root: Path  # holds versions/<version>/software/linux/<subdir> (or the --prefix)
    installpath: Path  # EasyBuild's --installpath: software/ and modules/all/ under it
    sourcepath: Path
    buildpath: Path
    ebprefix: Path
    tools: Path  # a directory on PATH during the build: cuobjdump for EasyBuild's CUDA check
    robot_paths: tuple[Path, ...]

    @property
    def cuda_arch(self) -> str:
        return self.target.accel.sm

    @property
    def compute_capability(self) -> str:
        return self.target.accel.compute_capability

    @property
    def modulepath(self) -> Path:
        return self.installpath / "modules" / "all"


def plan_gpu_build(
    matrix: Matrix,
    stacks: StackConfig,
    target: AccelTarget,
    version: str | None,
    state_dir: Path,
    prefix: Path | None = None,
) -> GpuBuildPlan:
    """Where and how ``target``'s GPU stack is built (pure: reads only the data files already loaded)."""
    ver = matrix.version(version).name
    if ver not in target.versions:
        raise BuildError(
            f"{target.name} is not built in stack version {ver} (its CPU target is in "
            f"{', '.join(target.versions)}); choose one with --stack-version"
        )
    stack = stacks.stack(ver, GPU_STACK)
    work = state_dir / "gpu" / ver / target.name
    root = work / "upper"
    installpath = (
        prefix if prefix is not None else root / "versions" / ver / "software" / "linux" / target.subdir
    )
    return GpuBuildPlan(
        target=target,
        version=ver,
        stack=stack,
        root=root,
        installpath=installpath,
        sourcepath=state_dir / "build" / "sources",
        buildpath=work / "eb" / "build",
        ebprefix=work / "eb",
        tools=work / "tools",
        robot_paths=stacks.robot_paths(("project",)),
    )


def eb_config(plan: GpuBuildPlan, as_root: bool) -> EasyBuildConfig:
    return EasyBuildConfig(
        installpath=str(plan.installpath),
        sourcepath=plan.sourcepath,
        buildpath=plan.buildpath,
        prefix=plan.ebprefix,
        robot_paths=plan.robot_paths,
        hooks=HOOKS,
        generic=False,
        as_root=as_root,
        system_cflags="-O2",
    )


def eb_argv(plan: GpuBuildPlan, as_root: bool) -> list[str]:
    """``eb --easystack gpu.yaml --robot`` with the target's compute capability (pure)."""
    return [
        *eb_install_argv(eb_config(plan, as_root), plan.stack.easystack),
        f"--cuda-compute-capabilities={plan.compute_capability}",
    ]


def eb_env(plan: GpuBuildPlan, base: Mapping[str, str], as_root: bool) -> dict[str, str]:
    """EasyBuild's environment plus the CUDA architecture and the tools directory (pure)."""
    env = eb_environment(eb_config(plan, as_root), base)
    env[ARCH_ENV] = plan.cuda_arch
    env["PATH"] = f"{plan.tools}{os.pathsep}{env['PATH']}"
    env.pop("LD_LIBRARY_PATH", None)
    return env


def _link_tools(plan: GpuBuildPlan) -> None:
    """cuobjdump of the (future) CUDA installation on PATH: EasyBuild's CUDA check runs it after
    unloading the modules, when the CUDA module's own bin directory has left PATH again."""
    plan.tools.mkdir(parents=True, exist_ok=True)
    cuda = next((ec for ec in plan.stack.easyconfigs if ec.name == "CUDA"), None)
    if cuda is None:
        raise BuildError(f"{plan.stack.easystack}: the GPU stack installs no CUDA module; add its easyconfig")
    link = plan.tools / "cuobjdump"
    link.unlink(missing_ok=True)
    link.symlink_to(plan.installpath / "software" / cuda.module / "bin" / "cuobjdump")


def build_gpu_stack(
    target_name: str, prefix: str | None, state_dir: str | None, version: str | None
) -> dict[str, Any]:
    """Provision the GPU stack's sources and install it with EasyBuild; return a summary."""
    from ..build.sources import Provisioner, plan_sources
    from ..proc import CommandFailed, run

    matrix = load_matrix()
    stacks = load_stacks()
    settings = resolve_settings(state_dir=state_dir, version=version)
    target = matrix.accel_target(target_name)
    plan = plan_gpu_build(
        matrix, stacks, target, settings.version, settings.state_dir, Path(prefix) if prefix else None
    )
    eb_version = installed_easybuild_version()  # refuses, naming the install command, without EasyBuild
    for tool, why in HOST_TOOLS:
        if shutil.which(tool) is None:
            raise BuildError(
                f"the GPU stack needs {tool} on PATH ({why}); install it, e.g. `apt-get install {tool}`"
            )
    plan.ebprefix.mkdir(parents=True, exist_ok=True)
    with wait_lock(
        plan.ebprefix / "gpu-build.lock", LOCK_TIMEOUT, f"the GPU stack build of {target.name}", BuildError
    ):
        provisioner = Provisioner(plan.sourcepath, settings.state_dir / "build" / "fetch", stacks.debian)
        sources = provisioner.provision(plan_sources(plan.stack.easyconfigs, stacks))
        plan.installpath.mkdir(parents=True, exist_ok=True)
        _link_tools(plan)
        as_root = os.geteuid() == 0
        try:
            run(eb_argv(plan, as_root), timeout=EB_TIMEOUT, env=eb_env(plan, os.environ, as_root))
        except CommandFailed as e:
            raise BuildError(
                f"EasyBuild could not build the GPU stack of {target.name}: {e}; its logs are under "
                f"{plan.ebprefix} and {plan.installpath / 'software'}"
            ) from e
    return {
        "target": target.name,
        "subdir": target.subdir,
        "version": plan.version,
        "prefix": str(plan.installpath),
        "modulepath": str(plan.modulepath),
        "modules": list(plan.stack.modules),
        "cuda_arch": plan.cuda_arch,
        "sources": sources,
        "python": sys.executable,
        "easybuild": eb_version,
    }
