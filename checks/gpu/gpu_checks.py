# ReFrame declares test attributes as mutable class-level lists and sets; its metaclass copies them per test.
# ruff: noqa: RUF012
"""ReFrame checks of an accelerator target (``<cpu subdir>/accel/nvidia/ccXY``; reframe-hpc 4.10.0).

``eessi-pipeline gpu checks`` (and ``tests/test_gpu_checks_acceptance.py``) run them with the
target's accelerator ``modules/all`` on ``MODULEPATH``:

* ``gpu_module_smoke_check``: every GPU module loads and its smoke command (``matrices/smoke.yaml``)
  passes; needs no GPU (nvcc compiles, our program starts);
* ``gpu_device_query_check``: the GPU the CUDA runtime sees has the target's compute capability
  (an sm_90 build on a cc80 node would fail here, not silently elsewhere);
* ``gpu_bandwidth_check``: copy and triad bandwidth of device memory, against the references of
  ``matrices/references.yaml`` (key ``gpu_bandwidth_check/1_gpu``, the accelerator target's name).

The two device checks are skipped, with the reason, on a host without an NVIDIA GPU: the gate
then refuses the accelerator tarball (matrices/policy.yaml, ``software-accel``), since skipped is
not passed.  Environment read at load time: ``EESSI_PIPELINE_MODULEPATH``, ``EESSI_PIPELINE_TARGET``,
``EESSI_PIPELINE_REFERENCES``, ``EESSI_PIPELINE_SMOKE`` (as the software checks) and
``EESSI_PIPELINE_ACCEL_CC`` (``cc90``: what the device must be).
"""

from __future__ import annotations

import os
from typing import Any

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import parameter, performance_function, run_after, sanity_function

from eessi_pipeline.checks import rfmlib

MODULEPATH, REFERENCES, SMOKE_FILE = rfmlib.check_paths()
SMOKE = rfmlib.smoke_table(SMOKE_FILE)
ACCEL_CC = os.environ.get("EESSI_PIPELINE_ACCEL_CC", "")
ELEMENTS = 1 << 27  # 1 GiB per array of doubles: well past any GPU cache


def _gpu_missing() -> str:
    """Why this host cannot run device checks ("" when an NVIDIA GPU answers)."""
    try:
        from eessi_pipeline.arch.accel import AccelError, query_nvidia_smi
    except ImportError as e:  # checks run from the project's environment; say so if not
        return f"eessi_pipeline is not importable ({e})"
    try:
        acc = query_nvidia_smi()
    except AccelError as e:
        return f"nvidia-smi fails: {e}"
    if not acc.subdir:
        return "; ".join(acc.notes) or "no NVIDIA GPU"
    return ""


GPU_MISSING = _gpu_missing()


class gpu_check(rfmlib.TargetCheck):
    valid_systems = ["*"]


@rfm.simple_test
class gpu_module_smoke_check(gpu_check):
    """A GPU module loads with Lmod and its program runs (no GPU needed)."""

    module = parameter(rfmlib.installed_modules(MODULEPATH))
    tags = {"smoke", "gpu"}

    @run_after("init")
    def set_command(self) -> None:
        self.run_smoke(self.module, SMOKE)

    @sanity_function
    def assert_runs(self) -> Any:
        return sn.all([sn.assert_found(self.expect, self.stdout), sn.assert_eq(self.job.exitcode, 0)])


class gpu_device_check(gpu_check):
    modules = ["GPUBandwidth"]
    executable = "gpu_bandwidth"

    @run_after("setup")
    def need_a_gpu(self) -> None:
        self.skip_if(
            bool(GPU_MISSING),
            f"no usable NVIDIA GPU on this host ({GPU_MISSING}): run the {ACCEL_CC or 'accelerator'} "
            "target's checks on a runner with that GPU",
        )


@rfm.simple_test
class gpu_device_query_check(gpu_device_check):
    """The device has the target's compute capability; the runtime and the driver work together."""

    executable_opts = ["--query"]
    tags = {"gpu"}

    @sanity_function
    def assert_capability(self) -> Any:
        cc = sn.extractsingle(r'"cc": "(cc\d+)"', self.stdout, 1)
        return sn.all(
            [
                sn.assert_found(r'^\{"ok": true', self.stdout),
                sn.assert_eq(cc, ACCEL_CC, msg="the GPU is {0}, the target is built for {1}"),
            ]
        )


@rfm.simple_test
class gpu_bandwidth_check(gpu_device_check):
    """Copy and triad bandwidth of device memory (best of 20), in GB/s."""

    executable_opts = ["--elements", str(ELEMENTS), "--reps", "20"]
    tags = {"gpu", "performance"}

    @run_after("setup")
    def set_references(self) -> None:
        self.reference_key = "gpu_bandwidth_check/1_gpu"
        self.reference = {"*": rfmlib.load_references(REFERENCES, self.reference_key, self.target_name())}

    @sanity_function
    def assert_correct(self) -> Any:
        return sn.assert_found(r'"correct": true', self.stdout)

    @performance_function("GB/s")
    def Copy(self) -> Any:
        return sn.extractsingle(r'"copy_GBps": ([0-9.]+)', self.stdout, 1, float)

    @performance_function("GB/s")
    def Triad(self) -> Any:
        return sn.extractsingle(r'"triad_GBps": ([0-9.]+)', self.stdout, 1, float)
