"""The embedded Slurm cluster: its configuration (pure) and real slurmctld/slurmd runs (root)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path

import pytest
from cluster_helpers import needs_slurm, running_cluster
from helpers import free_ports

from eessi_pipeline.cli import main
from eessi_pipeline.cluster.config import (
    ClusterPorts,
    plan_cluster,
    render_slurm_conf,
    resolve_network,
    resolve_ports,
)
from eessi_pipeline.cluster.manager import Cluster
from eessi_pipeline.cluster.netns import listeners_in_netns
from eessi_pipeline.cluster.view import ViewMounts
from eessi_pipeline.errors import ClusterError
from eessi_pipeline.services import sockets

NET = ipaddress.IPv4Network("10.213.7.0/24")


def _plan(nodes: int, address: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    return plan_cluster(Path("/s/cluster"), nodes=nodes, ports=ClusterPorts(20001, 20002), cpus=2,
                        memory_mib=1000, hostname="vm", host_address=address, network=NET)  # fmt: skip


def test_one_node_binds_loopback_and_names_its_paths() -> None:
    text = render_slurm_conf(_plan(1))
    assert "SlurmctldHost=vm(127.0.0.1)" in text
    assert "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny" in text
    assert "SlurmctldPort=20001" in text and "SlurmdPort=20002" in text
    assert "NodeName=n1 NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN" in text
    assert "PartitionName=eessi Nodes=n1 Default=YES" in text
    assert "StateSaveLocation=/s/cluster/ctld-state" in text
    assert "AuthType=auth/none" in text and "ProctrackType=proctrack/linuxproc" in text


def test_two_nodes_get_private_addresses_and_host_names() -> None:
    plan = _plan(2)
    text = render_slurm_conf(plan)
    assert plan.namespaced and plan.control_address == "10.213.7.1"
    assert "NodeName=n1 NodeAddr=10.213.7.2 NodeHostname=n1" in text
    assert "NodeName=n2 NodeAddr=10.213.7.3 NodeHostname=n2" in text
    assert "SlurmctldHost=vm(10.213.7.1)" in text
    assert "CommunicationParameters" not in text  # each daemon is alone in its namespace


def test_one_node_refuses_a_host_name_that_is_not_loopback() -> None:
    with pytest.raises(
        ClusterError, match=r"resolves to 192\.0\.2\.5, not to a loopback address.*127\.0\.1\.1"
    ):
        _plan(1, "192.0.2.5")


@pytest.mark.parametrize("nodes", [0, 9])
def test_node_count_is_bounded(nodes: int) -> None:
    with pytest.raises(ClusterError, match="give 1 to 8 nodes"):
        _plan(nodes)


def test_ports_command_line_then_environment_then_default() -> None:
    assert resolve_ports(environ={}) == ClusterPorts(16817, 16818)
    env = {"EESSI_PIPELINE_SLURMCTLD_PORT": "30001"}
    assert resolve_ports(environ=env) == ClusterPorts(30001, 16818)
    assert resolve_ports(slurmctld=30005, environ=env) == ClusterPorts(30005, 16818)
    with pytest.raises(ClusterError, match="EESSI_PIPELINE_SLURMD_PORT='x' is not a port number"):
        resolve_ports(environ={"EESSI_PIPELINE_SLURMD_PORT": "x"})
    with pytest.raises(ClusterError, match="would both use port 16818"):
        resolve_ports(slurmctld=16818, environ={})


@pytest.mark.parametrize("text", ["8.8.8.0/24", "127.0.0.0/8", "10.0.0.0/30", "nonsense"])
def test_network_must_be_a_private_range(text: str) -> None:
    with pytest.raises(ClusterError, match="--network"):
        resolve_network(text, {})


def test_view_mounts_are_read_only() -> None:
    view = ViewMounts("/cvmfs", "/cvmfs/r", ("/s/upper", "/s/lower"), (("/s/compat", "/cvmfs/r/compat"),))
    argvs = view.mount_argvs()
    assert argvs[0][:4] == ["mount", "-t", "tmpfs", "-o"] and argvs[0][-1] == "/cvmfs"
    assert [
        "mount",
        "-t",
        "overlay",
        "-o",
        "ro,lowerdir=/s/upper:/s/lower",
        "eessi-view",
        "/cvmfs/r",
    ] in argvs
    assert argvs[-1] == ["mount", "--bind", "-o", "ro", "/s/compat", "/cvmfs/r/compat"]
    assert view.unmount_argvs() == [["umount", "-R", "-l", "/cvmfs"]]


# --- real Slurm ---------------------------------------------------------------------------------------


def _ours_running(cluster: Cluster) -> list[str]:
    markers = [str(cluster.conf), f"{cluster.root}/ns/"]
    return [p.command for p in sockets.all_processes() if p.alive and any(m in p.command for m in markers)]


@needs_slurm
def test_one_node_cluster_runs_jobs_on_loopback_and_goes_away(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "state") as cluster:
        status = cluster.status()
        assert status.healthy, status.to_json()
        assert [n.state for n in status.nodes] == ["idle"]
        ports = {cluster.plan.ports.slurmctld, cluster.plan.ports.slurmd}
        mine = [s for s in sockets.listeners(("tcp", "tcp6")) if s.port in ports]
        assert mine and all(s.is_loopback for s in mine), mine
        assert cluster.up().action == "already running"
        done = cluster.client_run(["srun", "-n", "2", "sh", "-c", "echo task $SLURM_PROCID"])
        assert sorted(done.stdout.split("\n")[:2]) == ["task 0", "task 1"]
        script = tmp_path / "job.sh"
        script.write_text("#!/bin/sh\necho job $SLURM_JOB_ID on $SLURMD_NODENAME\n", encoding="utf-8")
        out = tmp_path / "job.out"
        cluster.client_run(["sbatch", "--wait", "-o", str(out), str(script)], timeout=120)
        assert out.read_text().startswith("job ") and out.read_text().strip().endswith("on n1")
    assert _ours_running(cluster) == []
    assert not cluster.status().healthy


@needs_slurm
def test_a_taken_port_is_refused_naming_it(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        cluster = Cluster(tmp_path / "state", ports=ClusterPorts(port, free_ports(1)[0]), environ={})
        with pytest.raises(
            ClusterError, match=rf"slurmctld: port {port} on 127\.0\.0\.1 is already in use by pid"
        ):
            cluster.up()
    assert _ours_running(cluster) == []


@needs_slurm
def test_cli_up_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    ctld, slurmd = map(str, free_ports(2))
    try:
        assert (
            main(["--state-dir", state, "cluster", "up", "--slurmctld-port", ctld, "--slurmd-port", slurmd])
            == 0
        )
        assert main(["--state-dir", state, "cluster", "status", "--json"]) == 0
        out = capsys.readouterr().out
        status = json.loads(out[out.index('{\n  "action": "running"') :])
        assert status["healthy"] and status["nodes"][0]["state"] == "idle"
        assert main(["--state-dir", state, "cluster", "exec", "--", "sinfo", "-h", "-o", "%P %D %T"]) == 0
        assert "eessi* 1 idle" in capsys.readouterr().out
    finally:
        assert main(["--state-dir", state, "cluster", "down"]) == 0
    assert main(["--state-dir", state, "cluster", "status"]) == 1
    assert "cluster up" in capsys.readouterr().err


@needs_slurm
@pytest.mark.slow
def test_two_nodes_are_two_hosts_to_slurm_and_srun(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "state", nodes=2) as cluster:
        status = cluster.status()
        assert status.healthy and [n.address for n in status.nodes] == ["10.213.7.2", "10.213.7.3"]
        done = cluster.client_run(["srun", "-N", "2", "-n", "2", "--ntasks-per-node=1", "sh", "-c",
                                   "echo $(hostname) $SLURMD_NODENAME"])  # fmt: skip
        assert sorted(done.stdout.splitlines()) == ["n1 n1", "n2 n2"]
        # nothing of this cluster listens in the host's network namespace; in their own, each daemon does
        pids = [status.ctld_pid, *(n.pid for n in status.nodes)]
        assert all(pids) and sockets.listeners_of(p for p in pids if p) == []
        head = listeners_in_netns(status.ctld_pid or 0)
        assert [(s.address, s.port) for s in head] == [("0.0.0.0", cluster.plan.ports.slurmctld)]
    assert _ours_running(cluster) == []


# --- builds as jobs, and the checks' Slurm configuration (pure) ------------------------------------------


def test_build_job_script_runs_the_local_build_on_the_node(tmp_path: Path) -> None:
    from eessi_pipeline.cluster.jobs import BuildJob, job_script, sbatch_argv

    text = job_script("/v/bin/python", Path("/src"), ["--state-dir", "/s", "build", "--target", "zen4"])
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert text.rstrip().endswith(
        "exec /v/bin/python -m eessi_pipeline.cli --state-dir /s build --target zen4"
    )
    job = BuildJob(
        "b", tmp_path / "b.sh", tmp_path / "b.json", tmp_path / "b.log", Path("/src"), ("-p", "x"), 4
    )
    argv = sbatch_argv(job)
    assert argv[:3] == ["sbatch", "--parsable", "--wait"] and argv[-1] == str(tmp_path / "b.sh")
    assert (
        "--cpus-per-task=4" in argv and f"--error={tmp_path / 'b.log'}" in argv and argv[-3:-1] == ["-p", "x"]
    )


def test_pytest_argv_selects_the_scheduler(tmp_path: Path) -> None:
    from eessi_pipeline.acceptance import TestRunPaths, pytest_argv
    from eessi_pipeline.matrix import load_matrix

    target = load_matrix().target("zen4")
    paths = TestRunPaths.under(tmp_path, target)
    assert not [a for a in pytest_argv("py", target, paths, tmp_path, True) if "scheduler" in a]
    argv = pytest_argv("py", target, paths, tmp_path, True, "slurm", Path("/site.yaml"))
    assert "--eessi-scheduler=slurm" in argv and "--eessi-site=/site.yaml" in argv


def test_embedded_site_is_a_site_like_any_other(tmp_path: Path) -> None:
    from eessi_pipeline.checks.rfmconfig import TargetPrefix, config
    from eessi_pipeline.checks.scheduler import embedded_site
    from eessi_pipeline.matrix import load_matrix

    target = load_matrix().target("zen4")
    cluster = Cluster(tmp_path, nodes=2, ports=ClusterPorts(20001, 20002), environ={})
    site = embedded_site(cluster, [target])
    cfg = config([TargetPrefix(target, "/cvmfs/r/z")], 2, site)
    (part,) = cfg["systems"][0]["partitions"]
    assert cfg["systems"][0]["name"] == "eessi_cluster" and part["name"] == "eessi_zen4"
    assert part["scheduler"] == "squeue" and part["launcher"] == "srun"
    assert part["access"] == ["--partition=eessi"] and part["extras"] == {"num_nodes": 2}
    assert "slurm" in part["features"] and part["sched_options"] == {"ignore_reqnodenotavail": True}


@needs_slurm
def test_a_failed_build_job_is_refused_quoting_its_log(tmp_path: Path) -> None:
    from eessi_pipeline.cluster.jobs import BuildJob, submit_build

    with running_cluster(tmp_path / "state") as cluster:
        job = BuildJob("fails", tmp_path / "j.sh", tmp_path / "j.json", tmp_path / "j.log", tmp_path,
                       ("--partition=eessi",), 1, "0:05:00")  # fmt: skip
        script = "#!/bin/bash\necho 'eb: the easyconfig is broken' >&2\nexit 3\n"
        with pytest.raises(ClusterError, match=r"(?s)job \d+ exited 3.*the easyconfig is broken"):
            submit_build(job, script, client_prefix=cluster.client_prefix(), env=cluster.client_env())


def tarball_fingerprint(path: Path) -> dict[str, str]:
    """Member name -> sha256 (or link target) of a software tarball, leaving out what differs between any
    two builds of the same inputs: EasyBuild's logs (named by time), .pyc files (they hold the source's
    mtime), the devel module (EasyBuild's random temporary paths), and pip's RECORD and direct_url.json
    (the path of the wheel in the state dir)."""
    import hashlib
    import re
    import tarfile

    skip = re.compile(r"(\d{8}\.\d{6}.*\.(log|md)$|\.pyc$|-easybuild-devel$|/RECORD$|/direct_url\.json$)")
    out: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if skip.search(m.name):
                continue
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = (
                hashlib.sha256(f.read()).hexdigest() if f is not None else f"{m.type!r}:{m.linkname}"
            )
    return out


@needs_slurm
@pytest.mark.slow
def test_build_as_a_job_makes_the_local_builds_tarball(
    tmp_path: Path, software_build, eessi_version: str, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    local = software_build("x86_64_generic")
    state = tmp_path / "state"
    with running_cluster(state):
        argv = ["--state-dir", str(state), "build", "--target", "x86_64_generic", "--stack-version",
                eessi_version, "--scheduler", "slurm", "--json"]  # fmt: skip
        assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["job_id"].isdigit() and not summary["reused"]
    job_tarball = Path(summary["tarball"])
    assert job_tarball.is_relative_to(state) and job_tarball.name != local.tarball.name
    ours, theirs = tarball_fingerprint(job_tarball), tarball_fingerprint(local.tarball)
    assert sorted(ours) == sorted(theirs)
    assert [n for n in ours if ours[n] != theirs[n]] == []
    assert any(n.endswith("/bin/stream") for n in ours)


@needs_slurm
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the build overlay at /cvmfs needs root")
def test_checks_run_as_jobs_on_two_nodes(tmp_path: Path, software_build) -> None:  # type: ignore[no-untyped-def]
    from eessi_pipeline.checks.rfmconfig import TargetPrefix
    from eessi_pipeline.checks.scheduler import run_checks_on_slurm, slurm_run
    from eessi_pipeline.matrix import load_matrix

    target = load_matrix().target("x86_64_generic")
    built = software_build(target.name)
    with running_cluster(tmp_path / "state", nodes=2) as cluster:
        slurm = slurm_run(cluster.state_dir, [target])
        outcome = run_checks_on_slurm(
            built.overlay, TargetPrefix(target, built.plan.prefix), tmp_path / "rfm", slurm
        )
    result = outcome.result
    assert result.ok and outcome.returncode == 0, result.failures
    assert {c.system for c in result.cases} == {"eessi_cluster:eessi_x86_64_generic"}
    assert all(c.scheduler == "squeue" and c.job_id.isdigit() for c in result.cases)
    two = result.case("stream_check %scale=2_nodes")
    assert two is not None and two.result == "pass"
    outputs = (tmp_path / "rfm" / "rfm" / "output").rglob("rfm_job.out")
    (out,) = [p for p in outputs if "task host:" in p.read_text()]  # the 2_nodes case's output
    assert sorted(line for line in out.read_text().splitlines() if line.startswith("task host:")) == [
        "task host: n1",
        "task host: n2",
    ]


def test_a_site_file_names_a_real_clusters_partition_and_nothing_embedded(tmp_path: Path) -> None:
    from eessi_pipeline.checks.rfmconfig import SITE_EXAMPLE
    from eessi_pipeline.checks.scheduler import slurm_run
    from eessi_pipeline.matrix import load_matrix

    target = load_matrix().target("zen2")
    slurm = slurm_run(tmp_path, [target], SITE_EXAMPLE)
    assert slurm.cluster is None and slurm.client_prefix == () and dict(slurm.env) == {}
    sp = slurm.partition(target)
    assert (sp.name, sp.access, sp.scheduler, sp.num_nodes) == (
        "rome",
        ("--partition=rome", "--account=proj0001"),
        "slurm",
        64,
    )
    with pytest.raises(Exception, match="no partition of site 'example_cluster' tests zen3"):
        slurm.partition(load_matrix().target("zen3"))


@needs_slurm
def test_checks_on_slurm_refuse_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    from eessi_pipeline.checks.scheduler import slurm_run
    from eessi_pipeline.matrix import load_matrix

    with pytest.raises(
        ClusterError, match=r"not ready \(slurmctld is not running\); start it with .*cluster up"
    ):
        slurm_run(tmp_path, [load_matrix().target("zen4")])


def test_spool_moves_under_run_when_step_sockets_would_not_fit() -> None:
    from eessi_pipeline.cluster.config import SOCKET_PATH_MAX, spool_for

    assert spool_for(Path("/s/cluster")) == Path("/s/cluster/spool")
    deep = Path("/tmp/" + "x" * 80 + "/cluster")
    moved = spool_for(deep)
    assert moved.parent == Path("/run/eessi-slurm") and moved == spool_for(deep)
    assert len(f"{moved}/n8/n8_4294967294.4294967294") <= SOCKET_PATH_MAX
    assert "JobRequeue=0" in render_slurm_conf(_plan(1))
