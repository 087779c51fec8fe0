"""The embedded Stratum 0: init, ingest semantics, nested catalogs, transactions, lock, format parity."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
import zlib
from pathlib import Path

import pytest
from cvmfs_helpers import make_tarball, reference_dir, software_tarball
from hypothesis import given
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.catalog import CatalogDoc, read_catalog
from eessi_pipeline.cvmfs.history import read_tags
from eessi_pipeline.cvmfs.manifest import parse_manifest
from eessi_pipeline.cvmfs.objects import chunk_boundaries
from eessi_pipeline.cvmfs.repository import Repository, publisher_lock
from eessi_pipeline.errors import RepositoryError

NAME = "software.eessi.local"
ZLIB = "/versions/2023.06/software/linux/x86_64/generic/software/zlib/1.2.13"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "state", NAME)
    r.init()
    return r


def root_doc(r: Repository) -> CatalogDoc:
    return read_catalog(r.store.get(r.manifest().root_catalog, "C"), r.paths.tmp)


def doc_at(r: Repository, mountpoint: str) -> CatalogDoc:
    doc = root_doc(r)
    while mountpoint not in doc.entries or doc.root != mountpoint:
        child = next(mp for mp in doc.nested if mountpoint == mp or mountpoint.startswith(mp + "/"))
        doc = read_catalog(r.store.get(doc.nested[child][0], "C"), r.paths.tmp)
    return doc


def test_init_creates_signed_revision_one_with_keys(repo: Repository) -> None:
    m = repo.manifest()
    assert m.revision == 1 and m.name == NAME and m.history and m.metainfo and m.reflog
    keys = repo.paths.keys
    assert stat.S_IMODE(keys.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.master_key.stat().st_mode) == 0o600
    for f in (".cvmfswhitelist", ".cvmfs_master_replica", ".cvmfsreflog", ".cvmfs_status.json"):
        assert (repo.paths.root / f).exists(), f
    assert (repo.paths.web_root / "info" / "v1" / "repositories.json").exists()
    doc = root_doc(repo)
    assert set(doc.entries) == {"", "/new_repository", "/.cvmfsdirtab"}
    assert doc.statistics["self_regular"] == 2 and doc.statistics["self_dir"] == 1


def test_init_twice_refuses_and_keeps_keys(repo: Repository, tmp_path: Path) -> None:
    key = repo.paths.keys.key.read_bytes()
    with pytest.raises(RepositoryError, match="already exists"):
        Repository(tmp_path / "state", NAME).init()
    assert repo.paths.keys.key.read_bytes() == key


def test_init_with_existing_keys_reuses_them(tmp_path: Path) -> None:
    first = Repository(tmp_path / "state", NAME)
    first.init()
    key = first.paths.keys.key.read_bytes()
    (first.paths.root / ".cvmfspublished").unlink()
    Repository(tmp_path / "state", NAME).init()
    assert first.paths.keys.key.read_bytes() == key


@pytest.mark.parametrize("bad", ["Software", "no_dots", "-x.org", "a..b", "a b.c"])
def test_repository_invalid_name_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RepositoryError, match="invalid repository name"):
        Repository(tmp_path, bad)


def test_ingest_overlays_members_under_base_dir(repo: Repository, tmp_path: Path) -> None:
    t = software_tarball(
        tmp_path, "2023.06", "x86_64/generic", {"bin/hello": b"hi\n", "lib/libx.so": "libx.so.1"}
    )
    result = repo.ingest(t, "versions")
    assert result.revision == 2 and result.files_added == 1
    doc = root_doc(repo)
    prefix = "/versions/2023.06/software/linux/x86_64/generic"
    assert doc.entries[f"{prefix}/bin/hello"].size == 3
    link = doc.entries[f"{prefix}/lib/libx.so"]
    assert link.symlink == "libx.so.1" and stat.S_ISLNK(link.mode)
    assert doc.entries["/versions"].linkcount == 3  # 2 + one subdirectory


def test_ingest_keeps_other_content_and_replaces_files(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    repo.ingest(software_tarball(tmp_path / "a", "2023.06", "x86_64/generic", {"f1": b"one", "f2": b"two"}))
    repo.ingest(software_tarball(tmp_path / "b", "2023.06", "x86_64/generic", {"f2": b"TWO", "f3": b"three"}))
    doc = root_doc(repo)
    prefix = "/versions/2023.06/software/linux/x86_64/generic"
    assert {p.rsplit("/", 1)[1] for p in doc.entries if p.startswith(prefix + "/")} == {"f1", "f2", "f3"}
    assert doc.entries[f"{prefix}/f2"].size == 3
    assert zlib.decompress(repo.store.path(doc.entries[f"{prefix}/f2"].hash or "").read_bytes()) == b"TWO"


def test_ingest_deletes_first_then_overlays(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    repo.ingest(software_tarball(tmp_path / "a", "2023.06", "x86_64/generic", {"old/x": b"x"}))
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"new/y": b"y"})
    result = repo.ingest(t, deletes=["versions/2023.06/software/linux/x86_64/generic/old"])
    paths = set(root_doc(repo).entries)
    assert result.paths_deleted == 1
    assert not any("/old" in p for p in paths) and any(p.endswith("/new/y") for p in paths)


def test_ingest_delete_missing_path_refused_revision_unchanged(repo: Repository) -> None:
    before = repo.paths.manifest.read_bytes()
    with pytest.raises(RepositoryError, match="no such path"):
        repo.ingest(None, deletes=["versions/nothing/here"])
    assert repo.paths.manifest.read_bytes() == before


def test_ingest_cvmfscatalog_member_makes_nested_catalog(repo: Repository, tmp_path: Path) -> None:
    t = software_tarball(
        tmp_path,
        "2023.06",
        "x86_64/generic",
        {"software/zlib/1.2.13/.cvmfscatalog": b"", "software/zlib/1.2.13/lib/z": b"z"},
    )
    repo.ingest(t)
    root = root_doc(repo)
    assert list(root.nested) == [ZLIB]
    assert root.entries[ZLIB].nested_mountpoint
    child = doc_at(repo, ZLIB)
    assert child.root == ZLIB and f"{ZLIB}/lib/z" in child.entries and f"{ZLIB}/lib/z" not in root.entries
    assert root.statistics["subtree_regular"] == 2 and child.statistics["self_regular"] == 2
    assert root.entries[ZLIB].linkcount == child.entries[ZLIB].linkcount == 3


def test_ingest_catalog_flag_nests_base_dir(repo: Repository, tmp_path: Path) -> None:
    t = make_tarball(tmp_path / "eessi-2023.06-init-1700000000.tar.gz", {"init/bash": b"echo hi\n"})
    repo.ingest(t, "versions/2023.06", make_catalog=True)
    assert "/versions/2023.06" in root_doc(repo).nested


def test_ingest_incremental_writes_only_new_objects_and_changed_catalogs(
    repo: Repository, tmp_path: Path
) -> None:
    files = {f"software/pkg{i}/1.0/.cvmfscatalog": b"" for i in range(20)}
    files.update({f"software/pkg{i}/1.0/data{j}": f"{i}-{j}".encode() for i in range(20) for j in range(5)})
    (tmp_path / "big").mkdir()
    repo.ingest(software_tarball(tmp_path / "big", "2023.06", "x86_64/generic", files))
    small = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"software/new/1.0/file": b"brand new"})
    result = repo.ingest(small)
    # the root catalog and the new package's own catalog (the dirtab nests it); 20 others untouched
    assert result.catalogs_written == 2
    # the new file, two catalogs and the history; certificate and meta-info exist already
    assert result.objects_written == 4


def test_ingest_matches_real_cvmfs_server_catalogs(tmp_path: Path) -> None:
    ref = reference_dir()
    repo = Repository(tmp_path / "state", "reference.eessi.local")
    repo.init(dirtab=None)  # cvmfs_server ingest applies no .cvmfsdirtab
    for t in sorted((ref / "tarballs").glob("*.tar.gz")):
        repo.ingest(t, "versions", chunking=False)  # the real ingest stored its 20 MiB file whole
    repo.ingest(None, deletes=[ZLIB.lstrip("/") + "/share/empty"])
    refroot = ref / "srv" / "cvmfs" / "reference.eessi.local"
    real_manifest, _ = parse_manifest((refroot / ".cvmfspublished").read_bytes())

    def real(h: str) -> CatalogDoc:
        return read_catalog(zlib.decompress((refroot / "data" / h[:2] / f"{h[2:]}C").read_bytes()), tmp_path)

    ours_root, real_root = root_doc(repo), real(real_manifest.root_catalog)
    ours_child, real_child = doc_at(repo, ZLIB), real(real_root.nested[ZLIB][0])
    time_dependent = {"", "/versions", "/new_repository"}  # stamped at publish time
    for ours, theirs in ((ours_root, real_root), (ours_child, real_child)):
        assert set(ours.entries) == set(theirs.entries)
        for path, node in ours.entries.items():
            other = theirs.entries[path]
            fields = (
                "mode",
                "size",
                "hash",
                "symlink",
                "linkcount",
                "nested_mountpoint",
                "uid",
                "gid",
                "chunks",
            )
            if path not in time_dependent:
                fields += ("mtime",)
            assert {f: getattr(node, f) for f in fields} == {f: getattr(other, f) for f in fields}, path
        assert ours.statistics == theirs.statistics
        assert set(ours.properties) == set(theirs.properties)
    assert repo.manifest().revision == real_manifest.revision == 4


def test_history_has_generic_tag_per_publish_and_trunk(repo: Repository, tmp_path: Path) -> None:
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"a": b"a"}))
    repo.ingest(None, deletes=["versions/2023.06/software/linux/x86_64/generic/a"])
    m = repo.manifest()
    tags = read_tags(repo.store.get(m.history or "", "H"), repo.paths.tmp)
    generic = [t for t in tags if t.name.startswith("generic")]
    assert [t.revision for t in generic] == [1, 2, 3]
    by_name = {t.name: t for t in tags}
    assert by_name["trunk"].revision == 3 and by_name["trunk"].hash == m.root_catalog
    assert by_name["trunk-previous"].revision == 2


def test_commit_interrupted_at_each_step_keeps_previous_revision(repo: Repository, tmp_path: Path) -> None:
    steps: list[str] = []
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"x": b"x"}), hook=steps.append)
    assert steps[-1] == "manifest written"
    for step in steps[:-1]:
        before = repo.paths.manifest.read_bytes()

        def boom(name: str, stop: str = step) -> None:
            if name == stop:
                raise KeyboardInterrupt(f"simulated crash at {stop}")

        (tmp_path / step.replace("/", "_")).mkdir()
        t = software_tarball(
            tmp_path / step.replace("/", "_"), "2023.06", "x86_64/generic", {"y": step.encode()}
        )
        with pytest.raises(KeyboardInterrupt):
            repo.ingest(t, hook=boom)
        assert repo.paths.manifest.read_bytes() == before, step
        assert repo.manifest().revision == 2
    assert repo.ingest(t).revision == 3


def _hold_lock(state: str, ready: multiprocessing.synchronize.Event, seconds: float) -> None:
    repo = Repository(Path(state), NAME)
    with publisher_lock(repo.paths):
        ready.set()
        time.sleep(seconds)


def test_lock_second_publisher_times_out_naming_holder(repo: Repository, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(repo.paths.state_dir), ready, 5.0))
    holder.start()
    try:
        assert ready.wait(10)
        t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"x": b"x"})
        for _ in range(2):  # a waiter that gives up leaves the holder's name for the next one
            with pytest.raises(RepositoryError, match=rf"another publisher\) is locked by pid {holder.pid} "):
                repo.ingest(t, lock_timeout=0.3)
        assert repo.manifest().revision == 1
    finally:
        holder.kill()
        holder.join()
    assert repo.ingest(t, lock_timeout=5).revision == 2  # a dead holder leaves no stale lock


def test_lock_killed_holder_leaves_no_stale_lock(repo: Repository, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(repo.paths.state_dir), ready, 60.0))
    holder.start()
    assert ready.wait(10)
    os.kill(holder.pid or 0, 9)
    holder.join()
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"x": b"x"})
    assert repo.ingest(t, lock_timeout=2).revision == 2


def test_chunk_boundaries_respect_min_and_max() -> None:
    data = os.urandom(3 * 1024 * 1024)
    bounds = chunk_boundaries(data, minimum=256 * 1024, average=512 * 1024, maximum=1024 * 1024)
    assert bounds[-1] == len(data) and bounds == sorted(bounds)
    sizes = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    assert all(s <= 1024 * 1024 for s in sizes)
    assert all(s >= 256 * 1024 for s in sizes[:-1])
    assert chunk_boundaries(data, 256 * 1024, 512 * 1024, 1024 * 1024) == bounds  # deterministic
    assert chunk_boundaries(b"x" * 100) == [100]


def test_large_file_is_chunked_into_partial_objects(repo: Repository, tmp_path: Path) -> None:
    repo.store.chunk_sizes = (256 * 1024, 512 * 1024, 1024 * 1024)  # small sizes keep the test fast
    blob = os.urandom(3 * 1024 * 1024)
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/generic", {"big.bin": blob}))
    doc = root_doc(repo)
    node = next(n for p, n in doc.entries.items() if p.endswith("/big.bin"))
    assert node.hash is None and len(node.chunks) >= 3
    assert [c.offset for c in node.chunks] == sorted(c.offset for c in node.chunks)
    rebuilt = b"".join(zlib.decompress(repo.store.path(c.hash, "P").read_bytes()) for c in node.chunks)
    assert rebuilt == blob
    assert doc.statistics["self_chunked"] == 1 and doc.statistics["self_chunks"] == len(node.chunks)


KILLER = """
import os, sys
from pathlib import Path
from eessi_pipeline.cvmfs.repository import Repository
calls = []
def hook(name):
    calls.append(name)
    if len(calls) == int(sys.argv[3]):
        os.kill(os.getpid(), 9)
Repository(Path(sys.argv[1]), "software.eessi.local").ingest(Path(sys.argv[2]), hook=hook)
"""


def test_kill_9_during_publish_leaves_previous_revision_verifiable(repo: Repository, tmp_path: Path) -> None:
    import subprocess
    import sys

    from eessi_pipeline.cvmfs.reader import verify_repository

    master = repo.paths.keys.master_public.read_bytes()
    files = {"software/a/1.0/.cvmfscatalog": b"", "software/a/1.0/bin/a": b"a" * 1000, "b": b"b"}
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", files)
    steps: list[str] = []
    (tmp_path / "probe").mkdir()
    probe = Repository(tmp_path / "probe", NAME)
    probe.init()
    probe.ingest(t, hook=steps.append)
    assert len(steps) >= 5
    for k in range(1, len(steps)):  # every step but the last ("manifest written")
        proc = subprocess.run(
            [sys.executable, "-c", KILLER, str(repo.paths.state_dir), str(t), str(k)], check=False
        )
        assert proc.returncode == -9, f"not killed at step {k} ({steps[k - 1]})"
        report = verify_repository(repo.paths.root, master)
        assert report.revision == 1, steps[k - 1]
    result = repo.ingest(t, lock_timeout=5)
    assert result.revision == 2
    report = verify_repository(repo.paths.root, master)
    assert report.revision == 2 and report.warnings == ()


def test_dirtab_nests_installations_and_module_trees(repo: Repository, tmp_path: Path) -> None:
    files = {
        "software/zlib/1.2.13/lib/libz.so": b"z",
        "software/GSL/2.7/lib/libgsl.so": b"g",
        "modules/all/zlib/1.2.13.lua": b"-- lua",
    }
    repo.ingest(software_tarball(tmp_path, "2023.06", "x86_64/amd/zen3", files))
    prefix = "/versions/2023.06/software/linux/x86_64/amd/zen3"
    assert set(root_doc(repo).nested) == {
        f"{prefix}/software/zlib/1.2.13",
        f"{prefix}/software/GSL/2.7",
        f"{prefix}/modules/all",
    }


def test_dirtab_can_be_skipped(repo: Repository, tmp_path: Path) -> None:
    t = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"software/zlib/1.2.13/lib/libz.so": b"z"})
    repo.ingest(t, apply_dirtab=False)
    assert root_doc(repo).nested == {}


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        (
            "/versions/*/software/linux/*/*/modules/all",
            "/versions/2023.06/software/linux/x86_64/generic/modules/all",
            True,
        ),
        (
            "/versions/*/software/linux/*/*/modules/all",
            "/versions/2023.06/software/linux/x86_64/amd/zen3/modules/all",
            False,
        ),
        ("/versions/*/software/*", "/versions/2023.06/software", False),
        ("/versions/2023.*", "/versions/2023.06", True),
    ],
    ids=["two-level", "depth-differs", "shorter-path", "wildcard-in-component"],
)
def test_dirtab_match_is_component_wise(pattern: str, path: str, expected: bool) -> None:
    from eessi_pipeline.cvmfs.repository import dirtab_match

    assert dirtab_match(pattern, path) is expected


_COMPONENT = st.text(st.sampled_from("ab.*?[]!-"), max_size=4)


@given(
    st.lists(_COMPONENT, min_size=1, max_size=4),
    st.lists(st.text(st.sampled_from("ab.-[]"), max_size=3), max_size=4),
)
def test_dirtab_match_is_fnmatch_per_component(pattern: list[str], path: list[str]) -> None:
    """The compiled matcher answers what :func:`fnmatch.fnmatchcase` answers component by component."""
    import fnmatch

    from eessi_pipeline.cvmfs.repository import dirtab_match

    pat, where = "/" + "/".join(pattern), "/" + "/".join(path)
    want = pat.rstrip("/").split("/")
    have = where.split("/")
    expected = len(want) == len(have) and all(
        fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=False)
    )
    assert dirtab_match(pat, where) is expected


def test_ingest_zstd_tarball(repo: Repository, tmp_path: Path) -> None:
    import zstandard

    gz = software_tarball(tmp_path, "2023.06", "x86_64/generic", {"bin/z": b"zstd content"})
    import gzip

    zst = tmp_path / gz.name.replace(".tar.gz", ".tar.zst")
    zst.write_bytes(zstandard.ZstdCompressor().compress(gzip.decompress(gz.read_bytes())))
    repo.ingest(zst)
    assert any(p.endswith("/bin/z") for p in root_doc(repo).entries)


def test_ingest_pax_xattrs_land_in_the_catalog_blob(repo: Repository, tmp_path: Path) -> None:
    import io
    import tarfile

    t = tmp_path / "eessi-2023.06-software-linux-x86_64-generic-1700000000.tar.gz"
    with tarfile.open(t, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("2023.06/f")
        info.size, info.mode = 1, 0o644
        info.pax_headers = {"SCHILY.xattr.user.origin": "eessi", "SCHILY.xattr.user.a": "1"}
        tf.addfile(info, io.BytesIO(b"x"))
    repo.ingest(t)
    doc = root_doc(repo)
    node = doc.entries["/versions/2023.06/f"]
    assert node.xattr == bytes([1, 2, 6, 1]) + b"user.a1" + bytes([11, 5]) + b"user.origineessi"
    assert doc.statistics["self_xattr"] == 1


def test_ingest_into_existing_nested_catalog_updates_counts_without_reopening_others(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eessi_pipeline.cvmfs.repository as module
    from eessi_pipeline.cvmfs.reader import verify_repository

    files = {f"software/pkg{i}/1.0/data": f"{i}".encode() for i in range(6)}
    (tmp_path / "a").mkdir()
    repo.ingest(software_tarball(tmp_path / "a", "2023.06", "x86_64/generic", files))
    before = root_doc(repo).statistics["subtree_regular"]
    loads: list[str] = []
    original = module.Transaction._load

    def counting(self, root, hex_hash):  # type: ignore[no-untyped-def]
        loads.append(root)
        return original(self, root, hex_hash)

    monkeypatch.setattr(module.Transaction, "_load", counting)
    (tmp_path / "b").mkdir()
    extra = software_tarball(tmp_path / "b", "2023.06", "x86_64/generic", {"software/pkg3/1.0/extra": b"x"})
    result = repo.ingest(extra)
    assert result.catalogs_written == 2  # pkg3's catalog and the root
    assert sorted(loads) == ["", "/versions/2023.06/software/linux/x86_64/generic/software/pkg3/1.0"]
    assert root_doc(repo).statistics["subtree_regular"] == before + 1
    assert verify_repository(repo.paths.root, repo.paths.keys.master_public.read_bytes()).revision == 3
