"""The cvmfs_server backend: argv builders (pure), validation, plan, and the ingest sequence.

No real ``cvmfs_server`` exists on a test machine, so the one test that runs the
sequence uses a stand-in script and says so in its name (``fake_cvmfs_server``).
"""

from __future__ import annotations

import gzip
import io
import shlex
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cvmfs_helpers import install_fake_cvmfs_server
from hypothesis import given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.cvmfs_server import (
    CvmfsServerBackend,
    abort_argv,
    decompress_argv,
    ingest_argv,
    publish_argv,
    transaction_argv,
)
from eessi_pipeline.errors import RepositoryError
from eessi_pipeline.proc import CommandFailed

REPO = "software.eessi.io"
HOST = "cvmfs@stratum0.example.org"
SSH = ["ssh", "-o", "BatchMode=yes", HOST, "--"]

# --- argv tables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["cvmfs_server", "ingest", "-t", "-", "-b", "versions", REPO]),
        (
            {"base_dir": "dev/versions/"},
            ["cvmfs_server", "ingest", "-t", "-", "-b", "dev/versions", REPO],
        ),
        (
            {"deletes": ["versions/2023.06/compat/linux/x86_64", "versions/old"]},
            [
                "cvmfs_server", "ingest", "-t", "-", "-b", "versions",
                "-d", "versions/2023.06/compat/linux/x86_64", "-d", "versions/old", REPO,
            ],
        ),
        (
            {"catalog": True, "base_dir": "versions/2023.06"},
            ["cvmfs_server", "ingest", "-t", "-", "-b", "versions/2023.06", "-c", REPO],
        ),
        (
            {"tar_from_stdin": False, "deletes": ["versions/old"]},
            ["cvmfs_server", "ingest", "-d", "versions/old", REPO],
        ),
        (
            {"ssh": HOST},
            [*SSH, f"cvmfs_server ingest -t - -b versions {REPO}"],
        ),
        (
            {"ssh": HOST, "deletes": ["versions/old"], "catalog": True},
            [*SSH, f"cvmfs_server ingest -t - -b versions -d versions/old -c {REPO}"],
        ),
        (
            {"ssh": "stratum0", "tar_from_stdin": False, "deletes": ["a"]},
            ["ssh", "-o", "BatchMode=yes", "stratum0", "--", f"cvmfs_server ingest -d a {REPO}"],
        ),
    ],
    ids=[
        "local-default", "local-base-dir", "local-deletes", "local-catalog", "local-delete-only",
        "ssh-default", "ssh-deletes-catalog", "ssh-alias-delete-only",
    ],
)  # fmt: skip
def test_ingest_argv_options_gives_expected_vector(kwargs: dict[str, object], expected: list[str]) -> None:
    assert ingest_argv(REPO, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("builder", "ssh", "expected"),
    [
        (transaction_argv, None, ["cvmfs_server", "transaction", REPO]),
        (publish_argv, None, ["cvmfs_server", "publish", REPO]),
        (abort_argv, None, ["cvmfs_server", "abort", "-f", REPO]),
        (transaction_argv, HOST, [*SSH, f"cvmfs_server transaction {REPO}"]),
        (publish_argv, HOST, [*SSH, f"cvmfs_server publish {REPO}"]),
        (abort_argv, HOST, [*SSH, f"cvmfs_server abort -f {REPO}"]),
    ],
    ids=["local-transaction", "local-publish", "local-abort", "ssh-transaction", "ssh-publish", "ssh-abort"],
)
def test_step_argv_local_or_ssh_gives_expected_vector(
    builder: Callable[[str, str | None], list[str]], ssh: str | None, expected: list[str]
) -> None:
    assert builder(REPO, ssh) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz", ["gunzip", "-c"]),
        ("x.tgz", ["gunzip", "-c"]),
        ("eessi-2023.06-compat-linux-aarch64-1700000000.tar.zst", ["zstd", "-dc"]),
        ("plain.tar", ["cat"]),
    ],
    ids=["tar.gz", "tgz", "tar.zst", "tar"],
)
def test_decompress_argv_suffix_picks_tool(name: str, expected: list[str]) -> None:
    path = Path("/staging") / name
    assert decompress_argv(path) == [*expected, "--", str(path)]


def test_decompress_argv_leading_dash_is_not_an_option() -> None:
    assert decompress_argv(Path("-rf.tar.gz"))[-2:] == ["--", "-rf.tar.gz"]


# --- quoting in ssh mode ----------------------------------------------------------------------------------

ODD_PATHS = [
    "versions/with space",
    "versions/it's",
    'versions/"quoted"',
    "versions/$(reboot)",
    "versions/a;rm -rf ~",
    "versions/back\\slash",
    "versions/glob*?[x]",
    "versions/-dash",
]


@pytest.mark.parametrize("path", ODD_PATHS, ids=["space", "single-quote", "double-quote", "subshell", "semicolon",
                                                  "backslash", "glob", "dash"])  # fmt: skip
def test_ingest_argv_ssh_odd_path_round_trips_through_remote_shell(path: str) -> None:
    local = ingest_argv(REPO, base_dir=path, deletes=[path])
    remote = ingest_argv(REPO, base_dir=path, deletes=[path], ssh=HOST)
    assert remote[:-1] == SSH
    assert shlex.split(remote[-1]) == local  # what the remote sh parses is exactly the local vector


_SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/:\0\n\r"),  # utf-8: no surrogates
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join), min_size=1, max_size=3))
def test_ingest_argv_ssh_any_valid_deletes_round_trip(deletes: list[str]) -> None:
    remote = ingest_argv(REPO, deletes=deletes, ssh=HOST)
    assert shlex.split(remote[-1]) == ingest_argv(REPO, deletes=deletes)


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo": "software"}, "invalid repository name 'software'"),
        ({"repo": "Software.EESSI.io"}, "invalid repository name"),
        ({"repo": "-x.eessi.io"}, "invalid repository name"),
        ({"repo": "a..b"}, "invalid repository name"),
        ({"repo": "soft ware.eessi.io"}, "invalid repository name"),
        ({"base_dir": "/versions"}, "relative to the repository root for -b, e.g. 'versions'"),
        ({"base_dir": ""}, "invalid base directory ''"),
        ({"base_dir": "../versions"}, "without '.', '..'"),
        ({"base_dir": "versions/../.."}, "without '.', '..'"),
        ({"base_dir": "versions//2023.06"}, "empty components"),
        ({"base_dir": "versions\n"}, "it contains '\\n'"),
        ({"deletes": ["/versions/old"]}, "relative to the repository root for -d"),
        ({"deletes": [".."]}, "invalid path to delete '..'"),
        ({"deletes": ["versions/a/../../etc"]}, "without '.', '..'"),
        ({"deletes": [""]}, "invalid path to delete ''"),
        ({"deletes": ["versions/a:b"]}, "joins repeated -d paths with ':'"),
        ({"deletes": ["versions/a\0b"]}, "it contains '\\x00'"),
        ({"deletes": "versions/old"}, "must be a list of paths"),
        ({"tar_from_stdin": False}, "nothing to ingest"),
        ({"tar_from_stdin": False, "deletes": ["a"], "catalog": True}, "-c (nested catalog) needs a tarball"),
        ({"ssh": "-oProxyCommand=touch /tmp/x"}, "invalid ssh target"),
        ({"ssh": "host; reboot"}, "invalid ssh target"),
        ({"ssh": ""}, "invalid ssh target"),
    ],
    ids=[
        "repo-unqualified", "repo-upper-case", "repo-leading-dash", "repo-empty-label", "repo-space",
        "base-absolute", "base-empty", "base-dotdot", "base-dotdot-inside", "base-empty-component", "base-newline",
        "delete-absolute", "delete-dotdot", "delete-dotdot-inside", "delete-empty", "delete-colon", "delete-nul",
        "deletes-string", "nothing-to-do", "catalog-without-tarball",
        "ssh-option-injection", "ssh-shell", "ssh-empty",
    ],
)  # fmt: skip
def test_ingest_argv_invalid_input_raises_repository_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"repo": REPO, **kwargs}
    repo = args.pop("repo")
    with pytest.raises(RepositoryError) as info:
        ingest_argv(repo, **args)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    "name", ["x.zip", "x.tar.bz2", "tar.gz", "x.gz"], ids=["zip", "bz2", "bare-suffix", "gz"]
)
def test_decompress_argv_unknown_suffix_raises_repository_error(name: str) -> None:
    with pytest.raises(RepositoryError, match=r"must end in one of \.tar\.gz, \.tgz, \.tar\.zst, \.tar"):
        decompress_argv(Path(name))


@pytest.mark.parametrize(
    "builder", [transaction_argv, publish_argv, abort_argv], ids=["transaction", "publish", "abort"]
)
def test_step_argv_invalid_repo_raises_repository_error(
    builder: Callable[[str, str | None], list[str]],
) -> None:
    with pytest.raises(RepositoryError, match="invalid repository name"):
        builder("not a repo", None)


@pytest.mark.parametrize(
    ("repo", "ssh"), [("bad", None), (REPO, "-oX=y")], ids=["repo", "ssh"]
)  # fmt: skip
def test_backend_invalid_settings_raises_on_construction(repo: str, ssh: str | None) -> None:
    with pytest.raises(RepositoryError):
        CvmfsServerBackend(repo, ssh=ssh)


# --- plan -------------------------------------------------------------------------------------------------


def test_plan_tarball_orders_pipeline_then_transaction_then_publish() -> None:
    tarball = Path("/staging/eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz")
    steps = CvmfsServerBackend(REPO).plan(tarball, "versions", ["versions/old"], catalog=False)
    assert steps == [
        ["gunzip", "-c", "--", str(tarball)],
        ["cvmfs_server", "ingest", "-t", "-", "-b", "versions", "-d", "versions/old", REPO],
        ["cvmfs_server", "transaction", REPO],
        ["cvmfs_server", "publish", REPO],
    ]


def test_plan_ssh_decompresses_locally_and_runs_cvmfs_server_remotely() -> None:
    tarball = Path("t.tar.zst")
    steps = CvmfsServerBackend(REPO, ssh=HOST).plan(tarball)
    assert steps[0] == ["zstd", "-dc", "--", "t.tar.zst"]
    assert [s[:5] for s in steps[1:]] == [SSH, SSH, SSH]
    assert [shlex.split(s[-1])[1] for s in steps[1:]] == ["ingest", "transaction", "publish"]


def test_plan_delete_only_has_no_decompress_step() -> None:
    steps = CvmfsServerBackend(REPO).plan(None, deletes=["versions/old"])
    assert [s[1] for s in steps] == ["ingest", "transaction", "publish"]
    assert steps[0] == ["cvmfs_server", "ingest", "-d", "versions/old", REPO]


# --- availability -----------------------------------------------------------------------------------------


def test_ingest_without_cvmfs_server_raises_use_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = CvmfsServerBackend(REPO)
    assert not backend.available()
    with pytest.raises(RepositoryError) as info:
        backend.ingest(tmp_path / "x.tar.gz", "versions", (), False)
    assert str(info.value) == (
        "cvmfs_server not found on this machine; use the embedded backend (default) or run on a Stratum 0"
    )


def test_ingest_ssh_without_ssh_client_raises_naming_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = CvmfsServerBackend(REPO, ssh=HOST)
    assert not backend.available()
    with pytest.raises(RepositoryError, match=f"ssh not found on this machine, so the Stratum 0 {HOST}"):
        backend.ingest(tmp_path / "x.tar.gz", "versions", (), False)


# --- the real sequence against a stand-in cvmfs_server ----------------------------------------------------


@pytest.fixture
def fake_cvmfs_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: put a stand-in cvmfs_server first on PATH; it fails the subcommands named. Returns its log."""

    def _install(*fail: str) -> Path:
        return install_fake_cvmfs_server(tmp_path, monkeypatch, fail)

    return _install


@pytest.fixture
def small_tarball(tmp_path: Path) -> tuple[Path, int]:
    """A .tar.gz with a few members, and the size of its uncompressed tar stream."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [
            ("2023.06/README", b"hello\n"),
            ("2023.06/software/linux/x86_64/a.txt", b"x" * 5000),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path = tmp_path / "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"
    path.write_bytes(gzip.compress(raw))
    return path, len(raw)


def test_ingest_fake_cvmfs_server_runs_ingest_then_transaction_then_publish(
    fake_cvmfs_server: Callable[..., Path], small_tarball: tuple[Path, int]
) -> None:
    log = fake_cvmfs_server()
    tarball, tar_size = small_tarball
    backend = CvmfsServerBackend(REPO)
    assert backend.available()
    backend.ingest(tarball, "versions", ["versions/2023.06/old dir"], False)
    assert log.read_text().splitlines() == [
        f"ingest -t - -b versions -d versions/2023.06/old dir {REPO}|{tar_size}",
        f"transaction {REPO}|0",
        f"publish {REPO}|0",
    ]


def test_ingest_fake_cvmfs_server_publish_fails_aborts_and_reraises(
    fake_cvmfs_server: Callable[..., Path], small_tarball: tuple[Path, int]
) -> None:
    log = fake_cvmfs_server("publish")
    with pytest.raises(CommandFailed) as info:
        CvmfsServerBackend(REPO).ingest(small_tarball[0], "versions", (), False)
    assert info.value.argv == ("cvmfs_server", "publish", REPO)
    assert f"fake cvmfs_server: publish {REPO} failed" in str(info.value)
    assert [line.split("|")[0] for line in log.read_text().splitlines()] == [
        f"ingest -t - -b versions {REPO}",
        f"transaction {REPO}",
        f"publish {REPO}",
        f"abort -f {REPO}",
    ]


def test_ingest_fake_cvmfs_server_abort_fails_too_says_still_in_transaction(
    fake_cvmfs_server: Callable[..., Path], small_tarball: tuple[Path, int]
) -> None:
    fake_cvmfs_server("publish", "abort")
    with pytest.raises(CommandFailed) as info:
        CvmfsServerBackend(REPO).ingest(small_tarball[0], "versions", (), False)
    message = str(info.value)
    assert info.value.argv == ("cvmfs_server", "publish", REPO)
    assert f"{REPO} is still in a transaction: run `cvmfs_server abort -f {REPO}`" in message
    assert f"fake cvmfs_server: abort -f {REPO} failed" in message


def test_ingest_fake_cvmfs_server_ingest_fails_neither_publishes_nor_aborts(
    fake_cvmfs_server: Callable[..., Path], small_tarball: tuple[Path, int]
) -> None:
    log = fake_cvmfs_server("ingest")
    with pytest.raises(CommandFailed, match="the second stage \\(cvmfs_server\\) exited with code 1"):
        CvmfsServerBackend(REPO).ingest(small_tarball[0], "versions", (), False)
    assert [line.split("|")[0] for line in log.read_text().splitlines()] == [
        f"ingest -t - -b versions {REPO}"
    ]


def test_ingest_fake_cvmfs_server_missing_tarball_runs_nothing(
    fake_cvmfs_server: Callable[..., Path], tmp_path: Path
) -> None:
    log = fake_cvmfs_server()
    with pytest.raises(RepositoryError, match="does not exist or is not a file"):
        CvmfsServerBackend(REPO).ingest(tmp_path / "missing.tar.gz", "versions", (), False)
    assert log.read_text() == ""
