"""Issue 16, inputs and trust files: size-bounded cpuinfo and YAML, alias bombs, unknown families,
trust material created with explicit modes under any umask and refused when others can write it,
and locks that keep their holder's name."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline import cli
from eessi_pipeline.arch.cpuinfo import read_host_cpu
from eessi_pipeline.cvmfs.keys import KeyPaths, create_keys
from eessi_pipeline.errors import DetectionError, GateRefused, MatrixError, PipelineError, TrustError
from eessi_pipeline.gate import signing
from eessi_pipeline.gate.staging import Staging
from eessi_pipeline.locks import wait_lock
from eessi_pipeline.trust import refuse_if_writable
from eessi_pipeline.yamlio import load_yaml

# --- cpuinfo / lscpu text ----------------------------------------------------------------------------------

S390X = """vendor_id       : IBM/S390
# processors    : 2
bogomips per cpu: 3241.00
features\t: esan3 zarch stfle msa ldisp eimm dfp edat etf3eh highgprs te vx sie
processor 0: version = FF,  identification = 0733E8,  machine = 2964
"""


def test_a_huge_cpuinfo_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.cpuinfo"
    big.write_bytes(b"flags\t\t: sse2\n" * (5 << 20 >> 4))  # 5 MiB, over the 4 MiB default
    with pytest.raises(DetectionError, match="more than 4194304 bytes"):
        read_host_cpu(big, environ={})
    with pytest.raises(DetectionError, match="more than 1000 bytes"):
        read_host_cpu(big, environ={"EESSI_PIPELINE_CPUINFO_MAX_BYTES": "1000"})


def test_dev_zero_as_cpuinfo_is_refused_quickly() -> None:
    start = time.monotonic()
    with pytest.raises(DetectionError, match="/dev/zero: more than"):
        read_host_cpu("/dev/zero", environ={})
    assert time.monotonic() - start < 20
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["detect", "--cpuinfo", "/dev/zero"], out=io.StringIO()) == 1
    assert "/dev/zero" in err.getvalue() and "Traceback" not in err.getvalue()


def test_an_s390x_cpuinfo_is_refused_as_such(tmp_path: Path) -> None:
    f = tmp_path / "s390x.cpuinfo"
    f.write_text(S390X)
    with pytest.raises(DetectionError, match="'s390x' is not supported"):
        read_host_cpu(f, environ={})


# --- YAML -------------------------------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(_bomb())
    start = time.monotonic()
    with pytest.raises(MatrixError, match="alias bomb"):
        load_yaml(f, MatrixError)
    assert time.monotonic() - start < 20
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["validate", "--matrix", str(f)], out=io.StringIO()) == 1
    assert "alias bomb" in err.getvalue()


@pytest.mark.parametrize(
    ("text", "match"),
    [("a: &x\n  b: *x\n", "recursive"), ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply")],
    ids=["recursive-alias", "deep-nesting"],
)
def test_recursive_and_deeply_nested_yaml_is_refused(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(PipelineError, match=match):
        load_yaml(f)


def test_a_yaml_file_over_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("key: " + "x" * 2000 + "\n")
    monkeypatch.setenv("EESSI_PIPELINE_YAML_MAX_BYTES", "1000")
    with pytest.raises(PipelineError, match="larger than 1000 bytes"):
        load_yaml(f)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(_json)
def test_property_bounded_loading_reads_every_ordinary_document_unchanged(doc: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "doc.yaml"
        f.write_text(yaml.safe_dump(doc))
        assert load_yaml(f) == doc


# --- trust files under a permissive umask ---------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_trust_files_are_created_without_write_for_others_under_umask_000(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _umask(0):
        key = state / "keys" / "build-node"
        signing.ensure_signing_key(key, "builder@node", state / "keys" / "allowed_signers")
        create_keys(KeyPaths(state / "keys", "software.eessi.local"))
        tarball = tmp_path / "eessi-2023.06-init-1700000000.tar.gz"
        tarball.write_bytes(b"not judged here")
        tarball.chmod(0o666)
        for companion in (".gate.json", ".gate.json.sig"):
            Path(f"{tarball}{companion}").write_text("{}")
        staging = Staging(state)
        staging.stage(tarball, Path(f"{tarball}.gate.json"), Path(f"{tarball}.gate.json.sig"))
        staging.remember(tarball.name, "staged", "2026-01-01T00:00:00+00:00", "a" * 64)
    for d in (state, state / "keys", state / "staging", state / "staging" / "new"):
        assert _mode(d) == 0o755, d
    for f in ("allowed_signers", "build-node.pub", "software.eessi.local.crt", "software.eessi.local.pub"):
        assert _mode(state / "keys" / f) == 0o644, f
    for f in ("build-node", "software.eessi.local.key", "software.eessi.local.masterkey"):
        assert _mode(state / "keys" / f) == 0o600, f
    new = state / "staging" / "new"
    for f in (new / tarball.name, new / f"{tarball.name}.gate.json", state / "staging" / "moves.jsonl",
              state / "staging" / "history" / f"{tarball.name}.jsonl"):  # fmt: skip
        assert _mode(f) == 0o644, f


def test_trust_files_writable_by_others_are_refused_at_use(tmp_path: Path) -> None:
    key, allowed = tmp_path / "keys" / "build-node", tmp_path / "keys" / "allowed_signers"
    signing.ensure_signing_key(key, "builder@node", allowed)
    record = tmp_path / "r.gate.json"
    record.write_text("{}\n")
    sig = signing.sign(key, record)
    assert signing.verify(record, sig, allowed).ok
    allowed.chmod(0o666)
    check = signing.verify(record, sig, allowed)
    assert not check.ok and "writable by other users" in check.reason and "chmod o-w" in check.reason
    allowed.chmod(0o644)
    allowed.parent.chmod(0o777)  # anyone could replace the file
    assert not signing.verify(record, sig, allowed).ok
    allowed.parent.chmod(0o755)
    staging = tmp_path / "state" / "staging"
    staging.mkdir(parents=True)
    staging.chmod(0o777)
    with pytest.raises(GateRefused, match="staging area is writable by other users"):
        Staging(tmp_path / "state")._ensure("new")
    allowed.chmod(0o646)
    with pytest.raises(TrustError, match="allowed_signers file is writable"):
        refuse_if_writable(allowed, "the allowed_signers file")


# --- locks keep their holder's name -----------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from eessi_pipeline.locks import wait_lock
with wait_lock(Path(sys.argv[1]), 5, "test lock"):
    print("held", flush=True)
    time.sleep(30)
"""


def test_a_waiter_that_gives_up_leaves_the_holder_named(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for _ in range(2):  # the second waiter still learns who holds it
            with pytest.raises(PipelineError, match=f"locked by pid {holder.pid} since"), \
                    wait_lock(lock, 0.2, "test lock"):  # fmt: skip
                pass
        assert lock.read_text().startswith(f"pid {holder.pid} ")
    finally:
        holder.kill()
        holder.wait()
    with wait_lock(lock, 5, "test lock"):
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    assert lock.read_text() == ""


def test_a_master_public_key_others_can_write_is_refused_by_client_and_verify(tmp_path: Path) -> None:
    from eessi_pipeline.cvmfs.client import ClientConfig, open_client
    from eessi_pipeline.cvmfs.repository import Repository

    repo = Repository(tmp_path / "state", "software.eessi.local")
    repo.init()
    key = repo.paths.keys.master_public
    key.chmod(0o666)
    config = ClientConfig(repo.paths.name, ("http://127.0.0.1:9/cvmfs",), tmp_path / "cache", key)
    with pytest.raises(PipelineError, match="master public key is writable by other users"):
        open_client(config)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["repo", "verify", str(repo.paths.root), "--master-key", str(key)], out=io.StringIO())
    assert code == 1 and "chmod o-w" in err.getvalue(), err.getvalue()
