"""A ReFrame JSON run report (data_version 4.x) as typed results, and the verdict on it (pure).

ReFrame exits 0 when no test case matched, so no case is a failure.  Each performance value is
judged again against the band of its reference (the report's perfvalues carry value, reference and
signed-fraction bounds); a value outside it fails with check, metric, value, reference and bounds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import inputs
from .references import ChecksError, Reference


@dataclass(frozen=True, slots=True)
class PerfValue:
    metric: str
    value: float
    reference: Reference | None  # None when ReFrame had no reference (its default 0, unbounded)
    reframe_ok: bool
    unit: str = ""  # as the check reported it, also when there is no reference
    emulated: str = ""  # the emulator the case ran under (e.g. "qemu-aarch64 7.2"): recorded, not judged

    def in_band(self) -> bool:
        if self.reference is None or self.emulated:
            return True
        lo, hi = self.reference.bounds()
        return (lo is None or self.value >= lo) and (hi is None or self.value <= hi)

    def describe(self, check: str) -> str:
        if self.emulated:
            unit = f" {self.unit}" if self.unit else ""
            return f"{check}: {self.metric} = {self.value:g}{unit} (emulated: not judged; {self.emulated})"
        if self.reference is None:
            return f"{check}: {self.metric} = {self.value:g} (no reference)"
        lo, hi = self.reference.bounds()
        unit = self.reference.unit
        return (
            f"{check}: {self.metric} = {self.value:g} {unit} is outside its band: reference "
            f"{self.reference.value:g} {unit}, bounds [{'-inf' if lo is None else f'{lo:g}'}, "
            f"{'inf' if hi is None else f'{hi:g}'}] {unit}"
        )


@dataclass(frozen=True, slots=True)
class Case:
    name: str  # display name, e.g. "stream_check %scale=1_core"
    key: str  # check key of references.yaml (class/scale), else the name
    system: str
    result: str  # pass | fail | xfail | xpass | skip | abort
    fail_phase: str | None
    fail_reason: str | None
    perf: tuple[PerfValue, ...]
    seconds: float
    scheduler: str = ""  # local, slurm, squeue, ... (the partition's)
    job_id: str = ""  # the scheduler's job id ("" for local processes ReFrame gives none)
    nodes: tuple[str, ...] = ()  # the job's nodes, as far as the scheduler reported them

    @property
    def job(self) -> str:
        """``squeue job 12 on n1,n2``, or "" when the case ran as no scheduler job."""
        if not self.job_id or self.scheduler in ("", "local"):
            return ""
        return f"{self.scheduler} job {self.job_id}" + (f" on {','.join(self.nodes)}" if self.nodes else "")

    @property
    def failures(self) -> tuple[str, ...]:
        """Why this case fails, in words; empty when it passed."""
        out = [p.describe(self.key) for p in self.perf if not p.in_band()]
        if self.result not in ("pass", "xfail", "skip") and not out:
            out.append(f"{self.name}: {self.fail_phase}: {(self.fail_reason or '').strip()[:400]}")
        return tuple(out)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class RunResult:
    num_cases: int
    cases: tuple[Case, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        if self.num_cases == 0 or not self.cases:
            return ("ReFrame ran no test case: no check matched the selected system or partition",)
        return tuple(f for c in self.cases for f in c.failures)

    @property
    def ok(self) -> bool:
        return not self.failures

    def case(self, name: str) -> Case | None:
        return next((c for c in self.cases if c.name == name), None)


def _reference(values: list[Any]) -> Reference | None:
    ref, lower, upper, unit = values[1], values[2], values[3], values[4]
    if ref in (None, 0, 0.0):
        return None
    return Reference(float(ref), lower, upper, str(unit or ""))


def parse_case(tc: Mapping[str, Any]) -> Case:
    """One test case of ReFrame's report; ``emulated`` (the checks' variable, set from
    ``$EESSI_PIPELINE_EMULATED``) marks its performance values as not judged."""
    emulated = str(tc.get("emulated") or "")
    perf = []
    for key, values in (tc.get("perfvalues") or {}).items():
        vals = list(values) + [None] * (6 - len(values))
        if vals[0] is None:
            continue
        metric, value, unit = key.rsplit(":", 1)[-1], float(vals[0]), str(vals[4] or "")
        perf.append(PerfValue(metric, value, _reference(vals), vals[5] != "fail", unit, emulated))
    name = str(tc.get("display_name") or tc.get("name") or "?")
    return Case(
        name,
        str(tc.get("reference_key") or name),
        f"{tc.get('system')}:{tc.get('partition')}" if tc.get("partition") else str(tc.get("system")),
        str(tc.get("result")),
        tc.get("fail_phase"),
        tc.get("fail_reason"),
        tuple(perf),
        float(tc.get("time_total") or 0.0),
        str(tc.get("scheduler") or ""),
        str(tc.get("jobid") or ""),
        tuple(str(n) for n in (tc.get("job_nodelist") or []) if n and n != "None"),
    )


def parse_report(report: Any) -> RunResult:
    """Typed results of the last run of a report (retries leave the final result there)."""
    if not isinstance(report, Mapping) or "session_info" not in report:
        raise ChecksError("not a ReFrame run report: no session_info; was it written by --report-file?")
    runs = report.get("runs") or []
    last = runs[-1] if runs else {}
    cases = tuple(parse_case(tc) for tc in last.get("testcases", []))
    num = int(report["session_info"].get("num_cases", len(cases)) or 0)
    return RunResult(num, cases)


REPORT_FIX = "pass the JSON file ReFrame wrote with --report-file"


def load_report(path: Path) -> RunResult:
    """Read and parse a ReFrame JSON run report; any problem raises :class:`ChecksError` naming the file."""
    text = inputs.read_text(path, "ReFrame report", REPORT_FIX)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ChecksError(f"{path}: not JSON ({e}); {REPORT_FIX}") from e
    try:
        return parse_report(data)
    except ChecksError as e:
        raise ChecksError(f"{path}: {e}") from e
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise ChecksError(
            f"{path}: not a ReFrame run report ({type(e).__name__}: {e}); "
            "fix: pass the JSON file ReFrame wrote with --report-file"
        ) from e


__all__ = ["Case", "PerfValue", "RunResult", "load_report", "parse_case", "parse_report"]
