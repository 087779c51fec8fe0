"""What a new user meets first: a core install, quick start-up, clear refusals for bad input.

* a virtual environment with the core dependencies only (no pytest, ReFrame, EasyBuild) runs
  ``--help``, ``detect``, ``validate`` and ``publish --dry-run``, and a command that needs an extra
  names it;
* ``detect`` loads neither pytest nor the CVMFS writer, PyYAML or jsonschema once the matrix was
  checked (start-up time itself is measured in ``benchmarks/startup.py``, not here);
* every class of bad input file and bad state directory is a one-line refusal (exit 1) naming the
  path, never an unexpected error (exit 3);
* ``-V/--version`` is the program version; ``--stack-version`` selects the stack;
* ``bash setup.sh --help`` prints the usage and does nothing else.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from eessi_pipeline import __version__, cli
from eessi_pipeline.datacache import cache_dir

PROJECT = Path(__file__).resolve().parent.parent
ZEN3 = next((PROJECT / "tests" / "data" / "archdetect" / "x86_64" / "amd" / "zen3").glob("*.cpuinfo"))
TARBALL = "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch, state: Path, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(state))
    out = io.StringIO()
    code = cli.main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


# -- bad input files ---------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "empty").write_bytes(b"")
    (d / "binary").write_bytes(bytes(range(256)) * 16)
    huge = d / "huge"
    with huge.open("wb") as fh:  # sparse: 300 MB that cost no disk
        fh.truncate(300 << 20)
    (d / "adir").mkdir()
    return {
        "missing": d / "missing",
        "empty": d / "empty",
        "binary": d / "binary",
        "huge": huge,
        "directory": d / "adir",
        "device": Path("/dev/zero"),
    }


COMMANDS = {
    "detect --cpuinfo": ["detect", "--cpuinfo", "{f}"],
    "validate --matrix": ["validate", "--matrix", "{f}"],
    "publish --policy": ["publish", "--dry-run", "--policy", "{f}"],
    "gate record --junit": ["gate", "record", "--tarball", TARBALL, "--junit", "{f}"],
    "checks report --from": ["checks", "report", "--from", "{f}", "--out", "{out}"],
    "references update --from": ["references", "update", "--target", "zen3", "--from", "{f}", "--dry-run"],
    "repo ingest --tarball": ["repo", "ingest", "--tarball", "{f}", "--dry-run"],
}
# An empty file is a valid, empty JUnit/ReFrame/tar input for none of these, but cpuinfo and
# matrix refusals word it differently: all must be exit 1 with the path named.
KINDS = ["missing", "empty", "binary", "huge", "directory", "device"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_input_file_is_a_one_line_refusal_naming_it(
    command: str, kind: str, bad_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    f = bad_files[kind]
    argv = [a.format(f=f, out=tmp_path / "report") for a in COMMANDS[command]]
    code, _out, err = _main(argv, monkeypatch, tmp_path / "state", capsys)
    assert code == 1, err
    assert "unexpected error" not in err
    refusals = [line for line in err.splitlines() if line.startswith("eessi-pipeline:")]  # besides progress
    assert len(refusals) == 1 and refusals[0].startswith("eessi-pipeline: error: "), err
    assert str(f) in refusals[0] or f.name in refusals[0], err


# -- bad state directories ---------------------------------------------------------------------


def _refused(argv: list[str], state: Path, monkeypatch, capsys) -> str:
    code, _out, err = _main(["--state-dir", str(state), *argv], monkeypatch, state, capsys)
    assert code == 1, err
    assert "unexpected error" not in err
    assert str(state) in err
    return err


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    assert "is a file" in _refused(["gate", "check", TARBALL], state, monkeypatch, capsys)
    assert "is not a directory" in _refused(["publish"], state / "below", monkeypatch, capsys)
    assert state.read_text() == "not a directory"  # nothing was written


def test_state_dir_writable_by_everyone_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    assert "writable by every user" in _refused(["publish"], state, monkeypatch, capsys)
    assert list(state.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_state_dir_of_another_owner_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, 65534, 65534)
    assert "belongs to uid 65534" in _refused(["stratum", "status"], state, monkeypatch, capsys)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_read_only_state_dir_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f"mount -t tmpfs -o ro,mode=755 tmpfs {ro} && "
        f"{sys.executable} -m eessi_pipeline.cli --state-dir {ro} publish; echo rc=$?; "
        f"{sys.executable} -m eessi_pipeline.cli --state-dir {ro}/new publish; echo rc=$?"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["rc=1", "rc=1"], done.stderr
    assert f"state dir {ro} is read-only" in done.stderr
    assert f"state dir {ro}/new cannot be created: {ro} is read-only" in done.stderr


# -- versions ---------------------------------------------------------------------------------


def test_version_flag_prints_the_program_version(capsys) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"eessi-pipeline {__version__}"
    assert cli.main(["-V"]) == 0
    assert capsys.readouterr().out.strip() == f"eessi-pipeline {__version__}"


def test_stack_version_flag_and_deprecated_spelling(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = _main(["targets", "--json", "--stack-version", "2025.06"], monkeypatch, tmp_path, capsys)
    assert code == 0 and "zen5" in {t["name"] for t in json.loads(out)} and err == ""
    code, old, err = _main(["targets", "--json", "--version", "2025.06"], monkeypatch, tmp_path, capsys)
    assert code == 0 and old == out
    assert "deprecated" in err and "--stack-version 2025.06" in err


# -- lazy start-up ----------------------------------------------------------------------------


def test_detect_imports_only_what_it_needs(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "EESSI_PROC_CPUINFO": str(ZEN3)}
    code = (
        "import sys, io; from eessi_pipeline.cli import main; rc = main(['detect'], io.StringIO()); "
        "heavy = ('pytest', '_pytest', 'yaml', 'jsonschema', 'eessi_pipeline.cvmfs', 'eessi_pipeline.software', "
        "'eessi_pipeline.gate', 'reframe', 'easybuild', 'numpy', 'matplotlib'); "
        "print(rc, sorted({m.split('.')[0] if not m.startswith('eessi') else m for m in sys.modules "
        "if m.startswith(heavy)}))"
    )
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert first.stdout.startswith("0 "), first.stderr
    assert "yaml" in first.stdout  # the first run checks the matrix against its schema ...
    assert second.stdout.strip() == "0 []", second.stdout  # ... the second finds it checked
    assert any(cache_dir(env).glob("targets-*.json"))


def test_changed_matrix_is_checked_again(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    matrix = tmp_path / "targets.yaml"
    shutil.copy(PROJECT / "matrices" / "targets.yaml", matrix)
    code, _out, _err = _main(["validate", "--matrix", str(matrix)], monkeypatch, tmp_path, capsys)
    assert code == 0
    text = matrix.read_text().replace("default_version:", "default_version_typo:", 1)
    matrix.write_text(text)
    code, _out, err = _main(["validate", "--matrix", str(matrix)], monkeypatch, tmp_path, capsys)
    assert code == 1 and "default_version" in err  # the cache never answers for other bytes


# -- core install -----------------------------------------------------------------------------


@pytest.mark.slow
def test_core_only_venv_runs_the_core_commands(tmp_path: Path) -> None:
    """A venv with ``pip install -e .`` and no extras: the commands users run without tests work."""
    env_dir = tmp_path / "core"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(PROJECT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    assert subprocess.run([str(py), "-c", "import pytest"], capture_output=True).returncode != 0
    exe = str(env_dir / "bin" / "eessi-pipeline")
    env = {**os.environ, "EESSI_PIPELINE_STATE_DIR": str(tmp_path / "state"), "EESSI_PROC_CPUINFO": str(ZEN3)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *argv], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    assert "publish" in run("--help").stdout
    assert run("detect").stdout.strip() == "x86_64/amd/zen3"
    assert run("validate").returncode == 0
    dry = run("publish", "--dry-run")
    assert dry.returncode == 0 and "nothing staged" in dry.stdout, dry.stderr
    needs = run("test", "--target", "zen3")  # runs pytest: the 'test' extra is named
    assert needs.returncode == 1 and "eessi-pipeline[test]" in needs.stderr, needs.stderr


# -- setup.sh ---------------------------------------------------------------------------------


def test_setup_help_prints_only_the_usage(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(PROJECT / "setup.sh"), "--help"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: bash setup.sh")
    assert "[setup]" not in done.stdout
    bad = subprocess.run(
        ["bash", str(PROJECT / "setup.sh"), "--nope"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "--nope" in bad.stderr


@pytest.mark.slow
def test_tox_publish_runs_in_its_core_environment(tmp_path: Path) -> None:
    """``tox -e publish`` (what the CI publish job runs) installs no extras and still works."""
    tox = Path(sys.executable).parent / "tox"
    if not tox.exists():
        pytest.skip("tox is installed by `bash setup.sh` (the dev extra)")
    env = {**os.environ, "EESSI_PIPELINE_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [str(tox), "-e", "publish", "--workdir", str(tmp_path / "tox"), "--", "--dry-run"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "nothing staged" in done.stdout


def test_permissive_umask_never_makes_state_writable_by_others(tmp_path: Path) -> None:
    """Started with ``umask 000``, the repository the program creates is still not writable by others."""
    state = tmp_path / "state"
    done = subprocess.run(
        ["sh", "-c", f'umask 000 && "{sys.executable}" -m eessi_pipeline.cli --state-dir {state} repo init test.eessi.local'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loose = [str(p) for p in [state, *state.rglob("*")] if not p.is_symlink() and p.stat().st_mode & 0o022]
    assert loose == []


def test_client_exec_command_words_are_not_taken_for_the_subcommand(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """``client exec -- CMD`` keeps its own ``command`` list; the state-dir check reads the subcommand."""
    code, _out, err = _main(["client", "exec", "--", "true"], monkeypatch, tmp_path / "state", capsys)
    assert code == 1 and "unexpected error" not in err, err  # no repository yet: a refusal, not a crash
