"""Facts of the CVMFS format shared by writer and reader: flags, suffixes, path hashing."""

from __future__ import annotations

import hashlib
import struct

# Object suffixes (hash.h): whole files have none.
SUFFIX_CATALOG = "C"
SUFFIX_HISTORY = "H"
SUFFIX_CERTIFICATE = "X"
SUFFIX_PARTIAL = "P"
SUFFIX_METAINFO = "M"
SUFFIXES = ("", SUFFIX_CATALOG, SUFFIX_HISTORY, SUFFIX_CERTIFICATE, SUFFIX_PARTIAL, SUFFIX_METAINFO)

# Catalog entry flags (catalog_sql.h).
FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_FILE_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_FILE_CHUNK = 64
FLAG_FILE_EXTERNAL = 128
FLAG_HIDDEN = 0x8000

CATALOG_SCHEMA = "2.5"
CATALOG_SCHEMA_REVISION = 7
DEFAULT_TTL = 240
ROOT_PATH_MD5 = "d41d8cd98f00b204e9800998ecf8427e"  # manifest R: MD5 of ""
EMPTY_OBJECT_SHA1 = "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"  # zlib("") with the default level

STATISTICS_COUNTERS = tuple(
    f"{scope}_{name}"
    for scope in ("self", "subtree")
    for name in (
        "regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
        "file_size", "chunked_size", "xattr", "external", "external_file_size",
    )
)  # fmt: skip

# File chunking defaults (cvmfs_server_coda.sh).
CHUNK_MIN = 4 * 1024 * 1024
CHUNK_AVG = 8 * 1024 * 1024
CHUNK_MAX = 16 * 1024 * 1024


def md5path(path: str) -> tuple[int, int]:
    """MD5 of a repository path ("" for the root, else "/a/b") split into two signed int64."""
    a, b = struct.unpack("<qq", hashlib.md5(path.encode("utf-8", "surrogateescape")).digest())
    return int(a), int(b)


def object_path(hex_hash: str, suffix: str = "") -> str:
    """``data/XX/YYYY…<suffix>``: where an object lives under the repository's web root."""
    return f"data/{hex_hash[:2]}/{hex_hash[2:]}{suffix}"


def parent_path(path: str) -> str:
    """Parent of a repository path: "/a/b" -> "/a", "/a" -> "" (the root)."""
    return path.rsplit("/", 1)[0] if path else ""


def fingerprint(der: bytes) -> str:
    """Certificate fingerprint as in the whitelist: SHA-1 of the DER, upper-case hex, colon-separated."""
    digest = hashlib.sha1(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
