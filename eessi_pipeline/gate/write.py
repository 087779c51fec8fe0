"""Write, sign and (optionally) stage the gate record of one tarball.

One code path for ``eessi-pipeline gate record``, for the pytest plugin
(:mod:`eessi_pipeline.gate.pytest_gate`) and for ``eessi-pipeline test``: the tarball is checked
first (a tarball the repository would refuse gets no record), the record is written as canonical
JSON next to the tarball, signed with ``ssh-keygen -Y sign`` and, when asked, staged as ``new``.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import inputs
from ..arch.cpuinfo import read_host_cpu
from ..arch.emulation import probe
from ..arch.select import select_target
from ..errors import BuildNodeError, GateRefused
from ..matrix import load_matrix
from . import signing
from .admit import admit
from .policy import Policy
from .publish import facts_of
from .record import RECORD_SUFFIX, CaseResult, GateRecord, ReframeSummary, make_record, summarise_reframe

RECORDS_FILE = "gate-records.json"  # in a pytest run dir: the records that session wrote


@dataclass(frozen=True, slots=True)
class WrittenRecord:
    record: GateRecord
    path: Path
    signature: Path
    staged: bool
    state: str = ""  # the staging state after this run (new, or ingested when it was already published)


def read_reframe_summary(path: Path) -> ReframeSummary:
    raw = inputs.read_bytes(path, "ReFrame report", "pass the file ReFrame wrote with --report-file")
    try:
        return summarise_reframe(json.loads(raw), raw)
    except ValueError as e:
        raise GateRefused(f"{path}: cannot read the ReFrame report ({e}); give ReFrame's report") from e


def target_from_roots(content_type: str, roots: tuple[str, ...]) -> str:
    """The subdir (software) or family (compat) a tarball installs, from its content roots."""
    if roots and content_type in ("software", "compat"):
        parts = roots[0].split("/", 3)
        return parts[3] if len(parts) == 4 else ""
    return ""


def emulator_of(host_family: str, content_type: str, subdir: str) -> str:
    """The emulator the tests ran under ('' when native): the tested family is not this host's."""
    family = subdir.split("/", 1)[0] if content_type in ("software", "compat") else ""
    if not family or family == host_family:
        return ""
    try:
        return probe(family).label
    except BuildNodeError as e:
        raise GateRefused(f"the tests of {subdir} cannot have run on this {host_family} host: {e}") from None


def write_record(
    tarball: Path,
    tests: tuple[CaseResult, ...],
    *,
    state_dir: Path,
    repository: str,
    policy: Policy,
    reframe_report: Path | None = None,
    target: str | None = None,
    key: Path | None = None,
    stage: bool = False,
) -> WrittenRecord:
    facts = facts_of(tarball, repository)  # refuses a tarball the repository would not take
    reframe = read_reframe_summary(reframe_report) if reframe_report else None
    matrix = load_matrix(None)
    subdir = target or facts.named_target or target_from_roots(facts.content_type, facts.content_roots)
    names = [t.name for t in matrix.targets if t.subdir == subdir]
    names = names or [at.name for at in matrix.every_accel_target() if at.subdir == subdir]  # GPU targets
    host_cpu = read_host_cpu(None)
    host = select_target(host_cpu, matrix).subdir
    digests = {"matrix": matrix.sha256, "policy": policy.sha256}
    emulator = emulator_of(host_cpu.family, facts.content_type, subdir)
    record = make_record(tarball, facts.content_type, subdir, host, tests, reframe, digests,
                         target_name=names[0] if names else "", emulator=emulator)  # fmt: skip
    path = Path(f"{tarball}{RECORD_SUFFIX}")
    path.write_bytes(record.canonical())
    if key is None:  # the embedded default: this machine's own build-node key, trusted locally
        key = state_dir / "keys" / "build-node"
        identity = f"{getpass.getuser()}@{socket.gethostname()}"
        allowed = policy.allowed_signers_path(state_dir)
        signing.ensure_signing_key(key, identity, allowed, policy.signature_namespace)
    sig = signing.sign(key, path, policy.signature_namespace)
    state = admit(tarball, path, sig, state_dir=state_dir, policy=policy).state if stage else ""
    return WrittenRecord(record, path, sig, stage, state)
