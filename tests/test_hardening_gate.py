"""Issue 16, the gate: replay, poisoned records, one bad item among many, --record, two publishers.

Real ssh-keygen signatures and the embedded repository; no mocks.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cvmfs_helpers import make_tarball
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline import cli
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import GateRefused
from eessi_pipeline.gate import signing
from eessi_pipeline.gate.admit import admit
from eessi_pipeline.gate.decide import PastDecision, replay_problem
from eessi_pipeline.gate.policy import load_policy
from eessi_pipeline.gate.publish import publish
from eessi_pipeline.gate.record import RECORD_SUFFIX, CaseResult, GateRecord, make_record
from eessi_pipeline.gate.staging import Staging

NAME = "software.eessi.local"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
POLICY_TEXT = (
    "schema_version: 1\ncontent_types:\n  init: {required_tests: ['*test_init*']}\npost_publish_checks: ''\n"
)


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(state dir with a repository and a trusted build-node key, the key, the policy file)."""
    state = tmp_path / "state"
    Repository(state, NAME).init()
    key = state / "keys" / "build-node"
    signing.ensure_signing_key(key, "builder@node", state / "keys" / "allowed_signers")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    return state, key, policy


def _tarball(where: Path, stamp: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    return make_tarball(where / f"eessi-2023.06-init-{stamp}.tar.gz",
                        {"2023.06": None, "2023.06/init": None, "2023.06/init/bash": f"# {stamp}\n".encode()})  # fmt: skip


def _record(
    t: Path, key: Path, outcome: str = "passed", age_h: float = 1.0, raw: bytes | None = None
) -> Path:
    path = Path(f"{t}{RECORD_SUFFIX}")
    if raw is None:
        rec = make_record(t, "init", "", "x86_64/generic", (CaseResult("tests/t.py::test_init", outcome),), None,
                          {}, NOW - dt.timedelta(hours=age_h))  # fmt: skip
        raw = rec.canonical()
    path.write_bytes(raw)
    signing.sign(key, path)
    return path


def _stage(state: Path, policy: Path, t: Path, record: Path | None = None) -> None:
    record = record or Path(f"{t}{RECORD_SUFFIX}")
    admit(t, record, Path(f"{record}.sig"), state_dir=state, policy=load_policy(policy))


def _audit(state: Path) -> list[dict[str, object]]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- replay ------------------------------------------------------------------------------------------


def test_an_old_green_record_cannot_be_replayed_after_a_newer_red_one(env: tuple[Path, Path, Path],
                                                                      tmp_path: Path) -> None:  # fmt: skip
    state, key, policy = env
    t = _tarball(tmp_path / "in", 1700000000)
    green = _record(t, key, "passed", age_h=2)
    saved = green.read_bytes(), Path(f"{green}.sig").read_bytes()
    _record(t, key, "failed", age_h=1)  # a newer run of the same bytes fails
    _stage(state, policy, t)
    [outcome] = publish(state, NAME, load_policy(policy))
    assert not outcome.accepted
    green.write_bytes(saved[0])  # the old green record and its valid signature come back
    Path(f"{green}.sig").write_bytes(saved[1])
    with pytest.raises(GateRefused, match=r"replayed or outdated record.*already refused"):
        _stage(state, policy, t)
    assert Repository(state, NAME).manifest().revision == 1
    # Even dropped straight into staging (bypassing `gate stage`), publish refuses it.
    Staging(state).stage(t, green, Path(f"{green}.sig"))
    [again] = publish(state, NAME, load_policy(policy))
    assert not again.accepted and "replayed or outdated" in again.reasons[0]
    assert Repository(state, NAME).manifest().revision == 1


def test_replay_rule_is_a_pure_function_of_the_history() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    past = (PastDecision("refused", t0, "a" * 64, "then"),)
    assert replay_problem(t0 - dt.timedelta(seconds=1), "b" * 64, past) is not None
    assert replay_problem(t0, "a" * 64, past) is not None  # the same record, judged again
    assert replay_problem(t0 + dt.timedelta(seconds=1), "b" * 64, past) is None
    staged = (PastDecision("staged", t0, "a" * 64, "then"),)
    assert replay_problem(t0, "a" * 64, staged) is None  # staging the same record twice is harmless
    assert replay_problem(t0, "c" * 64, staged) is not None
    assert replay_problem(t0 - dt.timedelta(hours=1), "c" * 64, staged) is not None


# --- poisoned records: refused at stage time, and never block the queue --------------------------------

POISONS = {
    "list": b"[]\n",
    "malformed-created": None,  # filled per tarball below
    "naive-created": None,
    "not-json": b"\x00\xff garbage",
    "tests-not-a-list": None,
}


def _poison(kind: str, t: Path, key: Path) -> bytes:
    rec = json.loads(make_record(t, "init", "", "", (CaseResult("tests/t.py::test_init", "passed"),), None, {},
                                 NOW - dt.timedelta(hours=1)).canonical())  # fmt: skip
    if kind == "malformed-created":
        rec["created"] = "yesterday-ish"
    elif kind == "naive-created":
        rec["created"] = (NOW - dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()
    elif kind == "tests-not-a-list":
        rec["tests"] = {"a": 1}
    else:
        return POISONS[kind] or b""
    return json.dumps(rec).encode()


@pytest.mark.parametrize("kind", list(POISONS))
def test_gate_stage_refuses_a_poisoned_record_with_its_reason(env: tuple[Path, Path, Path], tmp_path: Path,
                                                              kind: str) -> None:  # fmt: skip
    state, key, policy = env
    t = _tarball(tmp_path / "in", 1700000000)
    _record(t, key, raw=_poison(kind, t, key))
    with pytest.raises(GateRefused, match=r"gate record|created|cannot read"):
        _stage(state, policy, t)
    assert Staging(state).list() == []


def test_gate_stage_refuses_a_record_of_other_bytes_and_an_unknown_signer(env: tuple[Path, Path, Path],
                                                                         tmp_path: Path) -> None:  # fmt: skip
    state, key, policy = env
    t = _tarball(tmp_path / "in", 1700000000)
    _record(t, key)
    t.write_bytes(t.read_bytes() + b"\0" * 512)
    with pytest.raises(GateRefused, match="sha256 mismatch"):
        _stage(state, policy, t)
    other = tmp_path / "other" / "key"
    signing.ensure_signing_key(other, "intruder@elsewhere", tmp_path / "other" / "allowed")
    t2 = _tarball(tmp_path / "in2", 1700000001)
    _record(t2, other)
    with pytest.raises(GateRefused, match="not in"):
        _stage(state, policy, t2)
    assert Staging(state).list() == []


def test_probe_twenty_valid_tarballs_and_one_poisoned_record(env: tuple[Path, Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The probe: a poisoned record slipped into staging among 20 valid tarballs blocks nothing."""
    state, key, policy = env
    for i in range(20):
        t = _tarball(tmp_path / "in", 1700000100 + i)
        _record(t, key)
        _stage(state, policy, t)
    bad = _tarball(tmp_path / "in", 1700000050)  # sorts in the middle of the queue
    _record(bad, key, raw=_poison("naive-created", bad, key))
    Staging(state).stage(bad, Path(f"{bad}{RECORD_SUFFIX}"), Path(f"{bad}{RECORD_SUFFIX}.sig"))  # no checks
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    out = io.StringIO()
    argv = ["--state-dir", str(state), "--repo", NAME, "--policy", str(policy)]
    assert cli.main(["gate", "check", bad.name, *argv], out=out) == 1  # a refusal, not a crash (exit 3)
    assert "no UTC offset" in out.getvalue()
    out = io.StringIO()
    code = cli.main(["publish", "--no-distribute", "--json", *argv], out=out)
    results = json.loads(out.getvalue())
    assert code == 1
    assert sum(r["accepted"] for r in results) == 20
    [refused] = [r for r in results if not r["accepted"]]
    assert refused["tarball"] == bad.name and "no UTC offset" in refused["reasons"][0]
    assert Repository(state, NAME).manifest().revision == 21
    assert Staging(state).find(bad.name).state == "rejected"  # type: ignore[union-attr]
    moves = [json.loads(line) for line in (state / "staging" / "moves.jsonl").read_text().splitlines()]
    assert any(
        m["tarball"] == bad.name and m["to"] == "rejected" and "UTC offset" in m["reason"] for m in moves
    )
    assert sorted(str(a["tarball"]) for a in _audit(state)) == sorted(r["tarball"] for r in results)


# --- gate stage --record/--signature under other names ---------------------------------------------------


def test_gate_stage_with_a_record_under_another_name_publishes(env: tuple[Path, Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    state, key, policy = env
    t = _tarball(tmp_path / "in", 1700000000)
    record = _record(t, key)
    elsewhere = tmp_path / "ci"
    elsewhere.mkdir()
    os.replace(record, elsewhere / "record.json")
    os.replace(f"{record}.sig", elsewhere / "record.sig")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    argv = ["--state-dir", str(state), "--repo", NAME, "--policy", str(policy)]
    out = io.StringIO()
    code = cli.main(["gate", "stage", str(t), "--record", str(elsewhere / "record.json"),
                     "--signature", str(elsewhere / "record.sig"), *argv], out=out)  # fmt: skip
    assert code == 0, out.getvalue()
    out = io.StringIO()
    assert cli.main(["publish", "--no-distribute", *argv], out=out) == 0, out.getvalue()
    assert "published as revision 2" in out.getvalue()


# --- two publishers at once ------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from eessi_pipeline.locks import try_lock
with try_lock(Path(sys.argv[1])) as holder:
    assert holder is None
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_publisher_skips_a_tarball_another_is_publishing(env: tuple[Path, Path, Path],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    state, key, policy = env
    t = _tarball(tmp_path / "in", 1700000000)
    _record(t, key)
    _stage(state, policy, t)
    claim = state / "staging" / "claims" / f"{t.name}.lock"
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(claim), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        [outcome] = publish(state, NAME, load_policy(policy))
        assert outcome.skipped and f"already being published by pid {other.pid}" in outcome.reasons[0]
        assert _audit(state) == [] and Staging(state).find(t.name).state == "new"  # type: ignore[union-attr]
    finally:
        other.kill()
        other.wait()
    [outcome] = publish(state, NAME, load_policy(policy))
    assert outcome.accepted and [a["outcome"] for a in _audit(state)] == ["ingested"]


def test_two_concurrent_publish_commands_ingest_each_tarball_once(env: tuple[Path, Path, Path],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    state, key, policy = env
    for i in range(3):
        t = _tarball(tmp_path / "in", 1700000000 + i)
        _record(t, key)
        _stage(state, policy, t)
    argv = [sys.executable, "-m", "eessi_pipeline.cli", "publish", "--no-distribute", "--json",
            "--state-dir", str(state), "--repo", NAME, "--policy", str(policy)]  # fmt: skip
    start = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert time.monotonic() - start < 300
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, (out, err)
        assert "No such file" not in out + err
    audit = _audit(state)
    assert sorted(str(a["tarball"]) for a in audit) == sorted(
        s.name for s in Staging(state).list(("ingested",))
    )
    assert len(audit) == 3 and all(a["outcome"] == "ingested" for a in audit)
    assert Repository(state, NAME).manifest().revision == 4


# --- properties ------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=6),
    max_leaves=25,
)
_GOOD = json.loads(GateRecord(
    tarball="t.tar.gz", sha256="a" * 64, size=1, content_type="init", target="", host_cpu="", digests={},
    tests=(CaseResult("a::b", "passed"),), reframe=None, tools={}, created="2026-01-01T00:00:00+00:00",
).canonical())  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.one_of(_json, st.builds(lambda k, v: {**_GOOD, k: v}, st.sampled_from(sorted(_GOOD)), _json)))
def test_property_any_json_is_a_record_or_a_gate_refusal(data: object) -> None:
    """Whatever JSON a record holds, reading it gives a record or GateRefused, never another error."""
    from eessi_pipeline.gate.record import record_from_json

    try:
        record = record_from_json(data, "r.gate.json")
    except GateRefused:
        return
    assert record.created_at.tzinfo is not None


_times = st.integers(min_value=0, max_value=50).map(lambda h: dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
                                                    + dt.timedelta(hours=h))  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["staged", "ingested", "refused"]), _times), max_size=6), _times)
def test_property_a_record_is_judged_only_when_newer_than_every_decision(
    history: list[tuple[str, dt.datetime]], created: dt.datetime
) -> None:
    past = tuple(PastDecision(o, t, f"{i:064x}", "then") for i, (o, t) in enumerate(history))
    problem = replay_problem(created, "f" * 64, past)
    newest_decided = max((t for o, t in history if o != "staged"), default=None)
    newest_staged = max((t for o, t in history if o == "staged"), default=None)
    expected_ok = (newest_decided is None or created > newest_decided) and (
        newest_staged is None or created > newest_staged
    )
    assert (problem is None) == expected_ok
