"""The gate: signed records, the pure decision (with hypothesis), staging, and publish refusals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from cvmfs_helpers import make_tarball, software_tarball
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.errors import GateRefused
from eessi_pipeline.gate import signing
from eessi_pipeline.gate.decide import TarballFacts, decide
from eessi_pipeline.gate.policy import ContentRule, Policy, load_policy
from eessi_pipeline.gate.publish import publish
from eessi_pipeline.gate.record import (
    RECORD_SUFFIX,
    CaseResult,
    GateRecord,
    PerfVerdict,
    ReframeSummary,
    load_record,
    make_record,
    parse_junit,
    summarise_reframe,
)  # fmt: skip
from eessi_pipeline.gate.signing import SignatureCheck
from eessi_pipeline.gate.staging import Staging

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
NAME = "software.eessi.local"
ZEN3 = "x86_64/amd/zen3"
SIGNED = SignatureCheck(True, "builder@node")
POLICY = Policy(Path("policy.yaml"), "0" * 64, 72, False, "keys/allowed_signers", "eessi-pipeline",
                {"software": ContentRule(("*test_smoke*",), True)}, "")  # fmt: skip


def green() -> tuple[TarballFacts, GateRecord]:
    facts = TarballFacts("eessi-2023.06-software-linux-x86_64-amd-zen3-1700000000.tar.gz", "a" * 64, 1000,
                         "software", "2023.06", (f"2023.06/software/linux/{ZEN3}",))  # fmt: skip
    record = GateRecord(
        tarball=facts.name, sha256=facts.sha256, size=facts.size, content_type="software", target=ZEN3,
        host_cpu=ZEN3, digests={}, tests=(CaseResult("tests/t.py::test_smoke[zen3]", "passed"),
                                          CaseResult("tests/t.py::test_other", "passed")),
        reframe=ReframeSummary("b" * 64, 3, 0, (PerfVerdict("stream", "Triad", 9000.0, 9000.0, -0.5, None, "MB/s", True),)),
        tools={}, created=(NOW - dt.timedelta(hours=1)).isoformat(),
    )  # fmt: skip
    return facts, record


def test_decide_all_green_accepts() -> None:
    facts, record = green()
    decision = decide(facts, record, SIGNED, POLICY, NOW)
    assert decision.accept and decision.reasons == ()


REFUSALS = {
    "failed-required": lambda f, r: (
        f,
        dataclasses.replace(r, tests=(CaseResult("tests/t.py::test_smoke[zen3]", "failed"),)),
    ),
    "skipped-required": lambda f, r: (
        f,
        dataclasses.replace(r, tests=(CaseResult("tests/t.py::test_smoke[zen3]", "skipped"),)),
    ),
    "missing-required": lambda f, r: (
        f,
        dataclasses.replace(r, tests=(CaseResult("tests/t.py::test_other", "passed"),)),
    ),
    "zero-tests": lambda f, r: (f, dataclasses.replace(r, tests=())),
    "other-failure": lambda f, r: (
        f,
        dataclasses.replace(r, tests=(*r.tests, CaseResult("tests/t.py::test_x", "error"))),
    ),
    "hash": lambda f, r: (dataclasses.replace(f, sha256="c" * 64), r),
    "size": lambda f, r: (dataclasses.replace(f, size=999), r),
    "wrong-target-path": lambda f, r: (
        dataclasses.replace(f, content_roots=("2023.06/software/linux/x86_64/amd/zen4",)),
        r,
    ),
    "expired": lambda f, r: (f, dataclasses.replace(r, created=(NOW - dt.timedelta(hours=73)).isoformat())),
    "no-reframe": lambda f, r: (f, dataclasses.replace(r, reframe=None)),
    "reframe-zero-cases": lambda f, r: (f, dataclasses.replace(r, reframe=ReframeSummary("b" * 64, 0, 0))),
    "reframe-failure": lambda f, r: (f, dataclasses.replace(r, reframe=ReframeSummary("b" * 64, 3, 1))),
    "perf-out-of-band": lambda f, r: (
        f,
        dataclasses.replace(
            r,
            reframe=ReframeSummary(
                "b" * 64, 3, 0, (PerfVerdict("stream", "Triad", 10.0, 9000.0, -0.5, None, "MB/s", False),)
            ),
        ),
    ),
    "other-tarball": lambda f, r: (
        f,
        dataclasses.replace(r, tarball="eessi-2023.06-software-linux-x86_64-amd-zen3-1.tar.gz"),
    ),
}


@pytest.mark.parametrize("mutate", list(REFUSALS.values()), ids=list(REFUSALS))
def test_decide_each_defect_refuses_with_a_reason(mutate) -> None:
    facts, record = mutate(*green())
    decision = decide(facts, record, SIGNED, POLICY, NOW)
    assert not decision.accept
    assert decision.reasons and all(isinstance(r, str) and r for r in decision.reasons)


def test_decide_unknown_signer_refuses() -> None:
    facts, record = green()
    decision = decide(
        facts, record, SignatureCheck(False, "", "the signer is not in allowed_signers"), POLICY, NOW
    )
    assert not decision.accept and "signature" in decision.reasons[0]


def test_decide_approval_required_refuses_until_approved() -> None:
    facts, record = green()
    policy = dataclasses.replace(POLICY, require_approval=True)
    assert not decide(facts, record, SIGNED, policy, NOW).accept
    assert decide(facts, record, SIGNED, policy, NOW, approved=True).accept


@settings(max_examples=100, deadline=None)
@given(outcomes=st.lists(st.sampled_from(["passed", "failed", "skipped", "error"]), min_size=0, max_size=6))
def test_property_any_non_passing_required_test_refuses(outcomes: list[str]) -> None:
    facts, record = green()
    tests = tuple(CaseResult(f"tests/t.py::test_smoke[{i}]", o) for i, o in enumerate(outcomes))
    decision = decide(facts, dataclasses.replace(record, tests=tests), SIGNED, POLICY, NOW)
    assert decision.accept == (bool(outcomes) and all(o == "passed" for o in outcomes))


@settings(max_examples=100, deadline=None)
@given(digit=st.sampled_from("0123456789abcdef"), pos=st.integers(0, 63))
def test_property_any_change_of_the_tarball_hash_refuses(digit: str, pos: int) -> None:
    facts, record = green()
    changed = facts.sha256[:pos] + digit + facts.sha256[pos + 1 :]
    decision = decide(dataclasses.replace(facts, sha256=changed), record, SIGNED, POLICY, NOW)
    assert decision.accept == (changed == facts.sha256)


# --- real signatures (ssh-keygen) --------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key, allowed = tmp_path / "keys" / "build-node", tmp_path / "keys" / "allowed_signers"
    signing.ensure_signing_key(key, "builder@node", allowed)
    return key, allowed


def test_signing_round_trip_and_tamper(keys: tuple[Path, Path], tmp_path: Path) -> None:
    key, allowed = keys
    record = tmp_path / "r.gate.json"
    record.write_text('{"a": 1}\n')
    sig = signing.sign(key, record)
    assert signing.verify(record, sig, allowed) == SignatureCheck(True, "builder@node")
    record.write_text('{"a": 2}\n')  # one byte changed
    check = signing.verify(record, sig, allowed)
    assert not check.ok and "does not verify" in check.reason


def test_signing_unknown_signer_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    _key, allowed = keys
    other, other_allowed = tmp_path / "other" / "key", tmp_path / "other" / "allowed"
    signing.ensure_signing_key(other, "intruder@elsewhere", other_allowed)
    record = tmp_path / "r.gate.json"
    record.write_text("{}\n")
    check = signing.verify(record, signing.sign(other, record), allowed)
    assert not check.ok and "not in" in check.reason
    with pytest.raises(GateRefused):
        signing.require(record, Path(f"{record}.sig"), allowed)


def test_parse_junit_outcomes() -> None:
    xml = """<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>
    <testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>
    <testcase classname="tests.test_a" name="test_skip"><skipped/></testcase></testsuite></testsuites>"""
    assert parse_junit(xml) == (CaseResult("tests/test_a.py::test_ok", "passed"),
                                CaseResult("tests/test_a.py::test_bad", "failed"),
                                CaseResult("tests/test_a.py::test_skip", "skipped"))  # fmt: skip


def test_summarise_reframe_counts_failures_and_perf() -> None:
    report = {"runs": [{"testcases": [
        {"name": "stream_check", "result": "pass", "perfvalues": {"local:zen3:Triad": [9000, 8800, -0.1, 0.1, "MB/s", "pass"]}},
        {"name": "smoke", "result": "fail", "perfvalues": {}},
    ]}]}  # fmt: skip
    s = summarise_reframe(report, json.dumps(report).encode())
    assert (s.cases, s.failures) == (2, 1)
    assert s.performance[0].metric == "Triad" and s.performance[0].ok


# --- staging and publish, end to end on the embedded repository ----------------------------------


def _junit(path: Path, outcome: str = "passed") -> Path:
    body = "" if outcome == "passed" else f"<{'failure' if outcome == 'failed' else 'skipped'} message='x'/>"
    path.write_text(f'<testsuites><testsuite><testcase classname="tests.test_initscript" name="test_init">{body}'
                    "</testcase></testsuite></testsuites>")  # fmt: skip
    return path


@pytest.fixture
def state(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    state = tmp_path / "state"
    Repository(state, NAME).init()
    (state / "keys").mkdir(exist_ok=True)
    (state / "keys" / "allowed_signers").write_text(keys[1].read_text())
    return state


def _stage_init(
    state: Path, tmp_path: Path, key: Path, outcome: str = "passed", stamp: int = 1700000000
) -> Path:
    t = make_tarball(tmp_path / f"eessi-2023.06-init-{stamp}.tar.gz", {"2023.06": None, "2023.06/init": None,
                                                                       "2023.06/init/bash": b"echo hi\n"})  # fmt: skip
    tests = parse_junit(_junit(tmp_path / f"junit-{stamp}.xml", outcome).read_text())
    record = make_record(t, "init", "", ZEN3, tests, None, {}, NOW - dt.timedelta(hours=1))
    rpath = Path(f"{t}{RECORD_SUFFIX}")
    rpath.write_bytes(record.canonical())
    Staging(state).stage(t, rpath, signing.sign(key, rpath))
    return t


def test_publish_green_init_tarball_lands(state: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    t = _stage_init(state, tmp_path, keys[0])
    outcomes = publish(state, NAME, load_policy(), now=NOW)
    assert [(o.tarball, o.accepted, o.revision_after) for o in outcomes] == [(t.name, True, 2)]
    assert Staging(state).find(t.name).state == "ingested"  # type: ignore[union-attr]
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["outcome"] == "ingested" and audit[-1]["revision_before"] == 1


@pytest.mark.parametrize("defect", ["failed-test", "tampered-tarball", "tampered-record", "unsigned"])
def test_publish_refusal_changes_nothing(
    state: Path, tmp_path: Path, keys: tuple[Path, Path], defect: str
) -> None:
    t = _stage_init(state, tmp_path, keys[0], outcome="failed" if defect == "failed-test" else "passed")
    staged = Staging(state).find(t.name)
    assert staged is not None
    if defect == "tampered-tarball":
        staged.path.write_bytes(staged.path.read_bytes() + b"\0" * 512)
    elif defect == "tampered-record":
        staged.record.write_text(staged.record.read_text().replace('"passed"', '"passed" '))
    elif defect == "unsigned":
        staged.signature.unlink()
    manifest = (state / "srv" / "cvmfs" / NAME / ".cvmfspublished").read_bytes()
    outcomes = publish(state, NAME, load_policy(), now=NOW)
    assert len(outcomes) == 1 and not outcomes[0].accepted and outcomes[0].reasons
    assert (state / "srv" / "cvmfs" / NAME / ".cvmfspublished").read_bytes() == manifest
    assert Staging(state).find(t.name).state == "rejected"  # type: ignore[union-attr]


def test_publish_dry_run_changes_nothing(state: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    t = _stage_init(state, tmp_path, keys[0])
    outcomes = publish(state, NAME, load_policy(), dry_run=True, now=NOW)
    assert outcomes[0].accepted and outcomes[0].dry_run
    assert Staging(state).find(t.name).state == "new"  # type: ignore[union-attr]
    assert Repository(state, NAME).manifest().revision == 1


def test_publish_order_compat_before_software_oldest_first(state: Path) -> None:
    names = ["eessi-2023.06-software-linux-x86_64-generic-1700000005.tar.gz",
             "eessi-2023.06-compat-linux-x86_64-1700000009.tar.gz",
             "eessi-2023.06-software-linux-x86_64-generic-1700000001.tar.gz"]  # fmt: skip
    new = state / "staging" / "new"
    new.mkdir(parents=True)
    for n in names:
        (new / n).write_bytes(b"")
    assert [s.name for s in Staging(state).list()] == [names[1], names[2], names[0]]


def test_approve_moves_new_to_approved_and_logs(state: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    t = _stage_init(state, tmp_path, keys[0])
    Staging(state).approve(t.name, "reviewer")
    assert Staging(state).find(t.name).state == "approved"  # type: ignore[union-attr]
    moves = [json.loads(line) for line in (state / "staging" / "moves.jsonl").read_text().splitlines()]
    assert [(m["from"], m["to"]) for m in moves] == [(None, "new"), ("new", "approved")]
    with pytest.raises(GateRefused, match="only new"):
        Staging(state).approve(t.name, "reviewer")


def test_software_tarball_record_round_trip(tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", ZEN3, {"bin/x": b"x"})
    record = make_record(
        t, "software", ZEN3, ZEN3, (CaseResult("a::b", "passed"),), None, {"matrix": "m"}, NOW
    )
    p = tmp_path / "r.json"
    p.write_bytes(record.canonical())
    assert load_record(p) == record


def test_pytest_run_writes_signed_gate_record(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(state))
    Repository(state, NAME).init()
    t = make_tarball(tmp_path / "eessi-2023.06-init-1700000000.tar.gz",
                     {"2023.06": None, "2023.06/init": None, "2023.06/init/bash": b"echo hi\n"})  # fmt: skip
    pytester.makepyfile(test_a="def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n")
    result = pytester.runpytest_subprocess("-p", "eessi_pipeline.gate.pytest_gate", "-p", "no:cacheprovider",
                                           f"--eessi-gate-tarball={t}", "--eessi-gate-stage")  # fmt: skip
    result.stdout.fnmatch_lines(["*gate record*(2 results, 1 failed, staged)*"])
    record = load_record(Path(f"{t}{RECORD_SUFFIX}"))
    assert {(c.id.split("::")[-1], c.outcome) for c in record.tests} == {
        ("test_ok", "passed"),
        ("test_bad", "failed"),
    }
    assert Staging(state).find(t.name) is not None
    outcomes = publish(state, NAME, load_policy(), now=dt.datetime.now(dt.UTC))
    assert not outcomes[0].accepted  # a failed test (and missing required ones) keep it out


def test_decide_expands_target_in_required_tests() -> None:
    facts, record = green()
    policy = dataclasses.replace(
        POLICY, content_types={"software": ContentRule(("*test_smoke[{target}]",), True)}
    )
    named = dataclasses.replace(record, target_name="zen3")
    assert decide(facts, named, SIGNED, policy, NOW).accept
    # the same green tests, but recorded for another target: its required test is missing
    other = dataclasses.replace(record, target_name="zen4")
    assert "required test '*test_smoke[zen4]' is missing" in decide(facts, other, SIGNED, policy, NOW).reasons
    unnamed = decide(facts, record, SIGNED, policy, NOW)
    assert not unnamed.accept and "names the target" in unnamed.reasons[0]


def compat_case(family: str, tested: str, emulator: str = "") -> tuple[TarballFacts, GateRecord]:
    """A compat tarball of ``family`` whose record holds the layer tests of ``tested`` (all passed)."""
    facts = TarballFacts(f"eessi-2023.06-compat-linux-{family}-1700000000.tar.gz", "c" * 64, 1000, "compat",
                         "2023.06", (f"2023.06/compat/linux/{family}",))  # fmt: skip
    tests = (CaseResult(f"tests/test_compat_layer.py::test_layer_build_layout[{tested}]", "passed"),
             CaseResult(f"tests/test_compat_layer.py::test_layer_every_tool_of_the_package_set_runs[{tested}-ldd --version]", "passed"))  # fmt: skip
    record = GateRecord(
        tarball=facts.name, sha256=facts.sha256, size=facts.size, content_type="compat", target=family,
        host_cpu="x86_64/intel/icelake", digests={}, tests=tests, reframe=ReframeSummary("d" * 64, 46, 0, ()),
        tools={}, created=(NOW - dt.timedelta(hours=1)).isoformat(), emulated=bool(emulator), emulator=emulator,
    )  # fmt: skip
    return facts, record


def test_decide_judges_each_compat_layer_by_its_own_family_tests() -> None:
    """The shipped policy's compat rule names {family}: the x86_64 and the (emulated) aarch64 layer are
    each accepted on their own family's tests, and neither on the other family's."""
    policy = dataclasses.replace(POLICY, content_types={"compat": load_policy().content_types["compat"]})
    assert decide(*compat_case("x86_64", "x86_64"), SIGNED, policy, NOW).accept
    emulated = decide(*compat_case("aarch64", "aarch64", "qemu-aarch64 7.2"), SIGNED, policy, NOW)
    assert emulated.accept, emulated.reasons  # generic emulated records may publish compat layers
    crossed = decide(*compat_case("aarch64", "x86_64", "qemu-aarch64 7.2"), SIGNED, policy, NOW)
    assert not crossed.accept
    assert "required test 'tests/test_compat_layer.py::*[aarch64]' is missing" in crossed.reasons
    assert "required test 'tests/test_compat_layer.py::*[aarch64-*]' is missing" in crossed.reasons


def test_decide_refuses_a_family_placeholder_without_a_family() -> None:
    facts, record = green()
    policy = dataclasses.replace(POLICY, content_types={"software": ContentRule(("*[{family}]",), True)})
    assert "required test '*[x86_64]' is missing" in decide(facts, record, SIGNED, policy, NOW).reasons
    untargeted = dataclasses.replace(record, target="")
    reasons = decide(facts, untargeted, SIGNED, policy, NOW).reasons
    assert "required test '*[{family}]' names the family; the record has none" in reasons


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_pytest_gate_records_announced_tarballs(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(state))
    Repository(state, NAME).init()
    t = software_tarball(tmp_path, "2023.06", ZEN3, {"bin/x": b"x"})
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"runs": [{"testcases": []}]}))
    pytester.makepyfile(
        test_a=f"""
from pathlib import Path
from eessi_pipeline.gate.pytest_gate import announce

def test_built(request):
    announce(request.node, Path({str(t)!r}), Path({str(report)!r}))

def test_other():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "eessi_pipeline.gate.pytest_gate", "-p", "no:cacheprovider",
                                           "--eessi-gate", "--eessi-gate-stage", *workers)  # fmt: skip
    result.stdout.fnmatch_lines(["*gate record*(2 results, 0 failed, staged)*"])
    record = load_record(Path(f"{t}{RECORD_SUFFIX}"))
    assert sorted(c.id.split("::")[-1] for c in record.tests) == ["test_built", "test_other"]
    assert record.target == ZEN3 and record.target_name == "zen3"
    assert record.reframe is not None and record.reframe.cases == 0  # the report's digest is in the record
    assert Staging(state).find(t.name) is not None


def test_pytest_gate_without_announced_tarball_fails_the_run(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "eessi_pipeline.gate.pytest_gate", "-p", "no:cacheprovider",
                                           "--eessi-gate")  # fmt: skip
    result.stdout.fnmatch_lines(["*no gate record: --eessi-gate: no test of this run built a tarball*"])
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR


def test_pytest_gate_line_is_never_glued_to_the_progress_line(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    pytester.makepyfile(test_a="def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "eessi_pipeline.gate.pytest_gate", "-p", "no:cacheprovider",
                                           "-q", "--eessi-gate")  # fmt: skip
    lines = result.stdout.lines
    gate = [i for i, line in enumerate(lines) if "no gate record" in line]
    assert gate, result.stdout.str()
    assert lines[gate[0]].startswith("eessi-pipeline: no gate record:")  # its own line, after the progress
    assert any("eessi-pipeline gate" in line for line in lines[: gate[0]])  # in its own section


def test_software_roots_find_subdirs_and_strays() -> None:
    from eessi_pipeline.gate.publish import software_roots

    v, zen3, generic = (
        "2023.06",
        "2023.06/software/linux/x86_64/amd/zen3",
        "2023.06/software/linux/x86_64/generic",
    )
    names = ["2023.06", "2023.06/software", "2023.06/software/linux", "2023.06/software/linux/x86_64",
             "2023.06/software/linux/x86_64/amd", zen3, f"{zen3}/modules/all/zlib/1.3.lua",
             f"{zen3}/software/zlib/1.3/lib/libz.so", f"{zen3}/.lmod/cache/spiderT.lua"]  # fmt: skip
    assert software_roots(names, v) == (zen3,)
    assert software_roots([*names, f"{generic}/modules/all/x.lua"], v) == (zen3, generic)
    stray = "2023.06/software/linux/x86_64/amd/notes.txt"
    assert software_roots([*names, stray], v) == (stray, zen3)


def test_facts_of_real_tarball_and_decide_on_target_paths(tmp_path: Path) -> None:
    from eessi_pipeline.gate.publish import facts_of

    t = software_tarball(
        tmp_path, "2023.06", ZEN3, {"modules/all/x/1.lua": b"--", "software/x/1/bin/x": b"x"}
    )
    facts = facts_of(t, NAME)
    assert facts.content_roots == (f"2023.06/software/linux/{ZEN3}",) and facts.named_target == ZEN3
    _, record = green()
    record = dataclasses.replace(record, tarball=facts.name, sha256=facts.sha256, size=facts.size)
    assert decide(facts, record, SIGNED, POLICY, NOW).accept
    wrong = decide(facts, dataclasses.replace(record, target="x86_64/amd/zen4"), SIGNED, POLICY, NOW)
    assert any(
        "the tarball's name says x86_64/amd/zen3, the record tested x86_64/amd/zen4" in r
        for r in wrong.reasons
    )
    assert any("are not the tested target's" in r for r in wrong.reasons)


def test_decide_refuses_performance_without_reference_when_required() -> None:
    facts, record = green()
    unreferenced = (PerfVerdict("stream_check %scale=1_core", "Triad", 80.0, None, None, None, "", True),)
    record = dataclasses.replace(
        record, reframe=ReframeSummary("b" * 64, 3, 0, unreferenced), target_name="zen3"
    )
    assert decide(facts, record, SIGNED, POLICY, NOW).accept  # the default: a value without a band passes
    strict = dataclasses.replace(
        POLICY, content_types={"software": ContentRule(("*test_smoke*",), True, require_references=True)}
    )
    (reason,) = decide(facts, record, SIGNED, strict, NOW).reasons
    assert reason.startswith(
        "performance stream_check %scale=1_core Triad=80 has no reference for zen3: record"
    )


def test_record_names_the_tool_versions_of_the_run(tmp_path: Path) -> None:
    import importlib.metadata

    t = software_tarball(tmp_path, "2023.06", ZEN3, {"modules/all/x/1.lua": b"--"})
    record = make_record(t, "software", ZEN3, ZEN3, (CaseResult("a::b", "passed"),), None, {}, NOW)
    assert record.tools["reframe-hpc"] == importlib.metadata.version("reframe-hpc") == "4.10.0"
    assert record.tools["pytest"] == importlib.metadata.version("pytest")
    assert {"eessi-pipeline", "python", "archspec"} <= set(record.tools)


def test_staging_same_tarball_again_refreshes_its_record_or_keeps_it_published(tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = software_tarball(tmp_path, "2023.06", ZEN3, {"modules/all/x/1.lua": b"--"})
    record, sig = Path(f"{t}{RECORD_SUFFIX}"), Path(f"{t}{RECORD_SUFFIX}.sig")
    record.write_text("first")
    sig.write_text("sig1")
    staging = Staging(state)
    item = staging.stage(t, record, sig)
    staging.move(item, "rejected", "a test failed")
    record.write_text("second")  # a green run of the same bytes
    again = staging.stage(t, record, sig)
    assert again.state == "new" and again.record.read_text() == "second"
    published = staging.move(again, "ingested", "revision 2")
    record.write_text("third")
    assert staging.stage(t, record, sig) == published and published.record.read_text() == "second"
    (tmp_path / "rebuilt").mkdir()
    other = software_tarball(tmp_path / "rebuilt", "2023.06", ZEN3, {"modules/all/x/1.lua": b"-- changed"})
    with pytest.raises(GateRefused, match="already staged \\(ingested\\) with other contents"):
        staging.stage(other, record, sig)


# --------------------------------------------------------------------------- records made under emulation

A64 = "aarch64/generic"


def emulated_green(subdir: str = A64) -> tuple[TarballFacts, GateRecord]:
    facts, record = green()
    name = f"eessi-2023.06-software-linux-{subdir.replace('/', '-')}-1700000000.tar.gz"
    facts = dataclasses.replace(facts, name=name, content_roots=(f"2023.06/software/linux/{subdir}",))
    record = dataclasses.replace(
        record, tarball=name, target=subdir, emulated=True, emulator="qemu-aarch64 7.2"
    )
    return facts, record


def test_emulated_generic_record_publishes_by_default() -> None:
    facts, record = emulated_green()
    assert POLICY.emulated_records == "generic"
    assert decide(facts, record, SIGNED, POLICY, NOW).accept


def test_emulated_tuned_record_needs_a_native_run() -> None:
    facts, record = emulated_green("aarch64/neoverse_n1")
    (reason,) = decide(facts, record, SIGNED, POLICY, NOW).reasons
    assert "aarch64/neoverse_n1 ran under qemu-aarch64 7.2: a tuned target needs a native run" in reason
    assert decide(facts, record, SIGNED, dataclasses.replace(POLICY, emulated_records="all"), NOW).accept
    native = dataclasses.replace(record, emulated=False, emulator="")
    assert decide(facts, native, SIGNED, POLICY, NOW).accept


def test_policy_none_takes_native_records_only() -> None:
    facts, record = emulated_green()
    (reason,) = decide(
        facts, record, SIGNED, dataclasses.replace(POLICY, emulated_records="none"), NOW
    ).reasons
    assert "native records only" in reason


def test_emulated_performance_is_recorded_not_judged() -> None:
    facts, record = emulated_green()
    slow = (PerfVerdict("stream_check", "Triad", 90.0, 9000.0, -0.5, None, "MB/s", False),)
    record = dataclasses.replace(record, reframe=ReframeSummary("b" * 64, 3, 0, slow))
    assert decide(facts, record, SIGNED, POLICY, NOW).accept
    native = dataclasses.replace(record, emulated=False)
    assert "outside" in decide(facts, native, SIGNED, POLICY, NOW).reasons[0]
    failing = dataclasses.replace(record, reframe=ReframeSummary("b" * 64, 3, 1, slow))
    assert decide(facts, failing, SIGNED, POLICY, NOW).reasons == ("ReFrame reports 1 failure(s)",)


def test_emulated_record_round_trip_and_bad_type(tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", A64, {"bin/x": b"x"})
    record = make_record(
        t, "software", A64, "x86_64/generic", (CaseResult("a::b", "passed"),), None, {}, NOW,
        emulator="qemu-aarch64 7.2",
    )  # fmt: skip
    assert record.emulated and record.to_json()["emulated"] is True
    p = tmp_path / "r.json"
    p.write_bytes(record.canonical())
    assert load_record(p) == record
    data = json.loads(p.read_text())
    data["emulated"] = "yes"
    p.write_text(json.dumps(data))
    with pytest.raises(GateRefused, match="'emulated' is not true/false"):
        load_record(p)


def test_the_shipped_policy_publishes_emulated_generic_only() -> None:
    assert load_policy().emulated_records == "generic"
