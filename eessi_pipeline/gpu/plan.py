"""What the pipeline does for an accelerator target: a pure function, shown by ``eessi-pipeline gpu plan``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cvmfs.tarname import EPOCH_PLACEHOLDER
from ..matrix import AccelTarget, Matrix
from ..software.stacks import StackConfig
from .stack import GPU_STACK


@dataclass(frozen=True, slots=True)
class GpuStep:
    name: str
    detail: str
    command: str


@dataclass(frozen=True, slots=True)
class GpuPlan:
    target: AccelTarget
    version: str
    install_prefix: str
    tarball: str
    runner: tuple[str, ...]
    modules: tuple[str, ...]
    steps: tuple[GpuStep, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "cpu_target": self.target.cpu.name,
            "subdir": self.target.subdir,
            "marker": self.target.marker,
            "compute_capability": self.target.accel.compute_capability,
            "cuda_arch": self.target.accel.sm,
            "version": self.version,
            "install_prefix": self.install_prefix,
            "tarball": self.tarball,
            "runner": list(self.runner),
            "modules": list(self.modules),
            "steps": [{"name": s.name, "detail": s.detail, "command": s.command} for s in self.steps],
        }


def make_gpu_plan(
    matrix: Matrix, stacks: StackConfig, at: AccelTarget, version: str | None, repository: str
) -> GpuPlan:
    """The accelerator target's plan (pure: the data files are loaded already)."""
    ver = matrix.version(version).name
    stack = stacks.stack(ver, GPU_STACK)
    prefix = f"/cvmfs/{repository}/versions/{ver}/software/linux/{at.subdir}"
    runner = matrix.accel_runner_for(at)
    steps = (
        GpuStep(
            "detect",
            f"a host with a {at.accel.cc} GPU answers {at.accel.subdir}",
            "eessi-pipeline detect --accel",
        ),
        GpuStep(
            "build",
            f"EasyBuild installs {', '.join(stack.modules)} for {at.accel.sm} (CUDA from PyPI, offline)",
            f"eessi-pipeline gpu build --target {at.name}",
        ),
        GpuStep(
            "driver",
            "the runner's NVIDIA driver libraries linked into host_injections/nvidia/<family>/latest",
            "eessi-pipeline gpu link-drivers",
        ),
        GpuStep(
            "checks",
            f"ReFrame: module smoke, device query ({at.accel.compute_capability}), bandwidth vs references",
            f"pytest -m {at.marker}  (runner: {', '.join(runner)})",
        ),
        GpuStep(
            "gate",
            "the policy's software-accel rule: the GPU checks passed on a GPU (skipped is refused)",
            f"eessi-pipeline gate record … {at.tarball(ver, EPOCH_PLACEHOLDER)}",
        ),
    )
    return GpuPlan(at, ver, prefix, at.tarball(ver, EPOCH_PLACEHOLDER), runner, stack.modules, steps)
