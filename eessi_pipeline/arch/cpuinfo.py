"""Describe a CPU from ``/proc/cpuinfo`` or ``lscpu`` text.

Parsing is a pure function of the text (:func:`parse_cpuinfo`); only
:func:`read_host_cpu` touches the filesystem and the environment.  Both
``/proc/cpuinfo`` (``key : value`` blocks, one per processor) and ``lscpu``
output (``Key: value``) are accepted, as EESSI's archdetect accepts both.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import archspec.cpu

from ..errors import DetectionError

#: Environment variable naming a cpuinfo/lscpu file to read instead of /proc/cpuinfo (EESSI's name).
CPUINFO_ENV = "EESSI_PROC_CPUINFO"
#: Environment variable naming the CPU family when the text does not say (EESSI's name).
MACHINE_ENV = "EESSI_MACHINE_TYPE"
FAMILIES = ("x86_64", "aarch64", "ppc64le", "riscv64")
#: Environment variable raising the size limit of cpuinfo/lscpu text (real ones are well under 1 MiB).
MAX_BYTES_ENV = "EESSI_PIPELINE_CPUINFO_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 20
# Vendor ids of families the stack does not support, so they are named rather than guessed at.
_OTHER_VENDORS = {"IBM/S390": "s390x"}

_LINE = re.compile(r"^\s*([^:\n]*?[^:\s])\s*:\s*(.*?)\s*$")
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}


@dataclass(frozen=True, slots=True)
class HostCpu:
    """What detection knows about a CPU: family, vendor and instruction-set flags."""

    family: str
    vendor: str
    features: frozenset[str]
    model_name: str = ""
    source: str = "/proc/cpuinfo"
    text_format: str = "cpuinfo"


def _arm_vendor_names() -> dict[str, str]:
    table: Mapping[str, str] = archspec.cpu.schema.TARGETS_JSON["conversions"]["arm_vendors"]
    return dict(table)


def _canonical_arm_vendor(value: str) -> str:
    """``0x41`` or ``ARM`` -> ``ARM``; unknown implementer codes are kept as written."""
    table = _arm_vendor_names()
    v = value.strip()
    if v.lower() in table:
        return table[v.lower()]
    by_name = {name.lower(): name for name in table.values()}
    return by_name.get(v.lower(), v)


def _normalise_features(family: str, flags: frozenset[str]) -> frozenset[str]:
    # Linux lists "pni" rather than "sse3"; ssse3 implies sse3 (archspec's own rule).
    if family == "x86_64" and ("ssse3" in flags or "pni" in flags):
        return flags | {"sse3"}
    return flags


def _blocks(text: str) -> list[dict[str, str]]:
    """Split into blocks of ``{lower-case key: value}``; a blank line or a repeated key starts a block."""
    blocks: list[dict[str, str]] = [{}]
    for raw in text.splitlines():
        if not raw.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        m = _LINE.match(raw)
        if not m:
            continue
        key = " ".join(m.group(1).lower().replace("_", " ").split())
        if key in blocks[-1]:
            # A repeated key starts the next processor: cpuinfo without blank lines, or
            # lscpu listing one "Model name:"/"Flags:" section per core type.
            blocks.append({})
        blocks[-1][key] = m.group(2)
    return [b for b in blocks if b]


def _guess_family(blocks: list[dict[str, str]]) -> str | None:
    for b in blocks:
        arch = b.get("architecture", "")
        if arch and not arch.isdigit():  # lscpu's "Architecture:" (cpuinfo's is "CPU architecture")
            return _MACHINE_ALIASES.get(arch, arch)
    for b in blocks:
        vendor = b.get("vendor id", "").strip()
        if vendor in _OTHER_VENDORS:
            return _OTHER_VENDORS[vendor]
        if "vendor id" in b and "flags" in b:
            return "x86_64"
        if "cpu implementer" in b or ("features" in b and "cpu architecture" in b and "flags" not in b):
            return "aarch64"
        if b.get("cpu", "").upper().startswith("POWER"):
            return "ppc64le"
        if b.get("isa", "").startswith("rv64"):
            return "riscv64"
    return None


def parse_cpuinfo(text: str, source: str = "<text>", machine: str | None = None) -> HostCpu:
    """Describe the CPU in ``text``.

    ``machine`` (``uname -m``) wins over what the text suggests.  When the text
    lists several processors, only flags that *every* processor has are kept,
    so a target is never chosen that one core cannot run.
    """
    blocks = _blocks(text)
    lscpu = any(k == "architecture" and not v.isdigit() for b in blocks for k, v in b.items())
    fmt = "lscpu" if lscpu else "cpuinfo"
    family = _MACHINE_ALIASES.get(machine, machine) if machine else _guess_family(blocks)
    if family is None:
        raise DetectionError(
            f"{source}: cannot tell the CPU family (no 'vendor_id'/'flags', 'CPU implementer'/'Features', "
            f"'cpu : POWER…' or 'isa : rv64…' lines); pass /proc/cpuinfo or `lscpu` output, or set "
            f"{MACHINE_ENV} to one of {', '.join(FAMILIES)}"
        )
    if family not in FAMILIES:
        raise DetectionError(
            f"{source}: CPU family {family!r} is not supported; supported: {', '.join(FAMILIES)}"
        )

    feature_keys = {"x86_64": ("flags",), "aarch64": ("features", "flags")}.get(family, ())
    feature_sets = []
    vendor = ""
    model = ""
    for b in blocks:
        for key in feature_keys:
            if key in b:
                feature_sets.append(frozenset(b[key].split()))
                break
        for key in ("vendor id", "cpu implementer", "mvendorid"):
            if key in b:
                vendor = b[key]  # the last one wins, as in EESSI's archdetect
                break
        model = b.get("model name", b.get("cpu", model)) or model
    if family in ("x86_64", "aarch64") and not feature_sets:
        raise DetectionError(
            f"{source}: no CPU flags found (expected a 'flags' line for x86_64 or a 'Features' line for "
            "aarch64); pass the full /proc/cpuinfo or `lscpu` output"
        )
    features = frozenset.intersection(*feature_sets) if feature_sets else frozenset()
    if family == "aarch64":
        vendor = _canonical_arm_vendor(vendor) if vendor else "ARM"
    elif family == "x86_64" and not vendor:
        raise DetectionError(f"{source}: no 'vendor_id' (or lscpu 'Vendor ID') line; pass the full output")
    return HostCpu(
        family=family,
        vendor=vendor or "generic",
        features=_normalise_features(family, features),
        model_name=model,
        source=source,
        text_format=fmt,
    )


def read_host_cpu(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> HostCpu:
    """Read the host CPU from ``path``, else ``$EESSI_PROC_CPUINFO``, else ``/proc/cpuinfo``.

    The family comes from ``$EESSI_MACHINE_TYPE`` when set; for the real
    ``/proc/cpuinfo`` from ``uname -m``; for any other file from its contents.
    """
    env = os.environ if environ is None else environ
    chosen = str(path) if path else env.get(CPUINFO_ENV) or "/proc/cpuinfo"
    machine = env.get(MACHINE_ENV) or (platform.machine() if chosen == "/proc/cpuinfo" else None)
    via = "" if path else (f" (from {CPUINFO_ENV})" if env.get(CPUINFO_ENV) else "")
    limit_text = env.get(MAX_BYTES_ENV, "")
    limit = int(limit_text) if limit_text.strip().isdigit() and int(limit_text) > 0 else DEFAULT_MAX_BYTES
    try:
        with Path(chosen).open("rb") as fh:
            raw = fh.read(limit + 1)  # never more: /dev/zero is refused at once
    except OSError as e:
        raise DetectionError(f"{chosen}{via}: cannot read ({e.strerror}); pass an existing file") from e
    if len(raw) > limit:
        raise DetectionError(
            f"{chosen}{via}: more than {limit} bytes, not /proc/cpuinfo or `lscpu` output (those are well "
            f"under 1 MiB); pass the right file, or raise ${MAX_BYTES_ENV}"
        )
    return parse_cpuinfo(raw.decode("utf-8", errors="replace"), source=chosen, machine=machine)
