"""Accelerator detection: which ``accel/nvidia/ccXY`` subdirectory fits this host's GPUs.

Like EESSI's archdetect (its ``accelpath`` action) the answer comes from one ``nvidia-smi`` query::

    nvidia-smi --query-gpu=gpu_name,count,driver_version,compute_cap --format=csv,noheader

which prints one line per GPU, e.g. ``NVIDIA H200, 1, 580.159.04, 9.0``; the compute capability of
the first GPU, without its dot, names the subdirectory (``accel/nvidia/cc90``).

Where this module decides differently from EESSI, on purpose:

* no ``nvidia-smi`` on PATH, or one that says "No devices were found", means *no GPU*: the answer
  is empty and the command succeeds (EESSI's script exits 2 and 3 there), because a CPU-only host
  is a normal case for a pipeline that runs on both kinds of node;
* any other failure of ``nvidia-smi`` (another exit code, a time-out, text that is not the
  expected CSV) is an :class:`AccelError` naming the program and the fix: a broken driver must not
  be mistaken for a CPU-only host;
* hosts with GPUs of different compute capabilities get the first GPU's answer (as EESSI) and a
  note listing the others.

Parsing (:func:`parse_nvidia_smi`) and choosing (:func:`choose_accel`) are pure; only
:func:`query_nvidia_smi` runs a program.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DetectionError

#: EESSI's variable forcing the accelerator subdirectory (``accel/nvidia/cc80``).
ACCEL_OVERRIDE_ENV = "EESSI_ACCELERATOR_TARGET_OVERRIDE"
#: Names the nvidia-smi program to run instead of the one on PATH (tests, odd installations).
NVIDIA_SMI_ENV = "EESSI_PIPELINE_NVIDIA_SMI"
QUERY_ARGS = ("--query-gpu=gpu_name,count,driver_version,compute_cap", "--format=csv,noheader")
NVIDIA_SMI_TIMEOUT = 60.0
MAX_OUTPUT_BYTES = 64 << 10  # a line per GPU: a few KiB even for a large node
MAX_GPUS = 256
NO_DEVICES = "No devices were found"

_CC = re.compile(r"^([0-9]{1,2})\.([0-9])$")
_SUBDIR = re.compile(r"^accel/nvidia/cc[0-9]{2,3}$")


class AccelError(DetectionError):
    """``nvidia-smi`` exists but fails or prints something other than its GPU inventory."""


@dataclass(frozen=True, slots=True)
class Gpu:
    """One line of the inventory."""

    name: str
    count: int
    driver_version: str
    compute_capability: str  # "9.0"

    @property
    def cc(self) -> str:
        """EESSI's spelling: ``9.0`` -> ``cc90``."""
        return "cc" + self.compute_capability.replace(".", "")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "driver_version": self.driver_version,
            "compute_capability": self.compute_capability,
            "cc": self.cc,
        }


@dataclass(frozen=True, slots=True)
class AccelDetection:
    """The outcome: the subdirectory (empty when there is no GPU), the GPUs and why."""

    subdir: str
    gpus: tuple[Gpu, ...] = ()
    source: str = ""
    override: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def cc(self) -> str:
        return self.subdir.rsplit("/", 1)[-1] if self.subdir else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "subdir": self.subdir or None,
            "cc": self.cc or None,
            "gpus": [g.to_json() for g in self.gpus],
            "source": self.source,
            "override": self.override,
            "notes": list(self.notes),
        }


def parse_nvidia_smi(text: str, source: str = "nvidia-smi") -> tuple[Gpu, ...]:
    """The GPUs in ``nvidia-smi --query-gpu=gpu_name,count,driver_version,compute_cap`` CSV (pure).

    Blank lines are skipped; any other line that is not four comma-separated fields with a
    compute capability like ``9.0`` is refused, naming the line."""
    gpus: list[Gpu] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise AccelError(
                f"{source}: line {number} {line[:120]!r} is not 'name, count, driver_version, compute_cap'; "
                "is this nvidia-smi? run it by hand, or name the right one with --nvidia-smi"
            )
        name, count, driver, cc = fields
        if not _CC.match(cc):
            raise AccelError(
                f"{source}: line {number}: compute capability {cc[:40]!r} is not like 9.0 (an old driver "
                "without compute_cap support?); update the NVIDIA driver or set "
                f"{ACCEL_OVERRIDE_ENV}=accel/nvidia/ccXY"
            )
        if not count.isdigit():
            raise AccelError(f"{source}: line {number}: GPU count {count[:40]!r} is not a number")
        gpus.append(Gpu(name, int(count), driver, cc))
        if len(gpus) > MAX_GPUS:
            raise AccelError(f"{source}: more than {MAX_GPUS} GPU lines; is this nvidia-smi's inventory?")
    return tuple(gpus)


def check_override(value: str) -> str:
    """``accel/nvidia/ccXY`` (slashes around it dropped) or :class:`AccelError` (pure)."""
    wanted = value.strip().strip("/")
    if not _SUBDIR.match(wanted):
        raise AccelError(
            f"{ACCEL_OVERRIDE_ENV}={value!r} is not an accelerator subdirectory; "
            "set it like accel/nvidia/cc90, or unset it"
        )
    return wanted


def choose_accel(gpus: tuple[Gpu, ...], source: str, override: str | None = None) -> AccelDetection:
    """The subdirectory for these GPUs: the first GPU's compute capability, or the override (pure)."""
    notes: list[str] = []
    if override:
        subdir = check_override(override)
        notes.append(f"{ACCEL_OVERRIDE_ENV} selects {subdir}")
        return AccelDetection(subdir, gpus, source, override, tuple(notes))
    if not gpus:
        return AccelDetection("", (), source, None, (f"{source}: no NVIDIA GPU",))
    first = gpus[0]
    others = sorted({g.cc for g in gpus} - {first.cc})
    if others:
        notes.append(
            f"GPUs of several compute capabilities ({first.cc}, {', '.join(others)}): the first GPU's "
            f"({first.name}) decides, as in EESSI; set {ACCEL_OVERRIDE_ENV} to choose another"
        )
    return AccelDetection(f"accel/nvidia/{first.cc}", gpus, source, None, tuple(notes))


def query_nvidia_smi(program: str | None = None, environ: Mapping[str, str] | None = None) -> AccelDetection:
    """Run nvidia-smi (``program``, else ``$EESSI_PIPELINE_NVIDIA_SMI``, else the one on PATH) and decide.

    An override in the environment answers without running anything."""
    from ..proc import CommandFailed, run  # the subprocess machinery only when a GPU is asked about

    env = os.environ if environ is None else environ
    override = env.get(ACCEL_OVERRIDE_ENV) or None
    if override:
        return choose_accel((), ACCEL_OVERRIDE_ENV, override)
    wanted = program or env.get(NVIDIA_SMI_ENV) or ""
    if wanted:
        if os.sep in wanted and not os.path.isfile(wanted):
            raise AccelError(
                f"--nvidia-smi {wanted}: no such file; give the path of nvidia-smi or leave it out"
            )
        found = shutil.which(wanted, path=env.get("PATH"))
        if found is None:
            raise AccelError(f"--nvidia-smi {wanted}: not an executable program; fix the path or chmod +x it")
    else:
        found = shutil.which("nvidia-smi", path=env.get("PATH"))
        if found is None:
            return AccelDetection("", (), "nvidia-smi", None, ("no nvidia-smi on PATH: no NVIDIA GPU",))
    try:
        result = run([found, *QUERY_ARGS], timeout=NVIDIA_SMI_TIMEOUT, check=False, env=dict(env))
    except CommandFailed as e:  # could not start, or ran past the time-out
        raise AccelError(f"{found}: {e}; check the NVIDIA driver (nvidia-smi must answer quickly)") from e
    out = result.stdout[:MAX_OUTPUT_BYTES]
    if result.returncode != 0:
        said = (result.stdout + "\n" + result.stderr)[:MAX_OUTPUT_BYTES]
        if NO_DEVICES in said:
            return AccelDetection("", (), found, None, (f"{found}: {NO_DEVICES}: no NVIDIA GPU",))
        first = next((ln.strip() for ln in said.splitlines() if ln.strip()), "no output")
        raise AccelError(
            f"{found} failed (exit {result.returncode}): {first[:200]}; fix the NVIDIA driver installation, "
            f"or set {ACCEL_OVERRIDE_ENV}=accel/nvidia/ccXY to answer without it"
        )
    if len(result.stdout) > MAX_OUTPUT_BYTES:
        raise AccelError(f"{found}: more than {MAX_OUTPUT_BYTES} bytes of output; is this nvidia-smi?")
    return choose_accel(parse_nvidia_smi(out, found), found)
