"""Which catalog holds a path, asked thousands of times per ingest and remembered per directory: the
remembered answer equals the walk from the root catalog after any sequence of edits (directories and
files added, nested catalogs made, paths and whole nested catalogs removed), also across a publish
(catalogs loaded back from the repository)."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eessi_pipeline.cvmfs.catalog import DIR_SIZE, CatalogDoc, Node
from eessi_pipeline.cvmfs.repository import Repository
from eessi_pipeline.cvmfs.transaction import Transaction, _within
from eessi_pipeline.errors import RepositoryError

NAME = "software.eessi.local"
DIRS = ["/a", "/a/b", "/a/b/c", "/a/bb", "/a/b/c/d", "/e", "/e/f"]


def walked(txn: Transaction, path: str) -> CatalogDoc:
    """The catalog holding ``path``, by descending from the root through every mountpoint above it."""
    doc = txn.root_doc()
    while True:
        child = next((mp for mp in doc.nested if _within(path, mp)), None)
        if child is None:
            return doc
        doc = txn.docs.get(child) or txn._load(child, doc.nested[child][0])


def _dir(path: str) -> Node:
    return Node(path.rsplit("/", 1)[1], stat.S_IFDIR | 0o755, 1700000000, DIR_SIZE)


def _file(path: str) -> Node:
    return Node(
        path.rsplit("/", 1)[1],
        stat.S_IFREG | 0o644,
        1700000000,
        0,
        hash="e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
    )


ops = st.lists(
    st.tuples(st.sampled_from(["dir", "file", "nest", "remove", "publish"]), st.sampled_from(DIRS)),
    max_size=25,
)


def _apply(repo: Repository, txn: Transaction, op: str, path: str) -> Transaction:
    if op == "dir":
        txn.put(path, _dir(path))
    elif op == "file":
        if txn.get(path) is None and txn.get(path.rsplit("/", 1)[0] or "/") is not None:
            txn.put(path + "/x", _file(path + "/x"))
    elif op == "nest":
        with contextlib.suppress(RepositoryError):  # not a directory (yet)
            txn.make_nested(path)
    elif op == "remove":
        if txn.get(path) is not None:
            txn.remove(path)
    else:
        txn.commit()
        txn = repo.transaction()  # a fresh one, loading nested catalogs back as it goes
    return txn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_remembered_catalog_equals_the_walk_after_any_edits(tmp_path_factory: object, steps: list) -> None:
    base = tmp_path_factory.mktemp("txn")  # type: ignore[attr-defined]
    repo = Repository(Path(base) / "state", NAME)
    repo.init()
    txn = repo.transaction()
    for op, path in steps:
        txn = _apply(repo, txn, op, path)
        for p in ["", *DIRS, *(d + "/x" for d in DIRS)]:
            assert txn.catalog_for(p).root == walked(txn, p).root, (steps, p)
