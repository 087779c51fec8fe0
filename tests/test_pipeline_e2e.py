"""The whole flow on the embedded defaults, as the README's main job runs it (slow: a real build).

``eessi-pipeline run`` on this host's target publishes EESSI's three layers: the family's compatibility
layer, the init scripts and the target's software (built on the layer) are built, tested (pytest +
ReFrame), recorded and signed by the gate, published into the embedded Stratum 0 in that order, the
``host_injections`` variant symlink is added, the Stratum 1 replicates, the post-publish infra tests
run, and finally the stack is used: a client mounts ``/cvmfs/<repo>`` (in a private namespace) through
squid, and for ``init/bash`` and ``init/lmod/bash`` the layer's bash sources it, lists and loads every
module and runs each smoke command; the maps of every process (``/proc/<pid>/maps``, sampled while it
runs) name only files of ``/cvmfs/<repo>``, the layer's loader and libc among them.  Afterwards the
services are down and the host's ``/cvmfs`` carries no mount.  A second run changes nothing in the
repository and says so for each layer.
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
    assert set(published) == {"compat", "init", "software"} and all(p["accepted"] for p in published.values())
    # EESSI's order: the compatibility layer, then init, then the software that runs on them
    assert published["compat"]["revision"] + 1 == published["init"]["revision"]
    assert published["init"]["revision"] + 1 == published["software"]["revision"]
    assert summary["host_injections_revision"] == published["software"]["revision"] + 1
    for layer in ("compat layer", "init scripts", "software for"):
        assert f"[run] {layer}" in done.stderr  # progress for each layer
    output = summary["use"]["output"]
    assert f"Environment set up to use {REPO} 2023.06 ({target.subdir})" in output
    assert "Solution Validates" in output
    assert "host_injections -> /opt/eessi" in output  # the variant symlink, expanded by the client
    compat = f"/cvmfs/{REPO}/versions/2023.06/compat/linux/{target.family}"
    _assert_ran_on_the_layer(summary, compat, target.subdir)
    assert summary["test"]["failed"] == 0 and summary["test"]["tests"] > 0
    assert Path(summary["test"]["reframe_report"]).is_file()
    assert Path(summary["test"]["html_report"]).is_file()
    assert summary["test"]["gate_record"].endswith(f"{published['software']['tarball']}.gate.json")
    # the published repository: signed, complete, and holding the modules that were tested
    with open_repository(str(state / "srv" / "cvmfs" / REPO)) as reader:
        assert reader.manifest.revision == summary["host_injections_revision"]
        modules = f"/versions/2023.06/software/linux/{target.subdir}/modules/all"
        assert {e.name for e in reader.listdir(modules)} >= {
            m.split("/")[0] for m in summary["use"]["modules"]
        }
        assert reader.lookup("/host_injections").symlink == "$(EESSI_HOST_INJECTIONS:-/opt/eessi)"
        init = "/versions/2023.06/init"
        assert {"bash", "lmod", "modules"} <= {e.name for e in reader.listdir(init)}
        assert reader.lookup(f"{init}/lmod/bash") and reader.lookup(f"{init}/modules/EESSI/2023.06.lua")
        software = f"/versions/2023.06/software/linux/{target.subdir}"
        assert {"lmodrc.lua", "SitePackage.lua", "cache"} <= {
            e.name for e in reader.listdir(f"{software}/.lmod")
        }
        layer = compat[len("/cvmfs/" + REPO) :]
        lmod = reader.lookup(f"{layer}/usr/share/Lmod")  # where EESSI's init looks: the relocated Debian lmod
        assert lmod is not None and lmod.symlink == "lmod/lmod"  # init/bash sources it in the use step
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [a["outcome"] for a in audit if "tarball" in a] == ["ingested", "ingested", "ingested"]
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
    assert second["compat"]["tarball"] is None and second["host_injections_revision"] is None
    for layer in ("compat", "init", "software"):
        assert f"[run] {layer}: nothing new to publish" in again.stderr
    assert "the repository already has this layer" in again.stderr
    assert "Solution Validates" in second["use"]["output"]
    _assert_ran_on_the_layer(second, compat, target.subdir)
    with open_repository(str(state / "srv" / "cvmfs" / REPO)) as reader:
        assert reader.manifest.revision == summary["host_injections_revision"]


def _assert_ran_on_the_layer(summary: dict, compat: str, subdir: str) -> None:
    """Read the maps sampled from every process of the use step (both entry points): each smoke
    command's process maps the layer's loader and libc, and no process maps a file outside /cvmfs."""
    repo = f"/cvmfs/{REPO}/"
    for entry in ("bash", "lmod/bash"):
        result = json.loads(Path(summary["use"]["entries"][entry]["result"]).read_text())
        runs = [result["setup"], *(c["run"] for c in result["commands"])]
        assert len(runs) == 1 + len(summary["use"]["modules"])
        for run in runs:
            assert run["returncode"] == 0 and run["held"] and run["processes"], run["output"]
        assert f"{compat}/bin/bash" in {p["exe"] for p in result["setup"]["processes"]}
        for command in result["commands"]:
            for proc in command["run"]["processes"]:
                files = [f for f in proc["files"] if not f.startswith(("/dev/", "/memfd:", "/SYSV"))]
                assert proc["exe"].startswith(repo) and all(f.startswith(repo) for f in files), proc
                libdir = f"{compat}/lib/{compat.rsplit('/', 1)[1]}-linux-gnu"  # the layer's multiarch dir
                assert any(f.startswith(f"{libdir}/ld-linux") for f in files), proc["exe"]  # its loader
                assert f"{libdir}/libc.so.6" in files, proc["exe"]
        stream = next(c for c in result["commands"] if c["module"].startswith("STREAM/"))
        assert stream["run"]["processes"][0]["exe"].endswith(
            f"{subdir}/software/STREAM/5.10-hpcc-1.5.0/bin/stream"
        )
        numpy = next(c for c in result["commands"] if c["module"].startswith("SciPy-bundle/"))
        (python,) = numpy["run"]["processes"]
        assert python["exe"].startswith(f"{compat}/usr/bin/python3")  # the layer's Python
        assert any("_multiarray_umath" in f for f in python["files"])
