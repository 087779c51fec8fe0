"""The CVMFS reader and verifier against a repository written by the real cvmfs_server 2.12.

The fixture lives in ``tests/data/cvmfs-reference`` (see tests/data/README.md).
Tampering tests work on a writable copy; "resealed" copies are tampered deeper (catalog
contents) and then re-signed with freshly generated keys, so that only the deep check
can catch them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import shutil
import sqlite3
import stat
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from helpers import DATA_DIR

from eessi_pipeline.cvmfs.common import fingerprint, md5path, object_path
from eessi_pipeline.cvmfs.manifest import assemble_signed, parse_manifest, split_signed
from eessi_pipeline.cvmfs.reader import (
    DirSource,
    HttpSource,
    RepositoryReader,
    open_repository,
    open_source,
    verify_repository,
)
from eessi_pipeline.cvmfs.verify import (
    certificate_fingerprint,
    verify_manifest_signature,
    verify_whitelist_signature,
)
from eessi_pipeline.cvmfs.whitelist import Whitelist, parse_whitelist
from eessi_pipeline.errors import RepositoryError

FIXTURE = DATA_DIR / "cvmfs-reference"
NAME = "reference.eessi.local"
REPO = FIXTURE / "srv" / "cvmfs" / NAME
MASTER_PUB = FIXTURE / "keys" / f"{NAME}.pub"
EXPECTED_TREE = FIXTURE / "expected-tree.json"
NESTED = "/versions/2023.06/software/linux/x86_64/generic/software/zlib/1.2.13"

# Objects of revision 4 (see the fixture's catalogs).
ROOT_CATALOG = "fdd36dfb2a7a58208bf1aa5feded0aea345a9137"
NESTED_CATALOG = "ca0f386cc804ca245374a3d4d9849985b0fc4ab0"
CERTIFICATE = "258a7937544e8f305b0a694be768fabaedafaa3b"
HISTORY = "83ae4f156d3bfdedb786b51da41c914970a957ac"
METAINFO = "85e4f386da0d5d77c7f66cf2f58e10951f24b653"
LUA_OBJECT = "4c4089bd1632d8024cf56e67b13052731eafd131"


def _expected() -> dict[str, Any]:
    if not EXPECTED_TREE.is_file():
        return {"entries": []}
    data: dict[str, Any] = json.loads(EXPECTED_TREE.read_text())
    return data


EXPECTED = _expected()
FILES = [e for e in EXPECTED["entries"] if e["type"] == "file"]


@pytest.fixture(scope="module")
def reader() -> Iterator[RepositoryReader]:
    with open_repository(REPO, MASTER_PUB.read_bytes()) as r:
        yield r


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A writable copy of the repository directory."""
    dst = tmp_path / NAME
    shutil.copytree(REPO, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _obj(repo: Path, hex_hash: str, suffix: str = "") -> Path:
    return repo / object_path(hex_hash, suffix)


# --------------------------------------------------------------------------- reading the real repository


def test_verify_reference_repository_passes_at_revision_4(reader: RepositoryReader) -> None:
    report = reader.verify()
    assert report.revision == 4
    assert report.catalogs == 2  # root + the zlib/1.2.13 nested catalog
    assert report.objects == 9  # distinct file objects (hard-link pair and empties share)
    assert report.entries == len(EXPECTED["entries"]) + 1  # the root too


def test_verify_repository_function_passes_without_master_key() -> None:
    assert verify_repository(str(REPO), None).revision == 4


def test_tree_json_equals_expected_tree_exactly(reader: RepositoryReader) -> None:
    assert reader.tree_json() == EXPECTED


@pytest.mark.parametrize("item", FILES, ids=[e["path"].rsplit("/", 1)[-1] for e in FILES])
def test_read_file_every_file_has_expected_sha1_and_size(
    reader: RepositoryReader, item: dict[str, Any]
) -> None:
    content = reader.read_file(item["path"])
    assert len(content) == item["size"]
    assert hashlib.sha1(content).hexdigest() == item["sha1"]


def test_tags_one_generic_tag_per_revision_plus_trunk_and_trunk_previous(reader: RepositoryReader) -> None:
    tags = reader.tags()
    by_name = {t.name: t for t in tags}
    # the real server names a second tag within the same second "generic_1-<time>"
    generic = {t.revision for t in tags if t.name.split("-", 1)[0].split("_")[0] == "generic"}
    assert generic == {1, 2, 3, 4}
    assert by_name["trunk"].revision == 4
    assert by_name["trunk"].hash == reader.manifest.root_catalog
    assert by_name["trunk-previous"].revision == 3
    assert by_name["trunk"].description == "current HEAD"


def test_lookup_nested_catalog_root_is_found(reader: RepositoryReader) -> None:
    entry = reader.lookup(NESTED)
    assert entry is not None
    assert (entry.is_dir, entry.is_nested_root) == (True, True)
    assert (entry.flags, entry.name, entry.linkcount) == (33, "1.2.13", 6)
    inner = reader.lookup(NESTED + "/include/zlib.h")
    assert inner is not None
    assert (inner.is_file, inner.size) == (True, 51)


def test_lookup_root_and_missing_paths(reader: RepositoryReader) -> None:
    root = reader.lookup("/")
    assert root is not None
    assert (root.is_dir, root.path, root.name) == (True, "/", "")
    assert reader.lookup("") == root
    assert reader.lookup("/versions/nope") is None
    assert reader.lookup(NESTED + "/share/empty") is None  # deleted in revision 4


def test_lookup_symlink_has_flags_12_and_target(reader: RepositoryReader) -> None:
    link = reader.lookup(NESTED + "/lib/libz.so")
    assert link is not None
    assert (link.flags, link.is_symlink, link.is_file, link.is_dir) == (12, True, False, False)
    assert link.symlink == "libz.so.1"


def test_listdir_root_sorted_by_name(reader: RepositoryReader) -> None:
    assert [e.name for e in reader.listdir("/")] == ["new_repository", "versions"]


def test_listdir_nested_mountpoint_children_come_from_nested_catalog(reader: RepositoryReader) -> None:
    names = [e.name for e in reader.listdir(NESTED)]
    assert names == [".cvmfscatalog", "bin", "include", "lib", "share"]
    parent = reader.listdir(NESTED.rsplit("/", 1)[0])
    assert [(e.name, e.flags) for e in parent] == [("1.2.13", 33)]  # the nested root, not the mountpoint


def test_listdir_file_raises_not_a_directory(reader: RepositoryReader) -> None:
    with pytest.raises(RepositoryError, match="new_repository: not a directory"):
        reader.listdir("/new_repository")


def test_walk_lists_nested_mountpoint_once(reader: RepositoryReader) -> None:
    paths = [e.path for e in reader.walk()]
    assert paths.count(NESTED) == 1
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize(
    ("path", "message"),
    [("/versions", "not a regular file .a directory"), (NESTED + "/lib/libz.so", "a symlink to 'libz.so.1'"),
     ("/nope", "no such path")],
    ids=["directory", "symlink", "missing"],
)  # fmt: skip
def test_read_file_non_file_raises(reader: RepositoryReader, path: str, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        reader.read_file(path)


def test_certificate_fingerprint_is_listed_in_whitelist(reader: RepositoryReader) -> None:
    pem = (FIXTURE / "keys" / f"{NAME}.crt").read_bytes()
    assert certificate_fingerprint(pem) in reader.whitelist.fingerprints
    assert certificate_fingerprint(reader.fetch_object(CERTIFICATE, "X")) == certificate_fingerprint(pem)


def test_signature_functions_accept_the_real_files() -> None:
    _, signed = parse_manifest((REPO / ".cvmfspublished").read_bytes())
    verify_manifest_signature(signed, (FIXTURE / "keys" / f"{NAME}.crt").read_bytes())
    _, wl_signed = parse_whitelist((REPO / ".cvmfswhitelist").read_bytes())
    verify_whitelist_signature(wl_signed, MASTER_PUB.read_bytes())


def test_open_source_picks_http_for_urls_and_dir_otherwise() -> None:
    assert isinstance(open_source("http://127.0.0.1:1/cvmfs/x"), HttpSource)
    assert isinstance(open_source(REPO), DirSource)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(FIXTURE / "srv"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cvmfs/{NAME}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_verify_over_http_passes(http_base: str) -> None:
    report = verify_repository(http_base, MASTER_PUB.read_bytes())
    assert (report.revision, report.catalogs) == (4, 2)


def test_http_source_missing_file_names_url(http_base: str) -> None:
    with pytest.raises(RepositoryError, match=r"/cvmfs/reference\.eessi\.local/data/00/nope: missing .*404"):
        HttpSource(http_base).fetch("data/00/nope")


# --------------------------------------------------------------------------- tampering


def _rehash(path: Path, edit: Callable[[bytes], bytes]) -> None:
    """Edit the signed body of a manifest/whitelist and recompute its hash line (signature kept)."""
    raw = path.read_bytes()
    signed = split_signed(raw, path.name)
    path.write_bytes(assemble_signed(edit(signed.body), signed.signature))


def _drop_reflog_ref(repo: Path, hex_hash: str) -> None:
    db = sqlite3.connect(repo / ".cvmfsreflog")
    db.execute("DELETE FROM refs WHERE hash = ?", (hex_hash,))
    db.commit()
    db.close()


def _flip_signature(path: Path) -> None:
    _flip(path, len(path.read_bytes()) - 1)


def _replace_in(name: str, old: bytes, new: bytes) -> Callable[[Path], None]:
    return lambda repo: _rehash(repo / name, lambda body: body.replace(old, new))


def _flip_obj(hex_hash: str, suffix: str = "") -> Callable[[Path], None]:
    return lambda repo: _flip(_obj(repo, hex_hash, suffix))


def _hash_error(hex_hash: str, suffix: str = "") -> str:
    return rf"{object_path(hex_hash, suffix)}: content hash is [0-9a-f]{{40}}, not the {hex_hash} of its name"


MANIFEST_SIG = r"\.cvmfspublished: the signature does not verify with the repository certificate"
WHITELIST_SIG = r"\.cvmfswhitelist: the signature does not verify with the master public key"
TAMPERING: list[tuple[str, Callable[[Path], None], str]] = [
    ("data-object", _flip_obj(LUA_OBJECT), _hash_error(LUA_OBJECT)),
    ("root-catalog", _flip_obj(ROOT_CATALOG, "C"), _hash_error(ROOT_CATALOG, "C")),
    ("nested-catalog", _flip_obj(NESTED_CATALOG, "C"), _hash_error(NESTED_CATALOG, "C")),
    ("certificate", _flip_obj(CERTIFICATE, "X"), _hash_error(CERTIFICATE, "X")),
    ("history", _flip_obj(HISTORY, "H"), _hash_error(HISTORY, "H")),
    ("metainfo", _flip_obj(METAINFO, "M"), _hash_error(METAINFO, "M")),
    ("missing-object", lambda r: _obj(r, LUA_OBJECT).unlink(), rf"{object_path(LUA_OBJECT)}: missing"),
    ("manifest-body", lambda r: _flip(r / ".cvmfspublished", 3), r"\.cvmfspublished: the hash after '--'"),
    ("manifest-body-rehashed", _replace_in(".cvmfspublished", b"\nS4\n", b"\nS5\n"), MANIFEST_SIG),
    ("manifest-signature", lambda r: _flip_signature(r / ".cvmfspublished"), MANIFEST_SIG),
    (
        "whitelist-expiry",
        lambda r: _flip(r / ".cvmfswhitelist", 17),
        r"\.cvmfswhitelist: the hash after '--'",
    ),
    ("whitelist-expiry-rehashed", _replace_in(".cvmfswhitelist", b"E2036", b"E2046"), WHITELIST_SIG),
    ("whitelist-signature", lambda r: _flip_signature(r / ".cvmfswhitelist"), WHITELIST_SIG),
    (
        "reflog-unreadable",
        lambda r: (r / ".cvmfsreflog").write_bytes(b"not a database" * 100),
        r"\.cvmfsreflog: SHA-1 is [0-9a-f]{40}, but \.cvmfspublished Y is [0-9a-f]{40}, and it is not a readable",
    ),
    (
        "reflog-lost-root-catalog",
        lambda r: _drop_reflog_ref(r, ROOT_CATALOG),
        r"\.cvmfsreflog: .* does not record the root catalog",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_verify_tampered_repository_raises_naming_what_broke(
    repo_copy: Path, mutate: Callable[[Path], None], message: str
) -> None:
    verify_repository(repo_copy, MASTER_PUB.read_bytes())  # the copy itself is fine
    mutate(repo_copy)
    with pytest.raises(RepositoryError, match=message):
        verify_repository(repo_copy, MASTER_PUB.read_bytes())


def test_read_file_corrupt_object_raises_naming_object(repo_copy: Path) -> None:
    _flip(_obj(repo_copy, LUA_OBJECT))
    with open_repository(repo_copy) as r, pytest.raises(RepositoryError, match=object_path(LUA_OBJECT)):
        r.read_file("/versions/2023.06/software/linux/x86_64/generic/modules/all/zlib/1.2.13.lua")


@pytest.mark.parametrize(
    ("now", "ok"),
    [(dt.datetime(2036, 11, 22, 14, 59, 59, tzinfo=dt.UTC), True),  # E20361122145306: same hour still valid
     (dt.datetime(2036, 11, 22, 15, 0, 0, tzinfo=dt.UTC), False),
     (dt.datetime(2100, 1, 1), False)],  # naive: taken as UTC
    ids=["same-hour", "next-hour", "far-future-naive"],
)  # fmt: skip
def test_verify_whitelist_expiry_compares_to_the_hour(now: dt.datetime, ok: bool) -> None:
    with RepositoryReader(DirSource(REPO), MASTER_PUB.read_bytes(), now=now) as r:
        if ok:
            r.check_signatures()
        else:
            with pytest.raises(RepositoryError, match=r"\.cvmfswhitelist: expired at 2036-11-22 14:53:06"):
                r.verify()


def test_verify_wrong_master_key_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(RepositoryError, match=WHITELIST_SIG):
        verify_repository(REPO, pem)


def test_verify_master_key_not_pem_refused() -> None:
    with pytest.raises(RepositoryError, match="master public key: not a PEM public key"):
        verify_repository(REPO, b"not a key")


def test_verify_missing_repository_names_path(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"\.cvmfspublished: missing"):
        verify_repository(tmp_path / "nothing", None)


# --------------------------------------------------------------------------- deep tampering, re-signed


@dataclass(frozen=True, slots=True)
class _Keys:
    master: rsa.RSAPrivateKey
    repo: rsa.RSAPrivateKey
    cert_pem: bytes

    @property
    def master_pub_pem(self) -> bytes:
        return self.master.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> _Keys:
    master = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    repo = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{NAME} CernVM-FS Release Managers")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(repo.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(repo, hashes.SHA256())
    )
    return _Keys(master, repo, cert.public_bytes(serialization.Encoding.PEM))


def _raw_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """``openssl pkeyutl -sign``: PKCS#1 type-1 padding around the message, no digest."""
    n, d = key.public_key().public_numbers().n, key.private_numbers().d
    k = (n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(message)) + b"\x00" + message
    return pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")


def _store(repo: Path, data: bytes, suffix: str) -> tuple[str, int]:
    packed = zlib.compress(data)
    h = hashlib.sha1(packed).hexdigest()
    path = _obj(repo, h, suffix)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(packed)
    return h, len(data)


def _edit_catalog(repo: Path, hex_hash: str, work: Path, sql: list[tuple[str, tuple[Any, ...]]]) -> bytes:
    db = work / f"{hex_hash}.sqlite"
    db.write_bytes(zlib.decompress(_obj(repo, hex_hash, "C").read_bytes()))
    conn = sqlite3.connect(db)
    for statement, params in sql:
        conn.execute(statement, params)
    conn.commit()
    conn.close()
    return db.read_bytes()


def _reseal(
    repo: Path,
    keys: _Keys,
    work: Path,
    root_sql: list[tuple[str, tuple[Any, ...]]] | None = None,
    nested_sql: list[tuple[str, tuple[Any, ...]]] | None = None,
    fingerprints: tuple[str, ...] | None = None,
) -> None:
    """Apply SQL to the catalogs, store them, and re-sign manifest and whitelist with ``keys``."""
    manifest, _ = parse_manifest((repo / ".cvmfspublished").read_bytes())
    fix_nested: list[tuple[str, tuple[Any, ...]]] = []
    if nested_sql is not None:
        h, size = _store(repo, _edit_catalog(repo, NESTED_CATALOG, work, nested_sql), "C")
        fix_nested = [("UPDATE nested_catalogs SET sha1=?, size=? WHERE path=?", (h, size, NESTED))]
    root_hash, root_size = _store(
        repo, _edit_catalog(repo, ROOT_CATALOG, work, fix_nested + (root_sql or [])), "C"
    )
    cert_hash, _ = _store(repo, keys.cert_pem, "X")
    body = manifest.with_(root_catalog=root_hash, root_catalog_size=root_size, certificate=cert_hash).body()
    hash_hex = hashlib.sha1(body).hexdigest().encode()
    signature = keys.repo.sign(hash_hex, padding.PKCS1v15(), hashes.SHA1())
    (repo / ".cvmfspublished").write_bytes(assemble_signed(body, signature))
    old, _ = parse_whitelist((repo / ".cvmfswhitelist").read_bytes())
    der = x509.load_pem_x509_certificate(keys.cert_pem).public_bytes(serialization.Encoding.DER)
    wl = Whitelist(old.created, old.expires, old.name, fingerprints or (fingerprint(der),)).body()
    (repo / ".cvmfswhitelist").write_bytes(
        assemble_signed(wl, _raw_sign(keys.master, hashlib.sha1(wl).hexdigest().encode()))
    )


def test_reseal_untouched_copy_verifies_with_new_keys(repo_copy: Path, keys: _Keys, tmp_path: Path) -> None:
    _reseal(repo_copy, keys, tmp_path)
    assert verify_repository(repo_copy, keys.master_pub_pem).revision == 4
    with pytest.raises(RepositoryError, match="master public key"):
        verify_repository(repo_copy, MASTER_PUB.read_bytes())


_STAT = "UPDATE statistics SET value=value+1 WHERE counter=?"
_ZERO_SUBTREE = "UPDATE statistics SET value=0 WHERE counter LIKE 'subtree_%'"
_DEC = "UPDATE statistics SET value=value-1 WHERE counter=?"
RESEALED: list[tuple[str, dict[str, Any], str]] = [
    ("root-self-regular", {"root_sql": [(_STAT, ("self_regular",))]},
     r"root catalog \(data/.*C\): statistics counter self_regular is 5, but the catalog's rows give 4"),
    ("root-self-dir", {"root_sql": [(_STAT, ("self_dir",))]}, r"root catalog .*self_dir is 19.* give 18"),
    ("root-subtree-symlink", {"root_sql": [(_STAT, ("subtree_symlink",))]},
     r"root catalog .*subtree_symlink is 3, but its nested catalogs sum to 2"),
    ("root-counter-missing", {"root_sql": [("DELETE FROM statistics WHERE counter=?", ("subtree_xattr",))]},
     r"root catalog .*counter\(s\) missing: subtree_xattr"),
    ("nested-self-file-size", {"nested_sql": [(_STAT, ("self_file_size",))]},
     rf"catalog of {NESTED} .*self_file_size is 121413.* give 121412"),
    ("nested-size-column", {"root_sql": [("UPDATE nested_catalogs SET size=size+1", ())]},
     rf"catalog of {NESTED} .*nested_catalogs row gives size 57345, but the uncompressed catalog has 57344"),
    ("root-revision", {"root_sql": [("UPDATE properties SET value='3' WHERE key='revision'", ())]},
     r"root catalog .*revision property is '3', but \.cvmfspublished S is 4"),
    ("nested-root-prefix", {"nested_sql": [("UPDATE properties SET value='/x' WHERE key='root_prefix'", ())]},
     rf"catalog of {NESTED} .*root_prefix property is '/x'"),
    ("orphan-row", {"root_sql": [("UPDATE catalog SET parent_1=1 WHERE name='new_repository'", ())]},
     r"1 catalog row\(s\) are not reachable"),
    ("mountpoint-unlisted", {"root_sql": [("DELETE FROM nested_catalogs", ()), (_DEC, ("self_nested",)), (_ZERO_SUBTREE, ())]},
     rf"{NESTED}: flagged as a nested catalog mountpoint, but no nested_catalogs row"),
    ("symlink-flags", {"nested_sql": [("UPDATE catalog SET flags=4 WHERE name='libz.so'", ())]},
     r"/lib/libz\.so: mode 120777 and flags 4 disagree"),
    ("certificate-not-whitelisted", {"fingerprints": ("AB:" * 19 + "CD",)},
     r"data/.*X: certificate fingerprint .* is not listed in \.cvmfswhitelist"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), [t[1:] for t in RESEALED], ids=[t[0] for t in RESEALED])
def test_verify_resealed_deep_tampering_raises_naming_what_broke(
    repo_copy: Path, keys: _Keys, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    _reseal(repo_copy, keys, tmp_path, **change)
    with pytest.raises(RepositoryError, match=message):
        verify_repository(repo_copy, keys.master_pub_pem)


def test_read_file_chunked_file_reassembles_chunks_and_verifies(
    repo_copy: Path, keys: _Keys, tmp_path: Path, reader: RepositoryReader
) -> None:
    """The fixture has no chunked file (the real ingest stored 20 MiB whole): make one, re-sign, read it."""
    path = NESTED + "/lib/libz.so.1.2.13"
    content = reader.read_file(path)
    cut = 60_000
    (h1, _), (h2, _) = _store(repo_copy, content[:cut], "P"), _store(repo_copy, content[cut:], "P")
    m1, m2 = md5path(path)
    add = "UPDATE statistics SET value=value+? WHERE counter=?"
    size = len(content)
    counters = [("chunked", 1), ("chunks", 2), ("chunked_size", size)]
    nested_sql: list[tuple[str, tuple[Any, ...]]] = [
        ("UPDATE catalog SET flags=68, hash=NULL WHERE md5path_1=? AND md5path_2=?", (m1, m2)),
        ("INSERT INTO chunks VALUES (?, ?, 0, ?, ?)", (m1, m2, cut, bytes.fromhex(h1))),
        ("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", (m1, m2, cut, size - cut, bytes.fromhex(h2))),
    ] + [(add, (n, f"self_{c}")) for c, n in counters]
    root_sql = [(add, (n, f"subtree_{c}")) for c, n in counters]
    _reseal(repo_copy, keys, tmp_path, root_sql=root_sql, nested_sql=nested_sql)
    with open_repository(repo_copy, keys.master_pub_pem) as r:
        assert r.verify().objects == 10  # libz's whole object is no longer referenced; two chunks are
        entry = r.lookup(path)
        assert entry is not None
        assert (entry.is_chunked, entry.hash, [c.size for c in entry.chunks]) == (
            True,
            None,
            [cut, size - cut],
        )
        assert r.read_file(path) == content


def test_verify_reflog_one_step_ahead_is_a_warning_not_an_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    for p in [repo, *repo.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    db = sqlite3.connect(repo / ".cvmfsreflog")  # an interrupted publish added its refs already
    db.execute("INSERT INTO refs VALUES (?, 0, 1900000000)", ("ab" * 20,))
    db.commit()
    db.close()
    report = verify_repository(repo, MASTER_PUB.read_bytes())
    assert report.revision == 4
    assert len(report.warnings) == 1 and "still records this revision" in report.warnings[0]
