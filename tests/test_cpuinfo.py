"""Tests of /proc/cpuinfo and lscpu parsing (eessi_pipeline/arch/cpuinfo.py).

Small realistic samples are written inline; the EESSI archdetect conformance dumps
(``tests/data/archdetect``) are parsed too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import archdetect_cases, archdetect_dir

from eessi_pipeline.arch.cpuinfo import CPUINFO_ENV, MACHINE_ENV, parse_cpuinfo, read_host_cpu
from eessi_pipeline.errors import DetectionError

# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------

ZEN3_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
    "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl cpuid extd_apicid pni "
    "pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm "
    "abm sse4a misalignsse 3dnowprefetch topoext fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx "
    "smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero rdpid vaes vpclmulqdq fsrm"
)

X86_CPUINFO = f"""\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
stepping\t: 1
cpu MHz\t\t: 2445.432
cache size\t: 512 KB
fpu\t\t: yes
flags\t\t: {ZEN3_FLAGS}
bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso
bogomips\t: 4890.86
power management:

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
stepping\t: 1
flags\t\t: {ZEN3_FLAGS}
bogomips\t: 4890.86
power management:
"""

# Alder-Lake-like: the first (performance) core lists avx512f and a made-up pcore_only flag,
# the second (efficiency) core lacks both and lists ecore_only; only the common flags may remain.
HYBRID_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: 12th Gen Intel(R) Core(TM) i9-12900K
flags\t\t: fpu sse sse2 pni ssse3 avx avx2 avx512f pcore_only

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: 12th Gen Intel(R) Core(TM) i9-12900K
flags\t\t: fpu sse sse2 pni ssse3 avx avx2 ecore_only
"""

X86_LSCPU = f"""\
Architecture:                       x86_64
CPU op-mode(s):                     32-bit, 64-bit
Address sizes:                      48 bits physical, 48 bits virtual
Byte Order:                         Little Endian
CPU(s):                             2
On-line CPU(s) list:                0,1
Vendor ID:                          AuthenticAMD
Model name:                         AMD EPYC 7763 64-Core Processor
CPU family:                         25
Model:                              1
Thread(s) per core:                 2
Stepping:                           1
BogoMIPS:                           4890.86
Flags:                              {ZEN3_FLAGS}
Hypervisor vendor:                  Microsoft
Virtualization type:                full
L1d cache:                          32 KiB (1 instance)
NUMA node0 CPU(s):                  0,1
Vulnerability Spectre v2:           Mitigation; Retpolines, IBPB conditional, STIBP disabled
"""

NEOVERSE_N1_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
)

AARCH64_LSCPU = f"""\
Architecture:                    aarch64
CPU op-mode(s):                  32-bit, 64-bit
Byte Order:                      Little Endian
CPU(s):                          64
On-line CPU(s) list:             0-63
Vendor ID:                       ARM
Model:                           1
Model name:                      Neoverse-N1
Stepping:                        r3p1
BogoMIPS:                        243.75
Flags:                           {NEOVERSE_N1_FEATURES}
"""


def _aarch64_cpuinfo(implementer: str = "0x41", features: str = NEOVERSE_N1_FEATURES, cpus: int = 2) -> str:
    block = (
        "processor\t: {n}\n"
        "BogoMIPS\t: 243.75\n"
        f"Features\t: {features}\n"
        f"CPU implementer\t: {implementer}\n"
        "CPU architecture: 8\n"
        "CPU variant\t: 0x3\n"
        "CPU part\t: 0xd0c\n"
        "CPU revision\t: 1\n"
    )
    return "\n".join(block.format(n=n) for n in range(cpus))


PPC64LE_CPUINFO = """\
processor\t: 0
cpu\t\t: POWER9 (raw), altivec supported
clock\t\t: 3800.000000MHz
revision\t: 2.3 (pvr 004e 1203)

processor\t: 1
cpu\t\t: POWER9 (raw), altivec supported
clock\t\t: 3800.000000MHz
revision\t: 2.3 (pvr 004e 1203)

timebase\t: 512000000
platform\t: PowerNV
model\t\t: 9006-22P
machine\t\t: PowerNV 9006-22P
firmware\t: OPAL
MMU\t\t: Radix
"""

RISCV64_CPUINFO = """\
processor\t: 0
hart\t\t: 1
isa\t\t: rv64imafdc
mmu\t\t: sv39
uarch\t\t: sifive,u74-mc
mvendorid\t: 0x489
marchid\t\t: 0x8000000000000007
mimpid\t\t: 0x4210427

processor\t: 1
hart\t\t: 2
isa\t\t: rv64imafdc
mmu\t\t: sv39
uarch\t\t: sifive,u74-mc
mvendorid\t: 0x489
marchid\t\t: 0x8000000000000007
mimpid\t\t: 0x4210427
"""


# --------------------------------------------------------------------------------------------
# parse_cpuinfo: families, vendors, formats
# --------------------------------------------------------------------------------------------


def test_parse_cpuinfo_x86_proc_cpuinfo_gives_family_vendor_flags() -> None:
    cpu = parse_cpuinfo(X86_CPUINFO, source="zen3.cpuinfo")
    assert cpu.family == "x86_64"
    assert cpu.vendor == "AuthenticAMD"
    assert cpu.model_name == "AMD EPYC 7763 64-Core Processor"
    assert cpu.source == "zen3.cpuinfo"
    assert cpu.text_format == "cpuinfo"
    assert {"avx2", "fma", "sha_ni", "vaes", "pni"} <= cpu.features
    assert "spectre_v1" not in cpu.features  # the "bugs" line is not a flag list


def test_parse_cpuinfo_x86_lscpu_gives_family_vendor_flags() -> None:
    cpu = parse_cpuinfo(X86_LSCPU)
    assert cpu.family == "x86_64"
    assert cpu.vendor == "AuthenticAMD"
    assert cpu.model_name == "AMD EPYC 7763 64-Core Processor"
    assert cpu.text_format == "lscpu"
    assert cpu.features == parse_cpuinfo(X86_CPUINFO).features


def test_parse_cpuinfo_aarch64_lscpu_gives_vendor_and_flags() -> None:
    cpu = parse_cpuinfo(AARCH64_LSCPU)
    assert cpu.family == "aarch64"
    assert cpu.vendor == "ARM"
    assert cpu.model_name == "Neoverse-N1"
    assert cpu.text_format == "lscpu"
    assert cpu.features == frozenset(NEOVERSE_N1_FEATURES.split())


def test_parse_cpuinfo_aarch64_proc_cpuinfo_reads_features_line() -> None:
    cpu = parse_cpuinfo(_aarch64_cpuinfo())
    assert cpu.family == "aarch64"
    assert cpu.features == frozenset(NEOVERSE_N1_FEATURES.split())
    # "CPU architecture: 8" is cpuinfo's, not lscpu's "Architecture:".
    assert cpu.text_format == "cpuinfo"


@pytest.mark.parametrize(
    ("implementer", "vendor"),
    [("0x41", "ARM"), ("0x46", "Fujitsu"), ("0x4e", "Nvidia"), ("0xc0", "Ampere"), ("0x99", "0x99")],
    ids=["0x41-ARM", "0x46-Fujitsu", "0x4e-Nvidia", "0xc0-Ampere", "0x99-unknown-kept"],
)
def test_parse_cpuinfo_aarch64_implementer_maps_to_vendor(implementer: str, vendor: str) -> None:
    assert parse_cpuinfo(_aarch64_cpuinfo(implementer)).vendor == vendor


def test_parse_cpuinfo_aarch64_without_implementer_defaults_to_arm() -> None:
    text = f"processor\t: 0\nFeatures\t: {NEOVERSE_N1_FEATURES}\nCPU architecture: 8\n"
    cpu = parse_cpuinfo(text)
    assert (cpu.family, cpu.vendor) == ("aarch64", "ARM")


def test_parse_cpuinfo_ppc64le_power_line_gives_ppc64le_without_features() -> None:
    cpu = parse_cpuinfo(PPC64LE_CPUINFO, source="power9.cpuinfo")
    assert cpu.family == "ppc64le"
    assert cpu.model_name == "POWER9 (raw), altivec supported"
    assert cpu.vendor == "generic"
    assert cpu.text_format == "cpuinfo"


def test_parse_cpuinfo_riscv64_isa_line_gives_riscv64_without_features() -> None:
    cpu = parse_cpuinfo(RISCV64_CPUINFO, source="u74.cpuinfo")
    assert cpu.family == "riscv64"
    assert cpu.vendor == "0x489"
    assert cpu.text_format == "cpuinfo"


# --------------------------------------------------------------------------------------------
# parse_cpuinfo: flags, vendors over several processors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "has_sse3"),
    [
        ("fpu sse sse2 pni", True),
        ("fpu sse sse2 ssse3", True),
        ("fpu sse sse2 sse3", True),
        ("fpu sse sse2", False),
    ],
    ids=["pni", "ssse3", "sse3-listed", "neither"],
)
def test_parse_cpuinfo_x86_pni_or_ssse3_adds_sse3(flags: str, has_sse3: bool) -> None:
    text = f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n"
    features = parse_cpuinfo(text).features
    assert ("sse3" in features) is has_sse3
    assert frozenset(flags.split()) <= features


def test_parse_cpuinfo_aarch64_pni_flag_does_not_add_sse3() -> None:
    cpu = parse_cpuinfo(_aarch64_cpuinfo(features="fp asimd pni ssse3"))
    assert "sse3" not in cpu.features


def test_parse_cpuinfo_several_processors_keeps_flags_all_have() -> None:
    cpu = parse_cpuinfo(HYBRID_CPUINFO)
    assert cpu.features == frozenset({"fpu", "sse", "sse2", "pni", "ssse3", "sse3", "avx", "avx2"})


def test_parse_cpuinfo_processor_blocks_without_blank_lines_still_split() -> None:
    text = HYBRID_CPUINFO.replace("\n\n", "\n")
    features = parse_cpuinfo(text).features
    assert "avx512f" not in features
    assert "ecore_only" not in features
    assert "avx2" in features


def test_parse_cpuinfo_aarch64_several_cores_keeps_common_features() -> None:
    little = _aarch64_cpuinfo(features="fp asimd aes crc32 atomics", cpus=1)
    big = _aarch64_cpuinfo(features="fp asimd aes crc32 atomics asimddp sve", cpus=1)
    cpu = parse_cpuinfo(little + "\n" + big.replace("processor\t: 0", "processor\t: 1"))
    assert cpu.features == frozenset({"fp", "asimd", "aes", "crc32", "atomics"})


def test_parse_cpuinfo_x86_several_vendors_last_wins() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse\n"
    )
    assert parse_cpuinfo(text).vendor == "AuthenticAMD"


def test_parse_cpuinfo_aarch64_several_implementers_last_wins() -> None:
    first = _aarch64_cpuinfo("0x41", cpus=1)
    second = _aarch64_cpuinfo("0x46", cpus=1).replace("processor\t: 0", "processor\t: 1")
    assert parse_cpuinfo(first + "\n" + second).vendor == "Fujitsu"


@pytest.mark.parametrize(
    ("text", "text_format"),
    [
        (X86_LSCPU, "lscpu"),
        (AARCH64_LSCPU, "lscpu"),
        (X86_CPUINFO, "cpuinfo"),
        (_aarch64_cpuinfo(), "cpuinfo"),
        (PPC64LE_CPUINFO, "cpuinfo"),
    ],
    ids=["x86_64-lscpu", "aarch64-lscpu", "x86_64-cpuinfo", "aarch64-cpuinfo", "ppc64le-cpuinfo"],
)
def test_parse_cpuinfo_text_format_names_input_kind(text: str, text_format: str) -> None:
    assert parse_cpuinfo(text).text_format == text_format


# --------------------------------------------------------------------------------------------
# parse_cpuinfo: machine
# --------------------------------------------------------------------------------------------


def test_parse_cpuinfo_machine_argument_wins_over_text() -> None:
    # The POWER text alone says ppc64le; the machine says riscv64.
    assert parse_cpuinfo(PPC64LE_CPUINFO).family == "ppc64le"
    assert parse_cpuinfo(PPC64LE_CPUINFO, machine="riscv64").family == "riscv64"


def test_parse_cpuinfo_machine_argument_wins_over_lscpu_architecture() -> None:
    cpu = parse_cpuinfo(X86_LSCPU, machine="aarch64")
    assert cpu.family == "aarch64"


def test_parse_cpuinfo_machine_supplies_family_text_lacks() -> None:
    text = "processor\t: 0\nmodel name\t: Mystery CPU\n"
    with pytest.raises(DetectionError):
        parse_cpuinfo(text)
    assert parse_cpuinfo(text, machine="riscv64").family == "riscv64"


@pytest.mark.parametrize(
    ("machine", "text", "family"),
    [
        ("amd64", X86_CPUINFO, "x86_64"),
        ("arm64", _aarch64_cpuinfo(), "aarch64"),
        ("ppc64el", PPC64LE_CPUINFO, "ppc64le"),
    ],
    ids=["amd64", "arm64", "ppc64el"],
)
def test_parse_cpuinfo_machine_alias_maps_to_family(machine: str, text: str, family: str) -> None:
    assert parse_cpuinfo(text, machine=machine).family == family


@pytest.mark.parametrize(
    ("text", "family"),
    [
        (
            "Architecture:        amd64\nVendor ID:           AuthenticAMD\nFlags:               fpu sse\n",
            "x86_64",
        ),
        ("Architecture:        arm64\nVendor ID:           ARM\nFlags:               fp asimd\n", "aarch64"),
    ],
    ids=["amd64", "arm64"],
)
def test_parse_cpuinfo_lscpu_architecture_alias_maps_to_family(text: str, family: str) -> None:
    assert parse_cpuinfo(text).family == family


# --------------------------------------------------------------------------------------------
# parse_cpuinfo: errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "machine", "expected"),
    [
        ("", None, ("cannot tell the CPU family", "pass /proc/cpuinfo or `lscpu` output", MACHINE_ENV)),
        (
            "Hello: world\nSomething else: entirely\n",
            None,
            ("cannot tell the CPU family", "pass /proc/cpuinfo or `lscpu` output", MACHINE_ENV),
        ),
        (X86_CPUINFO, "s390x", ("'s390x' is not supported", "x86_64, aarch64, ppc64le, riscv64")),
        (
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n",
            "x86_64",
            ("no CPU flags found", "'flags'", "pass the full"),
        ),
        (
            "Architecture:   x86_64\nVendor ID:      GenuineIntel\nModel name:     Xeon\n",
            None,
            ("no CPU flags found", "pass the full"),
        ),
        ("processor\t: 0\nCPU architecture: 8\n", "aarch64", ("no CPU flags found", "'Features'")),
        (
            "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse sse2\n",
            "x86_64",
            ("no 'vendor_id'", "pass the full output"),
        ),
        (
            "Architecture:   x86_64\nModel name:     Xeon\nFlags:          fpu sse sse2\n",
            None,
            ("no 'vendor_id' (or lscpu 'Vendor ID')", "pass the full output"),
        ),
    ],
    ids=[
        "empty",
        "no-family-clue",
        "s390x-machine",
        "x86-cpuinfo-no-flags",
        "x86-lscpu-no-flags",
        "aarch64-no-features",
        "x86-cpuinfo-no-vendor",
        "x86-lscpu-no-vendor",
    ],
)
def test_parse_cpuinfo_bad_input_raises_detection_error_naming_source(
    text: str, machine: str | None, expected: tuple[str, ...]
) -> None:
    with pytest.raises(DetectionError) as excinfo:
        parse_cpuinfo(text, source="/some/host.cpuinfo", machine=machine)
    msg = str(excinfo.value)
    assert msg.startswith("/some/host.cpuinfo: ")
    for fragment in expected:
        assert fragment in msg


# --------------------------------------------------------------------------------------------
# read_host_cpu
# --------------------------------------------------------------------------------------------


@pytest.fixture
def x86_file(tmp_path: Path) -> Path:
    path = tmp_path / "x86.cpuinfo"
    path.write_text(X86_CPUINFO, encoding="utf-8")
    return path


@pytest.fixture
def aarch64_file(tmp_path: Path) -> Path:
    path = tmp_path / "aarch64.cpuinfo"
    path.write_text(_aarch64_cpuinfo(), encoding="utf-8")
    return path


def test_read_host_cpu_explicit_path_beats_env_var(x86_file: Path, aarch64_file: Path) -> None:
    cpu = read_host_cpu(x86_file, environ={CPUINFO_ENV: str(aarch64_file)})
    assert cpu.family == "x86_64"
    assert cpu.source == str(x86_file)


def test_read_host_cpu_no_path_uses_env_var(aarch64_file: Path) -> None:
    cpu = read_host_cpu(environ={CPUINFO_ENV: str(aarch64_file)})
    assert cpu.family == "aarch64"
    assert cpu.vendor == "ARM"
    assert cpu.source == str(aarch64_file)


def test_read_host_cpu_string_path_accepted(x86_file: Path) -> None:
    assert read_host_cpu(str(x86_file), environ={}).vendor == "AuthenticAMD"


def test_read_host_cpu_machine_env_var_honoured(tmp_path: Path) -> None:
    path = tmp_path / "mystery.cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Mystery CPU\n", encoding="utf-8")
    with pytest.raises(DetectionError):
        read_host_cpu(path, environ={})
    cpu = read_host_cpu(path, environ={MACHINE_ENV: "riscv64"})
    assert cpu.family == "riscv64"


def test_read_host_cpu_machine_env_var_wins_over_text(aarch64_file: Path) -> None:
    cpu = read_host_cpu(environ={CPUINFO_ENV: str(aarch64_file), MACHINE_ENV: "ppc64le"})
    assert cpu.family == "ppc64le"


def test_read_host_cpu_missing_explicit_path_raises_naming_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cpuinfo"
    with pytest.raises(DetectionError) as excinfo:
        read_host_cpu(missing, environ={CPUINFO_ENV: str(tmp_path / "other.cpuinfo")})
    msg = str(excinfo.value)
    assert msg.startswith(f"{missing}: cannot read")
    assert "pass an existing file" in msg
    assert CPUINFO_ENV not in msg


def test_read_host_cpu_missing_env_file_raises_naming_file_and_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "from-env.cpuinfo"
    with pytest.raises(DetectionError) as excinfo:
        read_host_cpu(environ={CPUINFO_ENV: str(missing)})
    msg = str(excinfo.value)
    assert msg.startswith(f"{missing} (from {CPUINFO_ENV}): cannot read")
    assert "pass an existing file" in msg


def test_read_host_cpu_directory_path_raises_detection_error(tmp_path: Path) -> None:
    with pytest.raises(DetectionError, match="cannot read"):
        read_host_cpu(tmp_path, environ={})


# --------------------------------------------------------------------------------------------
# EESSI archdetect conformance dumps
# --------------------------------------------------------------------------------------------

ARCHDETECT = archdetect_dir()
_FIXTURES = archdetect_cases()
_VENDOR_DIRS = {"amd": "AuthenticAMD", "intel": "GenuineIntel"}


def test_archdetect_fixture_dir_present_has_cpuinfo_files() -> None:
    families = {f.relative_to(ARCHDETECT).parts[0] for f in _FIXTURES}
    assert {"x86_64", "aarch64", "ppc64le", "riscv64"} <= families


@pytest.mark.parametrize(
    "fixture",
    _FIXTURES,
    ids=[str(f.relative_to(ARCHDETECT)) for f in _FIXTURES],
)
def test_parse_cpuinfo_archdetect_dump_family_matches_directory(fixture: Path) -> None:
    parts = fixture.relative_to(ARCHDETECT).parts
    cpu = parse_cpuinfo(fixture.read_text(encoding="utf-8", errors="replace"), source=str(fixture))
    assert cpu.family == parts[0]
    assert cpu.source == str(fixture)
    if cpu.family in ("x86_64", "aarch64"):
        assert cpu.features, "x86_64 and aarch64 dumps list CPU flags"
    if cpu.family == "x86_64" and parts[1] in _VENDOR_DIRS:
        assert cpu.vendor == _VENDOR_DIRS[parts[1]]
    if cpu.family == "x86_64":
        assert "sse3" in cpu.features  # every x86_64 dump has pni


HYBRID_LSCPU = """\
Architecture:            aarch64
  CPU op-mode(s):        32-bit, 64-bit
  Byte Order:            Little Endian
CPU(s):                  8
  On-line CPU(s) list:   0-7
Vendor ID:               ARM
  Model name:            Cortex-A55
    Model:               0
    Thread(s) per core:  1
    Flags:               fp asimd evtstrm aes crc32 atomics
  Model name:            Cortex-A76
    Model:               1
    Thread(s) per core:  1
    Flags:               fp asimd evtstrm aes crc32 atomics asimddp lrcpc
"""


def test_parse_cpuinfo_lscpu_several_core_types_keeps_common_flags() -> None:
    cpu = parse_cpuinfo(HYBRID_LSCPU)
    assert cpu.features == frozenset({"fp", "asimd", "evtstrm", "aes", "crc32", "atomics"})


def test_parse_cpuinfo_lscpu_unsupported_architecture_names_it() -> None:
    with pytest.raises(DetectionError, match="'s390x' is not supported"):
        parse_cpuinfo("Architecture:  s390x\nVendor ID:  IBM/S390\n", "lscpu.txt")
