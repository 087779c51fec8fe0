"""The ``.cvmfspublished`` manifest: key letters, emission order, signature block.

Layout: one ``<letter><value>\\n`` line per key, then ``--\\n``, the hex SHA-1 of
everything before ``--`` and a newline, then the raw RSA signature bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from ..errors import RepositoryError
from .common import DEFAULT_TTL, ROOT_PATH_MD5


@dataclass(frozen=True, slots=True)
class Manifest:
    root_catalog: str  # C: hex hash of the root catalog (no suffix)
    root_catalog_size: int  # B: uncompressed size of the root catalog
    revision: int  # S
    name: str  # N
    certificate: str  # X
    ttl: int = DEFAULT_TTL  # D
    root_path_md5: str = ROOT_PATH_MD5  # R
    garbage_collectable: bool = False  # G
    alt_catalog_path: bool = False  # A
    history: str | None = None  # H
    timestamp: int | None = None  # T
    metainfo: str | None = None  # M
    reflog: str | None = None  # Y

    def body(self) -> bytes:
        """The signed part: key lines in cvmfs's order (C B R D S G A, then L N X H T M Y if set)."""
        yn = {True: "yes", False: "no"}
        lines = [
            f"C{self.root_catalog}",
            f"B{self.root_catalog_size}",
            f"R{self.root_path_md5}",
            f"D{self.ttl}",
            f"S{self.revision}",
            f"G{yn[self.garbage_collectable]}",
            f"A{yn[self.alt_catalog_path]}",
            f"N{self.name}",
            f"X{self.certificate}",
        ]
        if self.history:
            lines.append(f"H{self.history}")
        if self.timestamp is not None:
            lines.append(f"T{self.timestamp}")
        if self.metainfo:
            lines.append(f"M{self.metainfo}")
        if self.reflog:
            lines.append(f"Y{self.reflog}")
        return "".join(line + "\n" for line in lines).encode()

    def with_(self, **changes: object) -> Manifest:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SignedText:
    """A signed CVMFS text file split into its parts."""

    body: bytes  # the signed lines, each ending in \n
    hash_hex: str  # the hash line after "--"
    signature: bytes  # raw signature bytes to EOF


def split_signed(raw: bytes, what: str) -> SignedText:
    """Split manifest or whitelist bytes at the ``--`` line; check the hash line matches the body."""
    marker = b"\n--\n"
    if raw.startswith(b"--\n"):
        raise RepositoryError(f"{what}: no key lines before '--'")
    idx = raw.find(marker)
    if idx < 0:
        raise RepositoryError(
            f"{what}: no '--' line ending the signed part; the file is truncated or not a CVMFS {what}"
        )
    body = raw[: idx + 1]
    rest = raw[idx + len(marker) :]
    nl = rest.find(b"\n")
    if nl < 0:
        raise RepositoryError(f"{what}: no hash line after '--'")
    hash_hex = rest[:nl].decode("ascii", "replace").strip()
    signature = rest[nl + 1 :]
    algo = hashlib.sha1
    if hash_hex != algo(body).hexdigest():
        raise RepositoryError(
            f"{what}: the hash after '--' ({hash_hex}) does not match the signed lines; it was altered"
        )
    return SignedText(body, hash_hex, signature)


def assemble_signed(body: bytes, signature: bytes) -> bytes:
    return body + b"--\n" + hashlib.sha1(body).hexdigest().encode() + b"\n" + signature


def parse_manifest(raw: bytes) -> tuple[Manifest, SignedText]:
    """Parse ``.cvmfspublished``; refuse unknown or missing required keys."""
    signed = split_signed(raw, ".cvmfspublished")
    fields: dict[str, str] = {}
    for line in signed.body.decode("utf-8", "replace").splitlines():
        if not line:
            raise RepositoryError(".cvmfspublished: empty line in the key section")
        key, value = line[0], line[1:]
        if key not in "CBRDSGALNXHTMYZ":
            raise RepositoryError(f".cvmfspublished: unknown key {key!r} (line {line!r})")
        fields[key] = value if key != "Z" or key not in fields else fields[key] + "|" + value
    for key in "CRSN":
        if key not in fields:
            raise RepositoryError(f".cvmfspublished: required key {key!r} is missing")
    if fields["R"] != ROOT_PATH_MD5:
        raise RepositoryError(
            f".cvmfspublished: R is {fields['R']}, not the MD5 of the root path ({ROOT_PATH_MD5})"
        )
    try:
        m = Manifest(
            root_catalog=fields["C"],
            root_catalog_size=int(fields.get("B", "0")),
            revision=int(fields["S"]),
            name=fields["N"],
            certificate=fields.get("X", ""),
            ttl=int(fields.get("D", str(DEFAULT_TTL))),
            garbage_collectable=fields.get("G", "no") == "yes",
            alt_catalog_path=fields.get("A", "no") == "yes",
            history=fields.get("H"),
            timestamp=int(fields["T"]) if "T" in fields else None,
            metainfo=fields.get("M"),
            reflog=fields.get("Y"),
        )
    except ValueError as e:
        raise RepositoryError(f".cvmfspublished: a numeric key has a non-numeric value ({e})") from e
    return m, signed
