"""The one-pass ingest: one open, format from the bytes, the bytes checked are the bytes published,
symlinks judged by where they lead, clear refusals of over-long and over-deep names, nested
catalog markers as the real server writes them, and nothing left behind by a refusal."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import stat
import tarfile
import zlib
from pathlib import Path

import pytest
from cvmfs_helpers import make_tarball, software_tarball

from eessi_pipeline.cvmfs import ingest
from eessi_pipeline.cvmfs.objects import chunk_boundaries, first_cut
from eessi_pipeline.cvmfs.reader import open_repository, verify_repository
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.errors import PipelineError, RepositoryError, TarballRejected

NAME = "software.eessi.local"
P = "2023.06/software/linux/x86_64/generic"
TB = "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "state", NAME)
    r.init()
    return r


def layout(prefix: str = P) -> list[tarfile.TarInfo]:
    parts = prefix.split("/")
    out = []
    for i in range(1, len(parts) + 1):
        info = tarfile.TarInfo("/".join(parts[:i]))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        out.append(info)
    return out


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for info in layout():
            tf.addfile(info)
        for info, data in members:
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def reg(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    return info, None


def objects(r: Repository) -> set[str]:
    data = r.paths.root / "data"
    return {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.parent.name != "txn"}


def unchanged(r: Repository, before: tuple[bytes, set[str]]) -> None:
    assert (r.paths.manifest.read_bytes(), objects(r)) == before


def state(r: Repository) -> tuple[bytes, set[str]]:
    return r.paths.manifest.read_bytes(), objects(r)


def cat(r: Repository, path: str) -> bytes:
    with open_repository(r.paths.root, r.paths.keys.master_public.read_bytes()) as reader:
        return reader.read_file(path)


# -- open once, format from the bytes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "named"),
    [("w", TB), ("w:gz", TB.replace(".tar.gz", ".tar")), ("w:gz", TB.replace(".tar.gz", ".tar.zst"))],
    ids=["plain-named-gz", "gz-named-tar", "gz-named-zst"],
)
def test_bytes_and_name_disagree_refused_by_checker_and_ingest(
    repo: Repository, tmp_path: Path, mode: str, named: str
) -> None:
    path = write_tar(tmp_path / named, [reg(f"{P}/bin/tool", b"#!/bin/sh\n", 0o755)], mode)
    before = state(repo)
    with pytest.raises(TarballRejected, match=r"the name says \w+ but its bytes are \w+; rename it"):
        check_tarball(path)
    for check in (True, False):
        with pytest.raises(TarballRejected, match="the name says"):
            repo.ingest(path, check=check)
    unchanged(repo, before)


def test_repo_ingest_command_reads_the_tarball_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's check rides on the ingest's one stream: no separate check pass opens it again."""
    from eessi_pipeline import cli
    from eessi_pipeline.cvmfs import tarstream

    monkeypatch.setenv("EESSI_PIPELINE_STATE_DIR", str(tmp_path / "cli-state"))
    monkeypatch.delenv("EESSI_PIPELINE_REPOSITORY", raising=False)
    assert cli.main(["repo", "init", NAME], out=io.StringIO()) == 0
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"v1\n"})
    opened: list[Path] = []
    real_init = tarstream.TarballStream.__init__

    def counting_init(self: tarstream.TarballStream, tarball: Path, shown: str | None = None) -> None:
        opened.append(tarball)
        real_init(self, tarball, shown)

    monkeypatch.setattr(tarstream.TarballStream, "__init__", counting_init)
    assert cli.main(["repo", "ingest", "--tarball", str(path)], out=io.StringIO()) == 0
    assert opened == [path]
    hostile = write_tar(tmp_path / TB, [reg(f"{P}/bin/su", b"x", 0o4755)])
    opened.clear()
    assert cli.main(["repo", "ingest", "--tarball", str(hostile)], out=io.StringIO()) == 1
    assert opened == [hostile] and "setuid" in capsys.readouterr().err


def test_sha256_of_streamed_bytes_must_match_the_gate_record(repo: Repository, tmp_path: Path) -> None:
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"v1\n"})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    before = state(repo)
    with pytest.raises(TarballRejected, match=f"not {'0' * 64} as its gate record says"):
        repo.ingest(path, check=True, expected_sha256="0" * 64)
    unchanged(repo, before)
    result = repo.ingest(path, check=True, expected_sha256=digest)
    assert result.revision == 2 and result.sha256 == digest


def _swap_at(step: str, path: Path, other: bytes, in_place: bool):  # type: ignore[no-untyped-def]
    def hook(name: str) -> None:
        if name == step:
            if in_place:
                with open(path, "r+b") as fh:
                    fh.write(other)
                    fh.truncate()
            else:
                tmp = path.with_name(path.name + ".new")
                tmp.write_bytes(other)
                os.replace(tmp, path)

    return hook


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed-over", "rewritten-in-place"])
def test_tarball_replaced_between_any_two_steps_is_refused_or_published_as_checked(
    repo: Repository, tmp_path: Path, in_place: bool
) -> None:
    good = {"bin/tool": os.urandom(3000), "lib/libx.so": os.urandom(200_000)}
    evil = {"bin/tool": b"#!/bin/sh\nrm -rf ~\n", "lib/libx.so": b"evil"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    checked = software_tarball(tmp_path / "a", "2023.06", "x86_64/generic", good).read_bytes()
    other = software_tarball(tmp_path / "b", "2023.06", "x86_64/generic", evil).read_bytes()
    digest = hashlib.sha256(checked).hexdigest()
    steps: list[str] = []
    probe = Repository(tmp_path / "probe", NAME)
    probe.init()
    path = tmp_path / TB
    path.write_bytes(checked)
    probe.ingest(path, check=True, hook=steps.append)
    assert steps[:2] == ["tarball opened", "tarball read"] and steps[-1] == "manifest written"
    tool = f"/versions/{P}/bin/tool"
    for step in ["before", *steps]:
        path.write_bytes(other if step == "before" else checked)  # "before": swapped after the gate's check
        before = state(repo)
        try:
            repo.ingest(path, check=True, expected_sha256=digest, hook=_swap_at(step, path, other, in_place))
        except PipelineError:
            unchanged(repo, before)
            assert step in ("before", "tarball opened"), step
            continue
        assert step != "before"
        assert (
            cat(repo, tool) == good["bin/tool"]
            and cat(repo, f"/versions/{P}/lib/libx.so") == good["lib/libx.so"]
        )
        repo.ingest(None, deletes=[f"versions/{P}/bin"])  # the next step starts without it


# -- member safety, whatever the tarball is called ---------------------------------------------------


def _long(n: int) -> str:
    return "x" * n


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (reg(f"{P}/bin/su", b"x", 0o4755), "sets setuid"),
        (reg(f"{P}/.hidden/.su", b"x", 0o2755), "sets setgid"),
        (sym(f"{P}/etc", "/etc"), "outside /cvmfs/software.eessi.local"),
        (reg(f"{P}/../../escape", b"x"), "'..' component"),
        (reg(f"{P}/{_long(256)}", b"x"), "256-byte component"),
        (reg(f"{P}/" + "/".join([_long(200)] * 21), b"x"), "PATH_MAX"),
        (reg(f"{P}/" + "d/" * 300 + "f", b"x"), "levels deep"),
        (sym(f"{P}/up", "../../../../../../.."), "climbs above the repository root"),
    ],
    ids=[
        "setuid",
        "hidden-setgid",
        "absolute-link",
        "dotdot",
        "name-max",
        "path-max",
        "depth",
        "above-root",
    ],
)
def test_generic_ingest_refuses_unsafe_members_and_changes_nothing(
    repo: Repository, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], says: str
) -> None:
    path = write_tar(tmp_path / "any.tar.gz", [reg(f"{P}/big", os.urandom(300_000)), member])
    before = state(repo)
    with pytest.raises(TarballRejected, match=says) as e:
        repo.ingest(path)
    assert "Traceback" not in str(e.value)
    unchanged(repo, before)


def test_deep_tree_within_the_limit_ingests_and_verifies(repo: Repository, tmp_path: Path) -> None:
    deep = f"{P}/" + "d/" * 200 + "f"
    path = write_tar(tmp_path / TB, [reg(deep, b"deep\n")])
    assert repo.ingest(path, check=True).revision == 2
    assert cat(repo, f"/versions/{deep}") == b"deep\n"
    assert verify_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes()).revision == 2


# -- symlinks judged by where they lead -------------------------------------------------------------


def test_symlink_chain_that_textually_stays_but_really_escapes_the_version_is_refused(
    repo: Repository, tmp_path: Path
) -> None:
    # a -> 2023.06 (inside); b -> a/../../x reads as 2023.06/software/linux/x86_64/x but leads to /x
    path = write_tar(tmp_path / TB, [sym(f"{P}/a", "../../../.."), sym(f"{P}/b", "a/../../x")])
    check_tarball(path)  # judged as text, each link stays inside
    with pytest.raises(TarballRejected, match=r"b: symlink target 'a/../../x' resolves .* to '/x', outside"):
        repo.ingest(path, check=True)
    assert repo.manifest().revision == 1


def test_symlink_chain_through_the_published_tree_is_refused(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    first = write_tar(tmp_path / "1" / TB, [sym(f"{P}/a", "../../../..")])
    repo.ingest(first, check=True)
    second = write_tar(tmp_path / TB, [sym(f"{P}/b", "a/../../x")])
    with pytest.raises(TarballRejected, match=r"outside /versions/2023\.06"):
        repo.ingest(second, check=True)
    assert repo.manifest().revision == 2


def test_symlink_chain_out_of_the_repository_refused_in_a_generic_ingest(
    repo: Repository, tmp_path: Path
) -> None:
    path = make_tarball(tmp_path / "tree.tar.gz", {"a": "..", "b": "a/../x", "ok": "a/versions"})
    with pytest.raises(
        TarballRejected, match=r"b: symlink target 'a/\.\./x' climbs above the repository root"
    ):
        repo.ingest(path, "versions")
    assert repo.manifest().revision == 1


def test_links_resolving_inside_are_published(repo: Repository, tmp_path: Path) -> None:
    # a loop leads nowhere (the kernel gives up after 40 links), so it cannot escape and is kept
    members = [sym(f"{P}/loop1", "loop2"), sym(f"{P}/loop2", "loop1"), sym(f"{P}/d/self", "self/x"),reg(f"{P}/lib/libz.so.1.2", b"z"), sym(f"{P}/lib/libz.so.1", "libz.so.1.2"),
               sym(f"{P}/lib/libz.so", "libz.so.1"), sym(f"{P}/lib64", "lib"),
               sym(f"{P}/abs", f"/cvmfs/{NAME}/versions/{P}/lib64/libz.so")]  # fmt: skip
    repo.ingest(write_tar(tmp_path / TB, members), check=True)
    assert cat(repo, f"/versions/{P}/lib/libz.so.1.2") == b"z"


# -- streaming: chunks cut while reading, bounded pieces --------------------------------------------


def test_chunks_cut_while_reading_equal_the_whole_file_rule() -> None:
    rnd = random.Random(7)
    for _ in range(40):
        n = rnd.randint(1, 5000)
        data = bytes(rnd.choice(b"\0\xffab") if rnd.random() < 0.5 else rnd.randrange(256) for _ in range(n))
        cuts, pos, fed, buf = [], 0, 0, bytearray()
        while True:
            cut = first_cut(buf, 64, 128, 300, fed >= n)
            if cut is None:
                step = rnd.randint(1, 400)
                buf += data[fed : fed + step]
                fed += step
            elif fed >= n and cut >= len(buf):
                cuts.append(pos + len(buf))
                break
            else:
                pos += cut
                cuts.append(pos)
                del buf[:cut]
        assert cuts == chunk_boundaries(data, 64, 128, 300)


def test_large_files_stream_into_chunks_or_one_streamed_object(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.store.chunk_sizes = (64 * 1024, 128 * 1024, 256 * 1024)
    monkeypatch.setattr(
        ingest, "WHOLE_MAX", 100_000
    )  # unchunked files above it are compressed as they stream
    blob = os.urandom(3 * 1024 * 1024 + 17)
    mid = random.Random(1).randbytes(250_000)  # between the chunk minimum and maximum: read whole, cut once
    files = {"chunked.bin": blob, "hard": blob[:5], "mid.bin": mid}
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", files)
    repo.ingest(path)
    assert cat(repo, f"/versions/{P}/chunked.bin") == blob
    assert cat(repo, f"/versions/{P}/mid.bin") == mid
    with open_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes()) as reader:
        entry = reader.lookup(f"/versions/{P}/mid.bin")
        big = reader.lookup(f"/versions/{P}/chunked.bin")
    assert entry is not None and big is not None
    ends = [c.offset + c.size for c in entry.chunks]
    assert ends == chunk_boundaries(mid, 64 * 1024, 128 * 1024, 256 * 1024) == [86958, 204381, 250000]
    # cut while it streamed in 1 MiB reads, held as pieces: the whole-file rule's cuts all the same
    assert [c.offset + c.size for c in big.chunks] == chunk_boundaries(
        blob, 64 * 1024, 128 * 1024, 256 * 1024
    )
    (tmp_path / "2").mkdir()
    repo.ingest(
        software_tarball(tmp_path / "2", "2023.06", "x86_64/generic", {"whole.bin": blob}), chunking=False
    )
    assert cat(repo, f"/versions/{P}/whole.bin") == blob
    assert verify_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes()).revision == 3


def test_multi_member_gzip_with_zero_padding_is_read_like_gzip(repo: Repository, tmp_path: Path) -> None:
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"t\n"})
    plain = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]) + b"\0" * 64)
    check_tarball(path)
    repo.ingest(path, check=True)
    assert cat(repo, f"/versions/{P}/bin/tool") == b"t\n"


@pytest.mark.parametrize("inflater", ["zlib", "isal"])
def test_either_inflater_reads_gzip_members_alike_and_refuses_damage(inflater: str) -> None:
    """ISA-L's inflate (used where it is installed) and zlib's give the same bytes and the same refusals."""
    from eessi_pipeline.cvmfs.tarstream import _gunzip

    module = pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib
    rnd = random.Random(3)
    plain = bytes(rnd.choice(b"ab\0") for _ in range(300_000))
    packed = gzip.compress(plain[:100_000]) + b"\0" * 7 + gzip.compress(plain[100_000:]) + b"\0" * 64
    pieces = [packed[i : i + 4096] for i in range(0, len(packed), 4096)]
    assert b"".join(_gunzip(iter(pieces), module)) == plain
    damaged = bytearray(packed)
    damaged[len(gzip.compress(plain[:100_000])) - 6] ^= 1  # the first member's CRC
    with pytest.raises(Exception, match=r"(?i)check"):
        b"".join(_gunzip(iter([bytes(damaged)]), module))
    with pytest.raises(EOFError):
        b"".join(_gunzip(iter([packed[:5000]]), module))


@pytest.fixture(params=["threads", "processes"])
def pool(request: pytest.FixtureRequest, repo: Repository, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small files stored by threads (small tarballs) or by worker processes (large ones)."""
    if request.param == "processes":
        repo.store.workers = 2
        monkeypatch.setattr(ingest, "PROCESS_POOL_MIN", 0)
    return str(request.param)


def test_small_files_by_either_pool_read_back_identical(repo: Repository, tmp_path: Path, pool: str) -> None:
    rnd = random.Random(11)
    files = {f"lib/f{i:03d}": rnd.randbytes(rnd.randint(0, 70_000)) for i in range(300)}
    files["lib/same"] = files["lib/f001"]  # deduplicated
    before = len(objects(repo))
    result = repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", files), check=True)
    for name in ("lib/f000", "lib/f150", "lib/f299", "lib/same"):
        assert cat(repo, f"/versions/{P}/{name}") == files[name]
    assert result.objects_written == len(objects(repo)) - before
    assert verify_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes()).revision == 2


def test_a_late_problem_removes_the_objects_this_ingest_wrote(
    repo: Repository, tmp_path: Path, pool: str
) -> None:
    members = [reg(f"{P}/lib/big{i}", os.urandom(100_000)) for i in range(20)]
    members += [reg(f"{P}/lib/small{i}", os.urandom(5_000)) for i in range(50)]
    path = write_tar(tmp_path / TB, [*members, reg(f"{P}/zz/su", b"x", 0o4755)])
    before = state(repo)
    with pytest.raises(TarballRejected, match="zz/su: mode 4755 sets setuid"):
        repo.ingest(path, check=True)
    unchanged(repo, before)


def test_store_failure_is_a_clear_error_and_changes_nothing(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"a": os.urandom(200_000)})
    before = state(repo)

    def full(*_a: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repo.store, "put", full)
    with pytest.raises(RepositoryError, match=r"No space left on device.*stays at its revision"):
        repo.ingest(path)
    unchanged(repo, before)


# -- nested catalogs carry their marker -------------------------------------------------------------


def test_every_nested_catalog_has_its_marker_and_verify_insists(repo: Repository, tmp_path: Path) -> None:
    files = {"software/zlib/1.2.13/lib/libz.so": b"z", "modules/all/zlib/1.2.13.lua": b"-- lua"}
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", files))  # nested by the dirtab
    (tmp_path / "c").mkdir()
    repo.ingest(
        make_tarball(tmp_path / "c" / "x.tar.gz", {"tool": b"t"}), "versions/extra", make_catalog=True
    )
    master = repo.paths.keys.master_public.read_bytes()
    with open_repository(repo.paths.root, master) as reader:
        nested = [e.path for e in reader.walk() if e.is_dir and e.flags & 32]
        assert len(nested) == 3
        for mp in nested:
            marker = reader.lookup(f"{mp}/.cvmfscatalog")
            assert marker is not None and marker.is_file and marker.size == 0, mp
            assert stat.S_IMODE(marker.mode) == 0o644
    txn = repo.transaction()
    txn.remove("/versions/extra/.cvmfscatalog")
    txn.commit()
    with pytest.raises(
        RepositoryError, match="nested catalog without marker: no regular file /versions/extra/"
    ):
        verify_repository(repo.paths.root, master)


def test_publish_target_ingests_only_the_bytes_the_gate_record_names(
    repo: Repository, tmp_path: Path
) -> None:
    from eessi_pipeline.gate.publish import EmbeddedTarget

    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/tool": b"v1\n"})
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "x").mkdir()
    swapped = software_tarball(tmp_path / "x", "2023.06", "x86_64/generic", {"bin/tool": b"evil\n"})
    os.replace(swapped, path)  # replaced after the gate judged it
    with pytest.raises(TarballRejected, match="as its gate record says"):
        EmbeddedTarget(repo).ingest(path, recorded)
    assert repo.manifest().revision == 1


KILLER = """
import sys
from pathlib import Path
from eessi_pipeline.cvmfs import ingest
from eessi_pipeline.cvmfs.repository import Repository
repo = Repository(Path(sys.argv[1]), "software.eessi.local")
if sys.argv[3] == "processes":
    ingest.PROCESS_POOL_MIN, repo.store.workers = 0, 2
repo.ingest(Path(sys.argv[2]), check=True)
"""


def test_kill_9_at_any_moment_of_a_streaming_ingest_leaves_a_verifiable_revision(
    repo: Repository, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import time

    rnd = random.Random(3)
    files = {f"lib/f{i:04d}": rnd.randbytes(rnd.randint(0, 40_000)) for i in range(600)}
    files["lib/big.bin"] = rnd.randbytes(6 * 1024 * 1024)
    path = software_tarball(tmp_path, "2023.06", "x86_64/generic", files)
    master = repo.paths.keys.master_public.read_bytes()
    for n, delay in enumerate((0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 0.1, 0.3, 0.6)):
        before = repo.manifest().revision
        kind = "processes" if n % 2 else "threads"
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(repo.paths.state_dir), str(path), kind])
        time.sleep(delay)
        proc.kill()
        proc.wait()
        report = verify_repository(repo.paths.root, master)  # whatever moment it died at
        assert report.revision in (before, before + 1), delay
        if report.revision > 1:
            assert cat(repo, f"/versions/{P}/lib/big.bin") == files["lib/big.bin"]
    last = repo.manifest().revision
    assert repo.ingest(path, check=True).revision == last + 1
