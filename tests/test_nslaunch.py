"""The one mount-namespace launcher: its plan as data, its exit codes, and its mounts for real (root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eessi_pipeline import nslaunch
from eessi_pipeline.compat.runner import LayerView
from eessi_pipeline.cvmfs.nsrun import mount_plan
from eessi_pipeline.nslaunch import Mount, Spec

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def test_plan_round_trips_through_json():
    spec = Spec(
        (
            Mount("tmpfs", "/cvmfs"),
            Mount("bind", "/cvmfs/r/p", source="/s", readonly=True),
            Mount("overlay", "/cvmfs/r", lower=("/a", "/b"), upper="/u", work="/w", fuse="fuse-overlayfs"),
            Mount("fuse", "/cvmfs/q", argv=("d", "x"), log="/l", new_session=True),
        ),
        hint="try root",
    )
    assert nslaunch.from_json(nslaunch.to_json(spec)) == spec
    assert nslaunch.overlay_data(spec.mounts[2]) == "lowerdir=/a:/b,upperdir=/u,workdir=/w"


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"mounts": [{"kind": "nfs", "target": "/x"}]}',
        '{"mounts": [{"kind": "bind", "target": "/x"}]}',
        '{"mounts": [{"kind": "tmpfs", "target": "/x", "bogus": 1}]}',
        '{"mounts": [{"kind": "fuse", "target": "/x"}]}',
        "{not json",
    ],
    ids=[
        "not-an-object",
        "unknown-kind",
        "bind-without-source",
        "unknown-field",
        "fuse-without-daemon",
        "bad-json",
    ],
)
def test_bad_plans_exit_2_with_one_line(text, capsys):
    assert nslaunch.main([text, "--", "true"]) == nslaunch.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("nslaunch: bad mount plan: ") and "usage: nslaunch.py" in err


@pytest.mark.parametrize("argv", [[], ["{}"], ['{"mounts": []}', "true"], ['{"mounts": []}', "--"]])
def test_usage_errors_exit_2(argv, capsys):
    assert nslaunch.main(argv) == nslaunch.EXIT_USAGE
    assert "usage: nslaunch.py" in capsys.readouterr().err


def test_layer_view_plan_covers_and_binds_read_only(tmp_path):
    view = LayerView(tmp_path / "layer", "/cvmfs/r/versions/1/compat/linux/x86_64", python="py")
    assert view.mounts().mounts == (
        Mount("tmpfs", "/cvmfs"),
        Mount("bind", view.prefix, source=str(tmp_path / "layer"), readonly=True),
    )
    argv = view.wrap(["ls"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert nslaunch.from_json(argv[9]) == view.mounts() and argv[-2:] == ["--", "ls"]
    writable = LayerView(Path("/cvmfs/r/stage"), "/cvmfs/r/versions/1", writable=True)
    assert writable.mounts().mounts == (Mount("bind", "/cvmfs/r/versions/1", source="/cvmfs/r/stage"),)


def test_client_plan_runs_the_fuse_daemon_in_its_own_session(tmp_path):
    spec = mount_plan("py", tmp_path / "c.json", "/cvmfs/r", tmp_path / "c.log")
    tmpfs, client = spec.mounts
    assert tmpfs == Mount("tmpfs", "/cvmfs")
    assert client.kind == "fuse" and client.target == "/cvmfs/r" and client.new_session
    assert client.argv == ("py", "-m", "eessi_pipeline.cvmfs.mount", str(tmp_path / "c.json"), "/cvmfs/r")


def test_launcher_imports_with_the_standard_library_only():
    done = subprocess.run(
        [sys.executable, "-I", "-S", nslaunch.LAUNCHER, "{}"], capture_output=True, text=True, check=False
    )
    assert done.returncode == nslaunch.EXIT_USAGE and "usage: nslaunch.py" in done.stderr


def _launch(spec: Spec, command: list[str]) -> subprocess.CompletedProcess[str]:
    argv = ["unshare", "--mount", "--propagation", "private", "--", *nslaunch.command_line(spec, command)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


@root_only
def test_tmpfs_and_read_only_bind_in_order_then_exec(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("hello\n")
    cover = tmp_path / "cover"
    cover.mkdir()
    (cover / "host-file").write_text("x")
    at = cover / "a" / "b"
    spec = Spec(
        (Mount("tmpfs", str(cover)), Mount("bind", str(at), source=str(tmp_path / "src"), readonly=True))
    )
    done = _launch(spec, ["sh", "-c", f"cat {at}/f; ls {cover}; touch {at}/g || echo read-only; exit 3"])
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["hello", "a", "read-only"]
    assert sorted(os.listdir(cover)) == ["host-file"]  # nothing reached the host


@root_only
def test_mount_failure_exits_126_and_a_missing_command_127(tmp_path):
    spec = Spec((Mount("bind", str(tmp_path / "t"), source=str(tmp_path / "missing")),), hint="try harder")
    done = _launch(spec, ["true"])
    assert done.returncode == nslaunch.EXIT_MOUNT
    assert done.stderr.startswith("nslaunch: cannot mount ") and done.stderr.strip().endswith("; try harder")
    assert len(done.stderr.strip().splitlines()) == 1
    done = _launch(Spec(()), ["/nonexistent/program"])
    assert (
        done.returncode == nslaunch.EXIT_NOT_RUN
        and "nslaunch: cannot run /nonexistent/program" in done.stderr
    )


@root_only
def test_a_fuse_daemon_that_never_mounts_exits_126_with_its_log(tmp_path):
    log = tmp_path / "d.log"
    daemon = ("sh", "-c", "echo no fuse here; exit 4")
    spec = Spec((Mount("fuse", str(tmp_path / "m"), argv=daemon, log=str(log)),))
    done = _launch(spec, ["true"])
    assert done.returncode == nslaunch.EXIT_MOUNT
    assert "did not mount" in done.stderr and "(exit 4): no fuse here" in done.stderr
