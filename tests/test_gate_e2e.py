"""Gate and publish end to end through the command line: test → record → stage → publish →
Stratum 1 snapshot → post-publish checks, and a tampered tarball refused on the same path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_ports

from eessi_pipeline import cli


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists() or not Path("/usr/sbin/squid").exists(),
                    reason="nginx and squid are not installed (bash setup.sh)")  # fmt: skip
def test_gate_publish_distribute_and_refuse_tampering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    for var, value in {"EESSI_PIPELINE_STATE_DIR": str(state), "EESSI_PIPELINE_REPOSITORY": "gate.eessi.local",
                       "EESSI_PIPELINE_STRATUM0_PORT": str(free_ports()[0]),
                       "EESSI_PIPELINE_STRATUM1_PORT": str(free_ports()[0]),
                       "EESSI_PIPELINE_PROXY_PORT": str(free_ports()[0])}.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)

    def run(*argv: str, expect: int = 0) -> str:
        out = io.StringIO()
        code = cli.main(list(argv), out=out)
        assert code == expect, f"{argv}: {err.getvalue()[-3000:]}"
        return out.getvalue()

    run("repo", "init", "gate.eessi.local")
    state.chmod(0o755)
    tarball = Path(run("init", "build", "--out", str(tmp_path), "--stamp", "1700000000").strip())
    junit = tmp_path / "junit.xml"
    project = Path(__file__).resolve().parent.parent
    tested = subprocess.run([sys.executable, "-m", "pytest", "tests/test_initscript.py", "-q", "-p", "no:cacheprovider",
                             f"--junitxml={junit}", "-k", "agrees and zen3"], cwd=project, capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-2000:]
    run("gate", "record", "--tarball", str(tarball), "--junit", str(junit), "--stage")
    run("stratum", "up")
    try:
        assert "published as revision 2" in run("publish")
        audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
        assert audit[0]["outcome"] == "ingested"
        assert audit[-1] == {"outcome": "passed", "post_publish_checks": "tests/infra", "revision": 2}
        # a second tarball, changed after its green run was recorded and staged
        other = Path(run("init", "build", "--out", str(tmp_path / "second"), "--stamp", "1700000100").strip())
        run("gate", "record", "--tarball", str(other), "--junit", str(junit), "--stage")
        staged = state / "staging" / "new" / other.name
        staged.write_bytes(staged.read_bytes() + b"\0" * 1024)
        manifest = (state / "srv" / "cvmfs" / "gate.eessi.local" / ".cvmfspublished").read_bytes()
        refused = run("publish", expect=1)
        assert "refused" in refused and other.name in refused
        assert (state / "srv" / "cvmfs" / "gate.eessi.local" / ".cvmfspublished").read_bytes() == manifest
    finally:
        run("stratum", "down")
