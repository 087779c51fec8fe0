"""The gate's decision: a pure function of the tarball's facts, its gate record and the policy."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from .policy import Policy
from .record import GateRecord
from .signing import SignatureCheck


@dataclass(frozen=True, slots=True)
class TarballFacts:
    name: str
    sha256: str
    size: int
    content_type: str
    version: str
    content_roots: tuple[str, ...]  # e.g. ("2023.06/software/linux/x86_64/amd/zen3",): where members go
    named_target: str = ""  # the software subdir the tarball's name says (x86_64/amd/zen3)
    needs: tuple[str, ...] = ()  # repository paths its ELF interpreters point at, outside the tarball


@dataclass(frozen=True, slots=True)
class Decision:
    accept: bool
    reasons: tuple[str, ...]

    def line(self) -> str:
        return "accepted" if self.accept else "refused: " + "; ".join(self.reasons)


def test_id_matches(pattern: str, test_id: str) -> bool:
    """Glob match of a pytest node id: ``*`` and ``?`` are wildcards, brackets are literal (ids have them)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, test_id, re.DOTALL) is not None


def _expected_root(facts: TarballFacts, record: GateRecord) -> str | None:
    if facts.content_type == "software":
        return f"{facts.version}/software/linux/{record.target}"
    if facts.content_type == "compat":
        return f"{facts.version}/compat/linux/{record.target}"
    return None


@dataclass(frozen=True, slots=True)
class Case:
    """Everything a rule of the gate may look at."""

    facts: TarballFacts
    record: GateRecord
    signature: SignatureCheck
    policy: Policy
    now: dt.datetime
    approved: bool


def rule_signature(c: Case) -> list[str]:
    return [] if c.signature.ok else [f"signature: {c.signature.reason}"]


def rule_binding(c: Case) -> list[str]:
    """The record is about exactly these bytes, under this name, of this content type."""
    reasons = list(binding_problems(c.record, c.facts.name, c.facts.sha256, c.facts.size))
    if c.record.content_type != c.facts.content_type:
        reasons.append(
            f"content type: the record says {c.record.content_type}, the tarball is {c.facts.content_type}"
        )
    return reasons


def placeholders(record: GateRecord) -> dict[str, str]:
    """What a required-test pattern's placeholders stand for in this record (pure): ``{target}`` the
    tested target's matrix name (zen3), ``{family}`` its CPU family, the first part of the tested
    directory (``x86_64/amd/zen3`` and the compat layer ``aarch64`` alike)."""
    family = record.target.split("/", 1)[0] if record.content_type in ("software", "compat") else ""
    return {"{target}": record.target_name, "{family}": family}


def _required_test_reasons(c: Case, templates: tuple[str, ...]) -> list[str]:
    reasons = []
    values = placeholders(c.record)
    for template in templates:
        missing = [k.strip("{}") for k, v in values.items() if k in template and not v]
        if missing:
            reasons.append(f"required test {template!r} names the {missing[0]}; the record has none")
            continue
        pattern = template
        for key, value in values.items():
            pattern = pattern.replace(key, value)
        matching = [t for t in c.record.tests if test_id_matches(pattern, t.id)]
        if not matching:
            reasons.append(f"required test {pattern!r} is missing")
        reasons += [f"required test {t.id} {t.outcome}" for t in matching if t.outcome != "passed"]
    return reasons


def rule_tests(c: Case) -> list[str]:
    """The policy has a rule for this kind of tarball; its required tests ran and passed; none failed."""
    rule_name, rule = c.policy.rule_for(
        c.facts.content_type, c.facts.named_target
    )  # software-accel: issue 19
    if rule is None:
        return [f"the policy has no rule for {rule_name} tarballs"]
    reasons = [] if c.record.tests else ["the record holds zero test cases"]
    reasons += _required_test_reasons(c, rule.required_tests)
    bad = [t for t in c.record.tests if t.outcome in ("failed", "error")]
    for t in bad[:5]:
        reason = f"test {t.id} {t.outcome}"
        if reason not in " ".join(reasons):
            reasons.append(reason)
    return reasons


def rule_reframe(c: Case) -> list[str]:
    """Where the policy asks for it: a ReFrame report with cases, no failures, values inside references."""
    _name, rule = c.policy.rule_for(c.facts.content_type, c.facts.named_target)
    if rule is None or not rule.require_reframe:
        return []
    rf = c.record.reframe
    if rf is None:
        return ["no ReFrame report in the record"]
    reasons = ["the ReFrame report has zero test cases"] if rf.cases == 0 else []
    if rf.failures:
        reasons.append(f"ReFrame reports {rf.failures} failure(s)")
    if c.record.emulated:  # values measured under qemu say nothing about the target: recorded, not judged
        return reasons
    for p in rf.performance:
        if rule.require_references and p.reference is None:
            value = f"{p.value:g} {p.unit}".strip()
            reasons.append(f"performance {p.check} {p.metric}={value} has no reference for "
                           f"{c.record.target_name or c.record.target}: record one with "
                           "`eessi-pipeline references update` and review it")  # fmt: skip
        elif not p.ok:
            reasons.append(f"performance {p.check} {p.metric}={p.value} {p.unit} outside "
                           f"[{p.lower}, {p.upper}] of reference {p.reference}")  # fmt: skip
    return reasons


def rule_layout(c: Case) -> list[str]:
    """Every member lies under the tested target's directory, and the name agrees with what was tested."""
    facts, record = c.facts, c.record
    reasons = []
    expected = _expected_root(facts, record)
    if expected is not None:
        wrong = [r for r in facts.content_roots if r != expected and not r.startswith(f"{facts.version}/init")
                 and not r.startswith(f"{facts.version}/scripts")]  # fmt: skip
        if wrong or not record.target:
            where = ", ".join(wrong) or "none"
            reasons.append(f"paths inside the tarball ({where}) are not the tested target's {expected}")
    if facts.named_target and record.target and facts.named_target != record.target:
        reasons.append(f"the tarball's name says {facts.named_target}, the record tested {record.target}")
    return reasons


def rule_emulation(c: Case) -> list[str]:
    """A record made under emulation publishes only what the policy's ``emulated_records`` allows."""
    if not c.record.emulated or c.policy.emulated_records == "all":
        return []
    how = c.record.emulator or "emulation"
    if c.policy.emulated_records == "none":
        return [f"the tests ran under {how}; the policy takes native records only (emulated_records: none)"]
    subdir = c.record.target
    if c.facts.content_type == "software" and not subdir.endswith("/generic"):
        return [f"the tests of {subdir} ran under {how}: a tuned target needs a native run "
                "(the policy lets emulated records publish generic targets only)"]  # fmt: skip
    return []


def rule_freshness(c: Case) -> list[str]:
    age_h = (c.now - c.record.created_at).total_seconds() / 3600
    if age_h > c.policy.max_record_age_hours:
        return [f"the record is {age_h:.0f} h old, more than {c.policy.max_record_age_hours} h: test again"]
    return ["the record is dated in the future"] if age_h < -0.1 else []


def rule_approval(c: Case) -> list[str]:
    if c.policy.require_approval and not c.approved:
        return ["the policy requires approval: run `eessi-pipeline approve TARBALL`"]
    return []


# The gate's rules, in the order their reasons are reported; each is pure and returns its reasons.
RULES = (rule_signature, rule_binding, rule_tests, rule_reframe, rule_emulation, rule_layout, rule_freshness,
         rule_approval)  # fmt: skip


def decide(
    facts: TarballFacts,
    record: GateRecord,
    signature: SignatureCheck,
    policy: Policy,
    now: dt.datetime,
    approved: bool = False,
) -> Decision:
    """Accept only a signed, fresh, complete and green record of exactly this tarball."""
    case = Case(facts, record, signature, policy, now, approved)
    reasons = tuple(reason for rule in RULES for reason in rule(case))
    return Decision(not reasons, reasons)


# --------------------------------------------------------------------------- admission and replay


@dataclass(frozen=True, slots=True)
class PastDecision:
    """One entry of a tarball's history in staging: a record that was staged or decided on."""

    outcome: str  # "staged", "ingested" or "refused"
    created: dt.datetime  # the record's own time
    record_sha256: str
    time: str  # when this happened (ISO 8601), for messages


DECIDED = ("ingested", "refused")


def binding_problems(record: GateRecord, name: str, sha256: str, size: int) -> tuple[str, ...]:
    """What ties the record to another tarball than this one (empty: the record is about it)."""
    problems = []
    if record.tarball != name:
        problems.append(f"the record is for {record.tarball}, not {name}")
    if record.sha256 != sha256:
        problems.append(
            f"sha256 mismatch: the record says {record.sha256[:12]}…, the tarball is {sha256[:12]}…"
        )
    if record.size != size:
        problems.append(f"size mismatch: the record says {record.size} bytes, the tarball has {size}")
    return tuple(problems)


def replay_problem(created: dt.datetime, digest: str, history: tuple[PastDecision, ...]) -> str | None:
    """Why a record created at ``created`` (sha256 ``digest``) may not be judged again, or None.

    A record must be newer than every decision already made on the same tarball, and not older than a
    record already staged: otherwise an old green record could be replayed over a newer red one. The
    very same record may be staged twice as long as nothing was decided on it.
    """
    for past in sorted(history, key=lambda p: p.outcome not in DECIDED):  # decisions first
        if past.outcome in DECIDED and past.created >= created:
            return (f"replayed or outdated record (created {created.isoformat()}): a record created "
                    f"{past.created.isoformat()} was already {past.outcome} at {past.time}; run the tests "
                    "again for a fresh record")  # fmt: skip
        if past.outcome == "staged" and (
            past.created > created or (past.created == created and past.record_sha256 != digest)
        ):
            return (f"outdated record (created {created.isoformat()}): a newer record, created "
                    f"{past.created.isoformat()}, was staged at {past.time}")  # fmt: skip
    return None
