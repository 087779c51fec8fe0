"""User-mode emulation of another CPU family (qemu-user through binfmt_misc).

An x86_64 machine runs aarch64 programs when the kernel's ``binfmt_misc`` hands
every aarch64 ELF file to ``qemu-aarch64-static``.  The pipeline then builds,
tests and publishes the aarch64 layers here, and says so: a plan, a build-node
verdict and a gate record name the emulator.  Native hardware stays preferred;
emulation proves that the layers are complete and correct, never how fast they are.

The entry must be registered in *fix-binary* mode (flag ``F``): the kernel opens
the interpreter when the entry is registered, so it works inside mount
namespaces, chroots and containers where ``/usr/bin/qemu-aarch64-static`` is not
visible.  Without ``F`` our namespaced builds and client mounts would fail with
"No such file or directory" on the first Arm program.

Parsing an entry and deciding are pure; :func:`host_emulators` reads the
kernel's table and asks the interpreter for its version.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildNodeError, UsageError
from ..matrix import Target
from .cpuinfo import HostCpu

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
MACHINES_DIR = Path(__file__).resolve().parent / "machines"  # an Arm machine's cpuinfo, see README there
_ENTRY_LIMIT = 64 * 1024

#: ELF ``e_machine`` of each family we can emulate (byte 18-19 of the header, little endian).
ELF_MACHINES: Mapping[str, int] = {"aarch64": 183, "ppc64le": 21, "riscv64": 243}

#: The Debian package with the static interpreters, named in every "how to get it" message.
QEMU_PACKAGE = "qemu-user-static"

_VERSION_RE = re.compile(r"qemu-(\S+) version (\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class BinfmtEntry:
    """One ``/proc/sys/fs/binfmt_misc/<name>`` file, parsed."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    magic: bytes
    mask: bytes
    offset: int = 0

    @property
    def fix_binary(self) -> bool:
        return "F" in self.flags

    def matches(self, header: bytes) -> bool:
        """Does a file starting with ``header`` go to this entry's interpreter?"""
        part = header[self.offset : self.offset + len(self.magic)]
        if len(part) < len(self.magic):
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        return all((b & m) == (g & m) for b, m, g in zip(part, mask, self.magic, strict=True))


@dataclass(frozen=True, slots=True)
class Emulator:
    """A working emulator for one CPU family: what ran, and how it is registered."""

    family: str
    interpreter: str
    version: str
    entry: str
    fix_binary: bool

    @property
    def label(self) -> str:
        """``qemu-aarch64 7.2`` — what plans, verdicts and records print."""
        major_minor = ".".join(self.version.split(".")[:2])
        return f"qemu-{self.family} {major_minor}"

    def to_json(self) -> dict[str, object]:
        return {
            "family": self.family,
            "emulator": self.label,
            "interpreter": self.interpreter,
            "version": self.version,
            "binfmt_entry": self.entry,
            "fix_binary": self.fix_binary,
        }


def parse_binfmt_entry(name: str, text: str) -> BinfmtEntry:
    """Parse the kernel's text for one entry (``enabled``, ``interpreter …``, ``flags: …``, ``magic …``)."""
    enabled = False
    interpreter = flags = ""
    magic = mask = b""
    offset = 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "enabled":
            enabled = True
        elif key == "interpreter":
            interpreter = value
        elif key == "flags:":
            flags = value
        elif key == "offset":
            offset = int(value) if value.isdigit() else 0
        elif key == "magic":
            magic = bytes.fromhex(value)
        elif key == "mask":
            mask = bytes.fromhex(value)
    return BinfmtEntry(name, enabled, interpreter, flags, magic, mask, offset)


def elf_header(machine: int) -> bytes:
    """The first 20 bytes of a 64-bit little-endian executable ELF file for ``machine``."""
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00" + machine.to_bytes(2, "little")


def entry_for(family: str, entries: list[BinfmtEntry]) -> BinfmtEntry | None:
    """The enabled entry that takes ``family``'s executables, preferring fix-binary ones."""
    machine = ELF_MACHINES.get(family)
    if machine is None:
        return None
    header = elf_header(machine)
    found = [e for e in entries if e.enabled and e.matches(header)]
    found.sort(key=lambda e: not e.fix_binary)
    return found[0] if found else None


def parse_qemu_version(text: str) -> str:
    """``7.2.22`` from ``qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)``; '' if absent."""
    m = _VERSION_RE.search(text)
    return m.group(2) if m else ""


def emulation_problem(family: str, entry: BinfmtEntry | None, binfmt_dir: Path = BINFMT_DIR) -> str:
    """Why ``family`` cannot be emulated here ('' when it can), with the fix."""
    fix = f"run `bash setup.sh` as root (it installs {QEMU_PACKAGE} and registers it in fix-binary mode)"
    if family not in ELF_MACHINES:
        return f"no emulator is known for {family}"
    if not (binfmt_dir / "register").exists():
        return f"binfmt_misc is not mounted at {binfmt_dir}; {fix}"
    if entry is None:
        return f"no binfmt_misc entry runs {family} programs; {fix}"
    if not entry.fix_binary:
        return (
            f"binfmt_misc entry {entry.name!r} lacks the fix-binary flag (F), so it fails inside mount "
            f"namespaces; {fix}"
        )
    return ""


def read_entries(binfmt_dir: Path = BINFMT_DIR) -> list[BinfmtEntry]:
    """Every entry in the kernel's table; an unreadable or unmounted table has none."""
    entries: list[BinfmtEntry] = []
    try:
        names = sorted(p for p in binfmt_dir.iterdir() if p.name not in ("register", "status"))
    except OSError:
        return entries
    for p in names:
        try:
            with p.open("rb") as f:  # kernel text of a few lines; bounded all the same
                text = f.read(_ENTRY_LIMIT).decode("ascii", "replace")
            entries.append(parse_binfmt_entry(p.name, text))
        except (OSError, ValueError):
            continue
    return entries


def probe(family: str, binfmt_dir: Path = BINFMT_DIR) -> Emulator:
    """The working emulator for ``family``, or :class:`BuildNodeError` saying why there is none."""
    entry = entry_for(family, read_entries(binfmt_dir))
    problem = emulation_problem(family, entry, binfmt_dir)
    if problem or entry is None:
        raise BuildNodeError(problem or f"no emulator for {family}")
    from .. import proc  # the thin impure edge: ask the interpreter for its version

    try:
        # Debian's entry names a wrapper (aarch64-binfmt-P) that only runs under binfmt_misc;
        # the program behind it answers --version.
        result = proc.run([os.path.realpath(entry.interpreter), "--version"], timeout=10, check=False)
    except proc.CommandFailed as e:
        raise BuildNodeError(f"the {family} emulator {entry.interpreter} does not start: {e}") from None
    version = parse_qemu_version(result.stdout)
    if not version:
        shown = result.stdout[:200]
        raise BuildNodeError(f"{entry.interpreter} --version did not name a qemu version: {shown!r}")
    return Emulator(family, entry.interpreter, version, entry.name, entry.fix_binary)


def host_emulators(host_family: str, binfmt_dir: Path = BINFMT_DIR) -> dict[str, Emulator]:
    """The other families this host can run through emulation, by family name."""
    found: dict[str, Emulator] = {}
    for family in ELF_MACHINES:
        if family == host_family:
            continue
        try:
            found[family] = probe(family, binfmt_dir)
        except BuildNodeError:
            continue
    return found


EMULATION_ENV = "EESSI_PIPELINE_EMULATION"


def emulation_enabled(environ: Mapping[str, str]) -> bool:
    """``$EESSI_PIPELINE_EMULATION``: ``auto`` (the default) or ``off``; anything else is refused."""
    value = environ.get(EMULATION_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "off"):
        raise UsageError(f"{EMULATION_ENV}={value!r} is not a choice; use auto or off")
    return value == "auto"


def emulators_for(
    host: HostCpu, target: Target, environ: Mapping[str, str] | None = None
) -> dict[str, Emulator]:
    """:func:`host_emulators` when ``target`` is of another family than ``host`` and emulation is on."""
    if host.family == target.family or not emulation_enabled(os.environ if environ is None else environ):
        return {}
    return host_emulators(host.family)


def machine_cpuinfo(family: str) -> Path:
    """The ``/proc/cpuinfo`` text an emulated session of ``family`` presents (qemu-user shows the host's)."""
    path = MACHINES_DIR / f"{family}.cpuinfo"
    if not path.is_file():
        raise BuildNodeError(f"no machine description for an emulated {family} session ({path} is missing)")
    return path
