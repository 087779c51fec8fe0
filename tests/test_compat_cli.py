"""``eessi-pipeline compat build|check`` (eessi_pipeline/cli/compat.py), through the real main() error boundary."""

from __future__ import annotations

import io
import json
import platform
import shutil
from pathlib import Path

import pytest

from eessi_pipeline import cli
from eessi_pipeline.compat import gentoo_prefix
from eessi_pipeline.compat.fixtures import TEST_REPOSITORY, TEST_VERSION


@pytest.fixture
def main():
    """cli.main, the real entry point with its error boundary."""

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return cli.main(list(argv), out=out), out.getvalue()

    return run


def test_cli_compat_build_dry_run_shows_the_plan(main, tmp_path: Path) -> None:
    rc, out = main(
        "compat",
        "build",
        "--family",
        "x86_64",
        "--state-dir",
        str(tmp_path),
        "--version",
        "2023.06",
        "--dry-run",
    )
    assert rc == 0
    assert (
        "would build the debian layer for /cvmfs/software.eessi.local/versions/2023.06/compat/linux/x86_64"
        in out
    )
    assert "resolve:" in out and "relocate:" in out and "patchelf --set-interpreter" in out
    assert not (tmp_path / "compat").exists()


def test_cli_compat_build_dry_run_json_gentoo(main, tmp_path: Path) -> None:
    rc, out = main(
        "compat",
        "build",
        "--family",
        "x86_64",
        "--backend",
        "gentoo-prefix",
        "--state-dir",
        str(tmp_path),
        "--version",
        "2023.06",
        "--repo",
        "software.eessi.io",
        "--dry-run",
        "--json",
    )
    data = json.loads(out)
    assert rc == 0 and data["dry_run"] and data["backend"] == "gentoo-prefix"
    assert data["prefix"] == "/cvmfs/software.eessi.io/versions/2023.06/compat/linux/x86_64"
    assert data["steps"][1]["command"].split()[0].endswith("ansible-playbook")


def test_cli_compat_build_gentoo_here_exits_1_with_next_step(
    main, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(gentoo_prefix, "tcp_probe", lambda url, timeout=5.0: "cannot connect (no route)")
    monkeypatch.setattr(gentoo_prefix, "find_tool", lambda name: "/usr/bin/ansible-playbook")
    rc, _ = main(
        "compat", "build", "--family", "x86_64", "--backend", "gentoo-prefix", "--state-dir", str(tmp_path)
    )
    err = capsys.readouterr().err
    assert rc == 1 and "needs Gentoo's mirrors" in err and "run it on a build host" in err


def test_cli_compat_check_without_a_layer_says_build_first(main, tmp_path: Path, capsys) -> None:
    rc, _ = main(
        "compat", "check", "--family", "x86_64", "--state-dir", str(tmp_path), "--version", "2023.06"
    )
    assert rc == 1 and "run `eessi-pipeline compat build --family x86_64` first" in capsys.readouterr().err


def test_cli_compat_usage_errors_exit_2(main) -> None:
    assert main("compat", "build", "--family", "sparc")[0] == 2
    assert main("compat", "build")[0] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("apt-get") is None, reason="needs a Debian x86_64 host"
)
def test_cli_compat_build_reuses_and_check_passes(main, compat_layer, capsys) -> None:
    layer = compat_layer("x86_64")
    state = str(layer.spec.state_dir)
    common = (
        "--family",
        "x86_64",
        "--state-dir",
        state,
        "--version",
        TEST_VERSION,
        "--repo",
        TEST_REPOSITORY,
    )
    rc, out = main("compat", "build", *common)
    lines = out.splitlines()
    assert rc == 0 and lines[0] == str(layer.staging)
    assert Path(lines[1]).name.startswith("eessi-2023.06-compat-linux-x86_64-") and Path(lines[1]).is_file()
    assert Path(lines[1] + ".meta.txt").is_file()
    assert "reusing" in capsys.readouterr().err
    Path(lines[1]).unlink()
    Path(lines[1] + ".meta.txt").unlink()
    rc, out = main("compat", "check", *common, "--runner", "python", "--json")
    data = json.loads(out)
    assert rc == 0 and data["ok"] and len(data["checks"]) > 30, [c for c in data["checks"] if not c["ok"]]
