"""``eessi-pipeline repo …`` end to end: init, ingest (good and hostile), verify, ls, cat, resign."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from cvmfs_helpers import make_tarball, reference_dir, software_tarball

from eessi_pipeline import cli
from eessi_pipeline.cvmfs.common import object_path
from eessi_pipeline.cvmfs.reader import open_repository

NAME = "software.eessi.local"
PREFIX = "versions/2023.06/software/linux/x86_64/generic"


class Run:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(state))
        monkeypatch.delenv("EESSI_PIPELINE_REPOSITORY", raising=False)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.monkeypatch.setattr(sys, "stderr", err)
        code = cli.main(list(argv), out=out)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    return Run(monkeypatch, tmp_path / "state")


@pytest.fixture
def initialised(run: Run, tmp_path: Path) -> Run:
    code, out, _ = run("repo", "init", NAME)
    assert code == 0
    assert out.strip() == str(tmp_path / "state" / "srv" / "cvmfs" / NAME)
    return run


def test_repo_init_twice_fails_and_says_nothing_changed(initialised: Run) -> None:
    code, _, err = initialised("repo", "init", NAME)
    assert code == 1 and "already exists" in err and "nothing changed" in err


def test_repo_ingest_verify_ls_cat_round_trip(initialised: Run, tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/hello": b"#!/bin/sh\necho hello\n"})
    code, out, _ = initialised("repo", "ingest", "--tarball", str(t), "--json")
    assert code == 0 and json.loads(out)["revision"] == 2
    code, out, _ = initialised("repo", "verify")
    assert (code, out) == (0, "revision 2\n")
    code, out, _ = initialised("repo", "ls", f"/{PREFIX}/bin")
    assert (code, out) == (0, "hello\n")
    code, out, _ = initialised("repo", "cat", f"/{PREFIX}/bin/hello")
    assert code == 0 and out == "#!/bin/sh\necho hello\n"


def test_repo_ingest_dry_run_changes_nothing(initialised: Run, tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"a": b"a"})
    code, out, _ = initialised("repo", "ingest", "--tarball", str(t), "--dry-run", "--json")
    assert code == 0 and json.loads(out)["members"] > 0
    assert initialised("repo", "verify")[1] == "revision 1\n"


def test_repo_ingest_hostile_tarball_refused_repository_unchanged(initialised: Run, tmp_path: Path) -> None:
    state = tmp_path / "state" / "srv" / "cvmfs" / NAME
    before = (state / ".cvmfspublished").read_bytes()
    t = make_tarball(tmp_path / "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz",
                     {"2023.06/software/linux/x86_64/generic/../../../../etc/passwd": b"root::0:0"})  # fmt: skip
    code, _, err = initialised("repo", "ingest", "--tarball", str(t))
    assert code == 1 and "etc/passwd" in err and ".." in err
    assert (state / ".cvmfspublished").read_bytes() == before


def test_repo_ingest_setuid_member_refused(initialised: Run, tmp_path: Path) -> None:
    path = tmp_path / "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for d in ("2023.06", "2023.06/software", "2023.06/software/linux", "2023.06/software/linux/x86_64"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        info = tarfile.TarInfo("2023.06/software/linux/x86_64/su")
        info.mode, info.size = 0o4755, 1
        tf.addfile(info, io.BytesIO(b"x"))
    code, _, err = initialised("repo", "ingest", "--tarball", str(path))
    assert code == 1 and "2023.06/software/linux/x86_64/su" in err and "setuid" in err


def test_repo_ingest_delete_then_ls_shows_it_gone(initialised: Run, tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"x/one": b"1", "x/two": b"2"})
    assert initialised("repo", "ingest", "--tarball", str(t))[0] == 0
    code, out, _ = initialised("repo", "ingest", "--delete", f"{PREFIX}/x/one")
    assert code == 0 and "revision 3" in out
    assert initialised("repo", "ls", f"/{PREFIX}/x")[1] == "two\n"


def test_repo_ls_missing_path_fails_with_reason(initialised: Run) -> None:
    code, _, err = initialised("repo", "ls", "/nope")
    assert code == 1 and "/nope: no such file or directory" in err


def test_repo_verify_tampered_object_fails_naming_it(initialised: Run, tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"f": b"payload"})
    assert initialised("repo", "ingest", "--tarball", str(t))[0] == 0
    root = tmp_path / "state" / "srv" / "cvmfs" / NAME
    key = (tmp_path / "state" / "keys" / f"{NAME}.pub").read_bytes()
    with open_repository(root, key) as reader:
        entry = reader.lookup(f"/{PREFIX}/f")
    assert entry is not None and entry.hash
    victim = root / object_path(entry.hash)
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    code, _, err = initialised("repo", "verify")
    assert code == 1 and victim.name in err


def test_repo_resign_renews_whitelist(initialised: Run, tmp_path: Path) -> None:
    wl = tmp_path / "state" / "srv" / "cvmfs" / NAME / ".cvmfswhitelist"
    before = wl.read_bytes()
    code, out, _ = initialised("repo", "resign", "--days", "3")
    assert code == 0 and "valid until" in out and wl.read_bytes() != before
    assert initialised("repo", "verify")[0] == 0


def test_repo_verify_real_server_fixture_with_master_key(run: Run) -> None:
    ref = reference_dir()
    repo_dir = ref / "srv" / "cvmfs" / "reference.eessi.local"
    key = ref / "keys" / "reference.eessi.local.pub"
    code, out, _ = run("repo", "verify", str(repo_dir), "--master-key", str(key))
    assert (code, out) == (0, "revision 4\n")
    code, _, err = run("repo", "verify", str(repo_dir))
    assert code == 2 and "--master-key" in err


def test_repo_verify_unknown_repository_fails(run: Run) -> None:
    code, _, err = run("repo", "verify", "nothing.here.local")
    assert code == 1 and "repo init" in err
