"""The GPU stack of an accelerator target: CUDA from PyPI wheels and our GPU program, built by EasyBuild.

``eessi-pipeline gpu build --target zen4_cc90`` installs the ``gpu`` stack of ``matrices/stacks.yaml``
into the accelerator prefix, laid out as in the repository::

    <state>/gpu/<version>/<target>/versions/<version>/software/linux/x86_64/amd/zen4/accel/nvidia/cc90/
        software/CUDA/13.5.37-pypi/...   modules/all/CUDA/13.5.37-pypi.lua
        software/GPUBandwidth/...        modules/all/GPUBandwidth/0.1-CUDA-13.5.37-pypi.lua

(``--prefix DIR`` puts the ``software``/``modules`` tree elsewhere).  Sources are provisioned offline
like every other stack's (:mod:`eessi_pipeline.software.sources`: ``pip download`` of the pinned wheels,
checked against the easyconfigs' sha256).  EasyBuild gets the target's compute capability
(``--cuda-compute-capabilities=9.0``: its CUDA sanity check reads the built binaries with
``cuobjdump`` and fails on any other architecture) and ``$EESSI_PIPELINE_CUDA_ARCH=sm_90`` for our
program's build command.  The CPU flow (``build``, ``run``) never builds this stack.

Not done here (yet): building inside the overlay at ``/cvmfs/...`` and packing the accelerator tarball
(the CPU driver's job, :mod:`eessi_pipeline.software.driver`), and linking CUDA's binaries to the
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

from ..errors import BuildError
from ..locks import wait_lock
from ..matrix import AccelTarget, Matrix, load_matrix
from ..settings import resolve_settings
from ..software.easybuild import (
    HOOKS,
    EasyBuildConfig,
    eb_environment,
    eb_install_argv,
    installed_easybuild_version,
)
from ..software.stacks import Stack, StackConfig, load_stacks
from ..software.tarball import Packed

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
    repository: str = ""  # set: build at /cvmfs/<repository>/... inside the build overlay and pack a tarball

    @property
    def overlay_root(self) -> Path:
        """The overlay's directories (upper holds versions/<v>/software/linux/<subdir>)."""
        return self.ebprefix.parent / "overlay"

    @property
    def tarball_dir(self) -> Path:
        return self.ebprefix.parent / "tarballs"

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
    repository: str = "",
) -> GpuBuildPlan:
    """Where and how ``target``'s GPU stack is built (pure: reads only the data files already loaded).

    With ``repository`` the stack is installed at its place in the repository,
    ``/cvmfs/<repository>/versions/<v>/software/linux/<subdir>``, through the build overlay (as the CPU
    stacks are), so that its modules and programs name the paths clients see and it can be packed."""
    ver = matrix.version(version).name
    if ver not in target.versions:
        raise BuildError(
            f"{target.name} is not built in stack version {ver} (its CPU target is in "
            f"{', '.join(target.versions)}); choose one with --stack-version"
        )
    stack = stacks.stack(ver, GPU_STACK)
    work = state_dir / "gpu" / ver / target.name
    root = work / "upper"
    if repository and prefix is not None:
        raise BuildError("give --prefix (a local installation) or --tarball (at /cvmfs, packed), not both")
    if repository:
        installpath = Path(f"/cvmfs/{repository}/versions/{ver}/software/linux/{target.subdir}")
    else:
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
        repository=repository,
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
    target_name: str,
    prefix: str | None,
    state_dir: str | None,
    version: str | None,
    *,
    tarball: bool = False,
    repository: str | None = None,
) -> dict[str, Any]:
    """Provision the GPU stack's sources and install it with EasyBuild; return a summary.

    ``tarball``: install at the repository path through the build overlay and pack the accelerator
    target's tarball (EESSI's name, checked like every tarball before it is handed to the gate)."""
    from ..proc import CommandFailed, run
    from ..software.sources import Provisioner, plan_sources

    matrix = load_matrix()
    stacks = load_stacks()
    settings = resolve_settings(state_dir=state_dir, version=version, repository=repository)
    target = matrix.accel_target(target_name)
    plan = plan_gpu_build(
        matrix, stacks, target, settings.version, settings.state_dir, Path(prefix) if prefix else None,
        settings.repository if tarball else "",
    )  # fmt: skip
    eb_version = installed_easybuild_version()  # refuses, naming the install command, without EasyBuild
    for tool, why in HOST_TOOLS:
        if shutil.which(tool) is None:
            raise BuildError(
                f"the GPU stack needs {tool} on PATH ({why}); install it, e.g. `apt-get install {tool}`"
            )
    plan.ebprefix.mkdir(parents=True, exist_ok=True)
    packed = None
    with wait_lock(
        plan.ebprefix / "gpu-build.lock", LOCK_TIMEOUT, f"the GPU stack build of {target.name}", BuildError
    ):
        provisioner = Provisioner(plan.sourcepath, settings.state_dir / "build" / "fetch", stacks.debian)
        sources = provisioner.provision(plan_sources(plan.stack.easyconfigs, stacks))
        _link_tools(plan)
        as_root = os.geteuid() == 0
        env = eb_env(plan, os.environ, as_root or bool(plan.repository))
        try:
            if plan.repository:
                packed = _build_in_overlay(plan, env)
            else:
                plan.installpath.mkdir(parents=True, exist_ok=True)
                run(eb_argv(plan, as_root), timeout=EB_TIMEOUT, env=env)
        except CommandFailed as e:
            raise BuildError(
                f"EasyBuild could not build the GPU stack of {target.name}: {e}; its logs are under "
                f"{plan.ebprefix} and {plan.installpath / 'software'}"
            ) from e
    summary: dict[str, Any] = {
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
    if packed is not None:
        summary["tarball"] = str(packed.tarball)
        summary["meta"] = str(packed.meta)
        summary["members"] = packed.members
        summary["local_tree"] = str(plan.overlay_root / "upper" / "versions" / plan.version)
    return summary


def _build_in_overlay(plan: GpuBuildPlan, env: dict[str, str]) -> Packed:
    """EasyBuild at /cvmfs/<repo>/… in the build overlay; the new files packed into the target's tarball."""
    import time

    from ..cvmfs.tarcheck import check_tarball
    from ..software.overlay import OverlayView
    from ..software.tarball import pack

    view = OverlayView.for_repository(plan.repository, plan.overlay_root)
    for d in (view.upper, view.work, plan.buildpath, plan.tarball_dir):
        shutil.rmtree(d, ignore_errors=True)  # a tarball holds exactly what this build added
    view.run(eb_argv(plan, True), timeout=EB_TIMEOUT, env=env)
    packed = pack(view.upper, plan.version, plan.target.subdir, plan.tarball_dir, int(time.time()), env)
    check_tarball(packed.tarball, expected_version=plan.version, repository=plan.repository)
    return packed
