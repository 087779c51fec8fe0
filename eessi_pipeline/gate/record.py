"""Gate records: what a test run proves about one tarball, as canonical JSON."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..checks.report import parse_case
from ..errors import GateRefused

RECORD_SUFFIX = ".gate.json"
OUTCOMES = ("passed", "failed", "skipped", "error")


@dataclass(frozen=True, slots=True)
class CaseResult:
    id: str  # pytest node id (classname::name as JUnit writes it)
    outcome: str  # passed | failed | skipped | error


@dataclass(frozen=True, slots=True)
class PerfVerdict:
    check: str
    metric: str
    value: float
    reference: float | None
    lower: float | None
    upper: float | None
    unit: str
    ok: bool


@dataclass(frozen=True, slots=True)
class CaseJob:
    """Where a ReFrame case ran as a scheduler job (issue 20: checks submitted through Slurm)."""

    case: str
    system: str  # system:partition of the ReFrame configuration
    scheduler: str  # slurm, squeue, ...
    job_id: str
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReframeSummary:
    sha256: str
    cases: int
    failures: int
    performance: tuple[PerfVerdict, ...] = ()
    jobs: tuple[CaseJob, ...] = ()  # the cases that ran as batch jobs (none for the local partition)


@dataclass(frozen=True, slots=True)
class GateRecord:
    tarball: str
    sha256: str
    size: int
    content_type: str
    target: str  # software subdir (x86_64/amd/zen3) or compat family, "" when not applicable
    host_cpu: str
    digests: dict[str, str]
    tests: tuple[CaseResult, ...]
    reframe: ReframeSummary | None
    tools: dict[str, str]
    created: str  # ISO 8601 UTC
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    target_name: str = ""  # the matrix name of ``target`` (zen3), what test ids are parametrised by
    # the tests ran under user-mode emulation of the target's CPU family (qemu-user through binfmt_misc):
    # they prove function, not performance; the policy decides what such a record may publish
    emulated: bool = False
    emulator: str = ""  # e.g. "qemu-aarch64 7.2" when emulated

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def canonical(self) -> bytes:
        return (json.dumps(self.to_json(), sort_keys=True, indent=1) + "\n").encode()

    @property
    def created_at(self) -> dt.datetime:
        return parse_created(self.created, self.tarball)


def parse_created(value: object, where: str) -> dt.datetime:
    """The record's ``created`` time: ISO 8601 with a UTC offset; anything else is refused."""
    if not isinstance(value, str):
        raise GateRefused(f"{where}: 'created' is {type(value).__name__}, not an ISO 8601 time; write the "
                          "record with `eessi-pipeline gate record`")  # fmt: skip
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise GateRefused(f"{where}: 'created' {value[:40]!r} is not an ISO 8601 time; write the record "
                          "with `eessi-pipeline gate record`") from e  # fmt: skip
    if when.tzinfo is None or when.utcoffset() is None:
        raise GateRefused(f"{where}: 'created' {value[:40]!r} has no UTC offset (a naive time cannot be "
                          "compared); write the record with `eessi-pipeline gate record`")  # fmt: skip
    return when


_HEX64 = frozenset("0123456789abcdef")


def _check_shape(data: object, where: str) -> dict[str, Any]:
    """Refuse a record whose fields have the wrong types before any field is used."""
    if not isinstance(data, dict):
        raise GateRefused(f"{where}: not a valid gate record (a JSON {type(data).__name__}, not an object); "
                          "write it with `eessi-pipeline gate record`")  # fmt: skip
    wanted: dict[str, type] = {"tarball": str, "sha256": str, "size": int, "content_type": str,
                               "tests": list, "created": str}  # fmt: skip
    for key, kind in wanted.items():
        if key not in data:
            raise GateRefused(f"{where}: not a valid gate record (no {key!r}); write it with "
                              "`eessi-pipeline gate record`")  # fmt: skip
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise GateRefused(f"{where}: not a valid gate record ({key!r} is {type(data[key]).__name__}); "
                              "write it with `eessi-pipeline gate record`")  # fmt: skip
    sha = data["sha256"]
    if len(sha) != 64 or not set(sha) <= _HEX64:
        raise GateRefused(f"{where}: 'sha256' is not 64 lower-case hex digits")
    for t in data["tests"]:
        if not isinstance(t, dict) or t.get("outcome") not in OUTCOMES or not isinstance(t.get("id"), str):
            raise GateRefused(f"{where}: a test entry is not {{'id': str, 'outcome': one of "
                              f"{', '.join(OUTCOMES)}}}: {str(t)[:80]}")  # fmt: skip
    for key in ("digests", "tools", "extra"):
        if not isinstance(data.get(key, {}), dict):
            raise GateRefused(f"{where}: not a valid gate record ({key!r} is not an object)")
    if not isinstance(data.get("emulated", False), bool) or not isinstance(data.get("emulator", ""), str):
        raise GateRefused(f"{where}: not a valid gate record ('emulated' is not true/false or 'emulator' "
                          "not a string)")  # fmt: skip
    if data.get("reframe") is not None and not isinstance(data["reframe"], dict):
        raise GateRefused(f"{where}: not a valid gate record ('reframe' is not an object)")
    parse_created(data["created"], where)
    return data


def record_from_json(data: object, where: str) -> GateRecord:
    data = _check_shape(data, where)
    try:
        rf = data.get("reframe")
        reframe = None
        if rf is not None:
            jobs = tuple(
                CaseJob(j["case"], j["system"], j["scheduler"], j["job_id"], tuple(j.get("nodes", ())))
                for j in rf.get("jobs", [])
            )
            perf = tuple(PerfVerdict(**p) for p in rf.get("performance", []))
            reframe = ReframeSummary(rf["sha256"], int(rf["cases"]), int(rf["failures"]), perf, jobs)
        return GateRecord(
            tarball=data["tarball"], sha256=data["sha256"], size=int(data["size"]),
            content_type=data["content_type"], target=data.get("target", ""),
            host_cpu=data.get("host_cpu", ""),
            digests=dict(data.get("digests", {})), tests=tuple(CaseResult(**t) for t in data["tests"]),
            reframe=reframe, tools=dict(data.get("tools", {})), created=data["created"],
            version=int(data.get("version", 1)), extra=dict(data.get("extra", {})),
            target_name=str(data.get("target_name", "")),
            emulated=data.get("emulated", False), emulator=data.get("emulator", ""),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GateRefused(f"{where}: not a valid gate record ({type(e).__name__}: {e}); write it with "
                          "`eessi-pipeline gate record`") from e  # fmt: skip


MAX_RECORD_BYTES = 16 << 20  # a record of tens of thousands of test ids is well under 16 MiB


def load_record(path: Path) -> GateRecord:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise GateRefused(f"{path}: larger than {MAX_RECORD_BYTES >> 20} MiB; not a gate record")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise GateRefused(f"{path}: cannot read the gate record ({e})") from e
    return record_from_json(data, str(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_junit(text: str, where: str = "junit.xml") -> tuple[CaseResult, ...]:
    """Test results from a JUnit XML report (pytest's ``--junitxml``)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise GateRefused(f"{where}: not JUnit XML ({e})") from e
    results = []
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        path = cls.replace(".", "/") + ".py" if cls else ""
        node = f"{path}::{name}" if path else name
        if case.find("failure") is not None:
            outcome = "failed"
        elif case.find("error") is not None:
            outcome = "error"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        results.append(CaseResult(node, outcome))
    return tuple(results)


def summarise_reframe(report: dict[str, Any], raw: bytes) -> ReframeSummary:
    """Cases, failures and performance verdicts of a ReFrame JSON run report (data_version 4.x).

    The report is read by :func:`eessi_pipeline.checks.report.parse_case`, so a performance value
    passes here only if ReFrame passed it and it lies within its reference band, as the checks judge it.
    """
    runs = report.get("runs") or []
    cases = [parse_case(tc) for tc in (runs[-1] if runs else {}).get("testcases", [])]
    verdicts = tuple(
        PerfVerdict(
            c.name, p.metric, p.value,
            p.reference.value if p.reference else None,
            p.reference.lower if p.reference else None,
            p.reference.upper if p.reference else None,
            p.reference.unit if p.reference else p.unit,
            p.reframe_ok and p.in_band(),
        )
        for c in cases
        for p in c.perf
    )  # fmt: skip
    failures = sum(1 for c in cases if c.result not in ("pass", "xfail"))
    jobs = tuple(CaseJob(c.name, c.system, c.scheduler, c.job_id, c.nodes) for c in cases if c.job)
    return ReframeSummary(hashlib.sha256(raw).hexdigest(), len(cases), failures, verdicts, jobs)


# The distributions whose versions decide what a test run proved (absent ones are left out).
TOOLS = ("pytest", "pytest-xdist", "pytest-testinfra", "reframe-hpc", "eessi-testsuite", "easybuild",
         "easybuild-framework", "archspec", "hypothesis")  # fmt: skip


def tool_versions() -> dict[str, str]:
    found = {"eessi-pipeline": __version__, "python": platform.python_version()}
    for dist in TOOLS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def make_record(
    tarball: Path, content_type: str, target: str, host_cpu: str, tests: tuple[CaseResult, ...],
    reframe: ReframeSummary | None, digests: dict[str, str], now: dt.datetime | None = None,
    target_name: str = "", emulator: str = "",
) -> GateRecord:  # fmt: skip
    now = now or dt.datetime.now(dt.UTC)
    return GateRecord(
        tarball=tarball.name, sha256=sha256_file(tarball), size=tarball.stat().st_size,
        content_type=content_type, target=target, host_cpu=host_cpu, digests=digests, tests=tests,
        reframe=reframe, tools=tool_versions(),
        created=now.replace(microsecond=0).isoformat(), target_name=target_name,
        emulated=bool(emulator), emulator=emulator,
    )  # fmt: skip
