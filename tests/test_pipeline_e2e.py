"""The whole flow on the embedded defaults, as the README's main job runs it (slow: a real build).

``eessi-pipeline run`` on this host's target: init scripts and the target's software are built,
tested (pytest + ReFrame), recorded and signed by the gate, published into the embedded Stratum 0,
replicated to the Stratum 1, checked by the post-publish infra tests, and finally used: a client
mounts ``/cvmfs/<repo>`` (in a private namespace) through squid, sources the published init
script, loads every module and runs STREAM.  Afterwards the services are down and the host's
``/cvmfs`` carries no mount.  A second run changes nothing in the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_ports

from eessi_pipeline.arch.cpuinfo import read_host_cpu
from eessi_pipeline.arch.select import select_target
from eessi_pipeline.cvmfs.reader import open_repository
from eessi_pipeline.matrix import load_matrix

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay and the private /cvmfs need root"),
    pytest.mark.skipif(
        not Path("/usr/sbin/nginx").exists() or not Path("/usr/sbin/squid").exists(),
        reason="nginx and squid are not installed (bash setup.sh)",
    ),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
]
PROJECT = Path(__file__).resolve().parent.parent
REPO = "software.eessi.local"


def _cvmfs_mounts() -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith("/cvmfs")]


def test_run_builds_tests_gates_publishes_and_serves_the_host_target(tmp_path: Path) -> None:
    matrix = load_matrix()
    target = select_target(read_host_cpu(None), matrix).target
    assert target is not None
    state = tmp_path / "state"
    s0, s1, proxy = free_ports(3)
    env = {**os.environ, "EESSI_PIPELINE_STATE_DIR": str(state), "EESSI_PIPELINE_REPOSITORY": REPO,
           "EESSI_PIPELINE_STRATUM0_PORT": str(s0), "EESSI_PIPELINE_STRATUM1_PORT": str(s1),
           "EESSI_PIPELINE_PROXY_PORT": str(proxy)}  # fmt: skip
    env.pop("EESSI_PIPELINE_CHECK_TARGETS", None)
    mounts_before = _cvmfs_mounts()
    done = subprocess.run([sys.executable, "-m", "eessi_pipeline.cli", "run", "--json"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=1500, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["target"] == target.name
    published = {p["tarball"].split("-")[2]: p for p in summary["published"]}
    assert set(published) == {"init", "software"} and all(p["accepted"] for p in published.values())
    assert published["software"]["revision"] == published["init"]["revision"] + 1  # init first
    output = summary["use"]["output"]
    assert f"Environment set up to use {REPO} 2023.06 ({target.subdir})" in output
    assert "Solution Validates" in output
    assert summary["test"]["failed"] == 0 and summary["test"]["tests"] > 0
    assert Path(summary["test"]["reframe_report"]).is_file()
    assert Path(summary["test"]["html_report"]).is_file()
    assert summary["test"]["gate_record"].endswith(f"{published['software']['tarball']}.gate.json")
    # the published repository: signed, complete, and holding the modules that were tested
    with open_repository(str(state / "srv" / "cvmfs" / REPO)) as reader:
        assert reader.manifest.revision == published["software"]["revision"]
        modules = f"/versions/2023.06/software/linux/{target.subdir}/modules/all"
        assert {e.name for e in reader.listdir(modules)} >= {
            m.split("/")[0] for m in summary["use"]["modules"]
        }
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [a["outcome"] for a in audit if "tarball" in a] == ["ingested", "ingested"]
    assert audit[-1]["outcome"] == "passed"  # the post-publish infra checks
    # nothing is left behind: services down, no mount on the host
    status = subprocess.run([sys.executable, "-m", "eessi_pipeline.cli", "stratum", "status", "--json"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert not any(s["running"] for s in json.loads(status.stdout)["services"])
    assert _cvmfs_mounts() == mounts_before
    # the main job again (bash setup.sh twice): the build is reused, its new green record finds the
    # tarball already published, nothing is ingested twice, and the stack still works
    again = subprocess.run([sys.executable, "-m", "eessi_pipeline.cli", "run", "--json"], cwd=PROJECT, env=env,
                           capture_output=True, text=True, timeout=1500, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads(again.stdout)
    assert second["published"] == [] and "already published" in again.stderr
    assert "Solution Validates" in second["use"]["output"]
    with open_repository(str(state / "srv" / "cvmfs" / REPO)) as reader:
        assert reader.manifest.revision == published["software"]["revision"]
