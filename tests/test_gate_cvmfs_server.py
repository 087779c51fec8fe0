"""Publishing through the cvmfs_server backend, against a stand-in ``cvmfs_server`` (none can exist
on a test machine; every test here says ``fake_cvmfs_server``): the gate decides exactly as for the
embedded Stratum 0, only accepted tarballs reach ``cvmfs_server``, and a failed publish is aborted
and leaves the tarball staged."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from pathlib import Path

import pytest
from cvmfs_helpers import install_fake_cvmfs_server, make_tarball

from eessi_pipeline import cli
from eessi_pipeline.cvmfs.cvmfs_server import CvmfsServerBackend
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.gate.policy import load_policy
from eessi_pipeline.gate.publish import CvmfsServerTarget, publish
from eessi_pipeline.gate.record import CaseResult
from eessi_pipeline.gate.staging import Staging
from eessi_pipeline.gate.write import write_record

NAME = "software.eessi.local"


@pytest.fixture
def staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A state dir with an embedded repository (read for revisions) and a factory staging init tarballs."""
    state = tmp_path / "state"
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(state))
    monkeypatch.setenv("EESSI_PIPELINE_REPOSITORY", NAME)
    Repository(state, NAME).init()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "schema_version: 1\ncontent_types:\n  init: {required_tests: ['*test_init*'], require_reframe: false}\n"
        "post_publish_checks: ''\n"
    )
    policy = load_policy(policy_file)

    def stage(stamp: int, outcome: str = "passed") -> Path:
        t = make_tarball(tmp_path / f"eessi-2023.06-init-{stamp}.tar.gz",
                         {"2023.06": None, "2023.06/init": None, "2023.06/init/bash": b"echo hi\n"})  # fmt: skip
        write_record(t, (CaseResult("tests/t.py::test_init", outcome),), state_dir=state, repository=NAME,
                     policy=policy, stage=True)  # fmt: skip
        return t

    return state, policy, policy_file, stage


@pytest.fixture
def fake_cvmfs_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return lambda *fail: install_fake_cvmfs_server(tmp_path, monkeypatch, fail)


def test_publish_fake_cvmfs_server_ingests_only_what_the_gate_accepts(staged, fake_cvmfs_server) -> None:
    state, policy, _, stage = staged
    log = fake_cvmfs_server()
    good, bad = stage(1700000000), stage(1700000100, outcome="failed")
    target = CvmfsServerTarget(CvmfsServerBackend(NAME), str(state / "srv" / "cvmfs" / NAME))
    outcomes = {
        o.tarball: o for o in publish(state, NAME, policy, None, now=dt.datetime.now(dt.UTC), target=target)
    }
    assert outcomes[good.name].accepted and outcomes[good.name].revision_before == 1
    assert not outcomes[bad.name].accepted
    calls = [line.split("|")[0] for line in log.read_text().splitlines()]
    assert calls == [
        f"ingest -t - -b versions {NAME}",
        f"transaction {NAME}",
        f"publish {NAME}",
    ]  # once: good only
    assert int(log.read_text().splitlines()[0].split("|")[1]) > 0  # the decompressed tar came on stdin
    staging = Staging(state)
    assert staging.find(good.name).state == "ingested" and staging.find(bad.name).state == "rejected"


def test_publish_fake_cvmfs_server_failed_publish_aborts_and_keeps_it_staged(
    staged, fake_cvmfs_server
) -> None:
    state, policy, _, stage = staged
    log = fake_cvmfs_server("publish")
    t = stage(1700000000)
    target = CvmfsServerTarget(CvmfsServerBackend(NAME), None)
    (outcome,) = publish(state, NAME, policy, None, now=dt.datetime.now(dt.UTC), target=target)
    assert not outcome.accepted and outcome.reasons[0].startswith("ingest failed:")
    assert [line.split("|")[0] for line in log.read_text().splitlines()][-1] == f"abort -f {NAME}"
    assert Staging(state).find(t.name).state == "new"  # fix the Stratum 0, publish again
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["outcome"] == "refused" and "ingest failed" in audit[-1]["reasons"][0]


def test_publish_cli_fake_cvmfs_server_backend(
    staged, fake_cvmfs_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _, policy_file, stage = staged
    log = fake_cvmfs_server()
    t = stage(1700000000)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    out = io.StringIO()
    code = cli.main(["publish", "--backend", "cvmfs_server", "--policy", str(policy_file),
                     "--stratum0-url", str(state / "srv" / "cvmfs" / NAME)], out=out)  # fmt: skip
    assert code == 0, sys.stderr.getvalue()
    assert out.getvalue().startswith(f"{t.name}: published as revision 1")
    assert "no embedded snapshot" in sys.stderr.getvalue()
    assert len(log.read_text().splitlines()) == 3


def test_publish_cli_unknown_backend_and_stray_options_are_refused(
    staged, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _, policy_file, stage = staged
    stage(1700000000)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("EESSI_PIPELINE_PUBLISH_BACKEND", "cvmfs_sever")
    assert cli.main(["publish", "--policy", str(policy_file)], out=io.StringIO()) == 2
    assert "publish backend 'cvmfs_sever'" in err.getvalue() and "embedded, cvmfs_server" in err.getvalue()
    monkeypatch.delenv("EESSI_PIPELINE_PUBLISH_BACKEND")
    assert (
        cli.main(["publish", "--stratum0-ssh", "cvmfs@s0", "--policy", str(policy_file)], out=io.StringIO())
        == 2
    )
    assert "go with --backend cvmfs_server" in err.getvalue()
    assert Repository(state, NAME).manifest().revision == 1


def test_record_on_a_build_node_with_its_key_then_stage_and_publish_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI flow: a build node signs with its own key (--eessi-gate-key / gate record --key); the
    publisher stages the files it received and trusts only the keys in its allowed_signers."""
    from eessi_pipeline.gate import signing

    node_key = tmp_path / "node" / "ci-key"
    trusted = tmp_path / "node" / "allowed_signers"
    signing.ensure_signing_key(node_key, "ci@runner", trusted)
    build_state, publisher = tmp_path / "build-state", tmp_path / "publisher"
    Repository(publisher, NAME).init()
    allowed = publisher / "keys" / "allowed_signers"
    signing.ensure_signing_key(publisher / "keys" / "build-node", "publisher@host", allowed)  # trusts itself
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("schema_version: 1\ncontent_types:\n  init: {required_tests: ['*test_init*']}\n"
                           "post_publish_checks: ''\n")  # fmt: skip
    t = make_tarball(tmp_path / "eessi-2023.06-init-1700000000.tar.gz",
                     {"2023.06": None, "2023.06/init": None, "2023.06/init/bash": b"echo hi\n"})  # fmt: skip
    write_record(t, (CaseResult("tests/t.py::test_init", "passed"),), state_dir=build_state, repository=NAME,
                 policy=load_policy(policy_file), key=node_key)  # fmt: skip
    assert not (build_state / "keys" / "build-node").exists()  # the given key signed, no default key made
    monkeypatch.setattr(sys, "stderr", io.StringIO())

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = cli.main(
            [*argv, "--state-dir", str(publisher), "--repo", NAME, "--policy", str(policy_file)], out=out
        )
        return code, out.getvalue()

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    code, out = run("gate", "stage", str(t))  # the publisher does not know the node's key yet
    assert code == 1 and "the signer is not in" in err.getvalue() and Staging(publisher).find(t.name) is None
    assert "ci@runner" not in allowed.read_text()
    allowed.write_text(allowed.read_text() + trusted.read_text())
    assert run("gate", "stage", str(t)) == (0, f"{t.name}: staged (new)\n")
    code, out = run("publish", "--no-distribute")
    assert code == 0 and "published as revision 2" in out, out


def test_repository_needs_only_interpreters_inside_the_repository_the_tarball_lacks() -> None:
    from eessi_pipeline.gate.publish import repository_needs

    loader = f"/cvmfs/{NAME}/versions/2023.06/compat/linux/x86_64/lib64/ld-linux-x86-64.so.2"
    assert repository_needs([loader, "/lib64/ld-linux-x86-64.so.2"], ["2023.06/software"], NAME) == (
        "/versions/2023.06/compat/linux/x86_64/lib64/ld-linux-x86-64.so.2",
    )
    assert repository_needs([loader], ["2023.06/compat/linux/x86_64/lib64/ld-linux-x86-64.so.2"], NAME) == ()
    assert repository_needs([f"/cvmfs/other.repo/{loader}"], [], NAME) == ()


def test_publish_holds_back_software_whose_loader_is_not_published_yet(staged, tmp_path: Path) -> None:
    """A tarball linked to the compatibility layer waits (staged, not rejected) until the layer is in."""
    import shutil
    import subprocess

    from cvmfs_helpers import software_tarball

    state, _, _, _ = staged
    loader = "versions/2023.06/compat/linux/x86_64/lib64/ld-linux-x86-64.so.2"
    program = tmp_path / "true"
    shutil.copy("/bin/true", program)
    subprocess.run(["patchelf", "--set-interpreter", f"/cvmfs/{NAME}/{loader}", str(program)], check=True)
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic",
                         {"software/x/1/bin/true": program.read_bytes(), "modules/all/x/1.lua": b"--"})  # fmt: skip
    policy_file = tmp_path / "software-policy.yaml"
    policy_file.write_text("schema_version: 1\ncontent_types:\n  software: {required_tests: ['*test_x*']}\n"
                           "post_publish_checks: ''\n")  # fmt: skip
    policy = load_policy(policy_file)
    write_record(t, (CaseResult("tests/t.py::test_x", "passed"),), state_dir=state, repository=NAME,
                 policy=policy, stage=True)  # fmt: skip
    (held,) = publish(state, NAME, policy, None, now=dt.datetime.now(dt.UTC))
    assert not held.accepted and held.reasons == (
        f"its programs need /{loader}, which the repository does not have yet: publish that (the "
        "compatibility layer) first",
    )
    assert Staging(state).find(t.name).state == "new" and Repository(state, NAME).manifest().revision == 1
    layer = make_tarball(tmp_path / "eessi-2023.06-compat-linux-x86_64-1700000000.tar.gz",
                         {"2023.06": None, "2023.06/compat": None, "2023.06/compat/linux": None,
                          "2023.06/compat/linux/x86_64": None, "2023.06/compat/linux/x86_64/lib64": None,
                          "2023.06/compat/linux/x86_64/lib64/ld-linux-x86-64.so.2": b"\x7fELF loader"})  # fmt: skip
    Repository(state, NAME).ingest(layer, "versions")
    (done,) = publish(state, NAME, policy, None, now=dt.datetime.now(dt.UTC))
    assert done.accepted and done.revision_after == 3
