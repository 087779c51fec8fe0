"""Proof of format (d): random trees -> tarball -> ingest -> read back identical (hypothesis).

Files, symlinks, hard links, empty directories, odd permission bits and mtimes
go in through a real tarball and come back out through the independent reader
(``eessi_pipeline.cvmfs.reader``), which also verifies every revision.
"""

from __future__ import annotations

import io
import itertools
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.reader import open_repository
from eessi_pipeline.cvmfs.repository import Repository

NAME = "roundtrip.eessi.local"
_STATE = Path(tempfile.mkdtemp(prefix="eessi-roundtrip-"))
_REPO = Repository(_STATE, NAME)
_REPO.init()
_COUNTER = itertools.count()

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and s != ".cvmfscatalog"
)
perms = st.sampled_from([0o644, 0o755, 0o600, 0o711, 0o444, 0o700, 0o640, 0o555])
mtimes = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, tuple]:
    """path -> ("dir", perm, mtime) | ("file", perm, mtime, data) | ("link", mtime, target) | ("hard", target)."""
    tree: dict[str, tuple] = {}
    dirs = [""]
    for _ in range(draw(st.integers(1, 4))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(names)}".lstrip("/")
        if path not in tree:
            tree[path] = ("dir", draw(perms) | 0o700, draw(mtimes))  # owner can enter: tar must list it
            dirs.append(path)
    files: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(names)}".lstrip("/")
        if path in tree:
            continue
        kind = draw(st.sampled_from(["file", "file", "link", "hard"] if files else ["file", "link"]))
        if kind == "file":
            tree[path] = ("file", draw(perms), draw(mtimes), draw(st.binary(max_size=3000)))
            files.append(path)
        elif kind == "link":
            tree[path] = ("link", draw(mtimes), draw(st.sampled_from([*files, "../elsewhere", "x/y"])))
        else:
            tree[path] = ("hard", draw(st.sampled_from(files)))
    return tree


def _tarball(tree: dict[str, tuple], path: Path) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, spec in tree.items():
            info = tarfile.TarInfo(name)
            if spec[0] == "dir":
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, spec[1], spec[2]
                tf.addfile(info)
            elif spec[0] == "file":
                info.mode, info.mtime, info.size = spec[1], spec[2], len(spec[3])
                tf.addfile(info, io.BytesIO(spec[3]))
            elif spec[0] == "link":
                info.type, info.mtime, info.linkname, info.mode = tarfile.SYMTYPE, spec[1], spec[2], 0o777
                tf.addfile(info)
            else:
                target = tree[spec[1]]
                info.type, info.linkname, info.mode, info.mtime = (
                    tarfile.LNKTYPE,
                    spec[1],
                    target[1],
                    target[2],
                )
                tf.addfile(info)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_roundtrip_random_tree_reads_back_identical(tree: dict[str, tuple]) -> None:
    base = f"versions/rt{next(_COUNTER)}"
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "tree.tar.gz"
        _tarball(tree, tarball)
        result = _REPO.ingest(tarball, base)
    key = _REPO.paths.keys.master_public.read_bytes()
    with open_repository(_REPO.paths.root, key) as reader:
        assert reader.verify().revision == result.revision
        listed = {e.path for e in reader.walk() if e.path.startswith(f"/{base}/")}
        assert listed == {f"/{base}/{p}" for p in tree}
        for path, spec in tree.items():
            entry = reader.lookup(f"/{base}/{path}")
            assert entry is not None, path
            if spec[0] == "dir":
                assert entry.is_dir and stat.S_IMODE(entry.mode) == spec[1] and entry.mtime == spec[2]
            elif spec[0] == "link":
                assert entry.is_symlink and entry.symlink == spec[2] and entry.mtime == spec[1]
            else:
                source = spec if spec[0] == "file" else tree[spec[1]]  # hard links come back as copies
                assert entry.is_file and entry.linkcount == 1
                assert stat.S_IMODE(entry.mode) == source[1] and entry.mtime == source[2]
                assert reader.read_file(f"/{base}/{path}") == source[3]
