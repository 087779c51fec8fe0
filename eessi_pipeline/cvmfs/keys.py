"""Repository and master keys, the certificate, and signing as cvmfs does it.

* repository key (``<name>.key``) + self-signed X.509 certificate (``<name>.crt``),
  CN "<name, at most 30 characters> CernVM-FS Release Managers", 365 days;
* master key (``<name>.masterkey``) with its public part (``<name>.pub``), which
  clients hold to verify the whitelist;
* the manifest is signed with RSA PKCS#1 v1.5 + SHA-1 over the ASCII hex hash;
* the whitelist is signed with *raw* PKCS#1 type-1 padding around the ASCII hex
  hash (``openssl pkeyutl -sign``), no DigestInfo.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ..errors import RepositoryError
from ..trust import PUBLIC_FILE_MODE, ensure_dir, refuse_if_writable, write_file


@dataclass(frozen=True, slots=True)
class KeyPaths:
    directory: Path
    name: str

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    @property
    def certificate(self) -> Path:
        return self.directory / f"{self.name}.crt"

    @property
    def master_key(self) -> Path:
        return self.directory / f"{self.name}.masterkey"

    @property
    def master_public(self) -> Path:
        return self.directory / f"{self.name}.pub"

    def all(self) -> tuple[Path, ...]:
        return (self.key, self.certificate, self.master_key, self.master_public)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_keys(paths: KeyPaths, now: dt.datetime | None = None) -> None:
    """Create all four files; refuse if any exists (keys are never overwritten)."""
    existing = [p for p in paths.all() if p.exists()]
    if existing:
        raise RepositoryError(
            f"keys already exist ({', '.join(str(p) for p in existing)}); they are never overwritten: "
            "reuse them, or move them away to start a new repository"
        )
    ensure_dir(paths.directory)  # 0755 whatever the umask, and the state directory above it if new
    refuse_if_writable(paths.directory, "the key directory", RepositoryError)
    now = now or dt.datetime.now(dt.UTC)
    repo_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    master = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{paths.name[:30]} CernVM-FS Release Managers")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(repo_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(repo_key, hashes.SHA256())
    )
    pem = serialization.PrivateFormat.TraditionalOpenSSL
    _write_private(
        paths.key, repo_key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption())
    )
    _write_private(
        paths.master_key, master.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption())
    )
    write_file(paths.certificate, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_FILE_MODE)
    public = master.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file(paths.master_public, public, PUBLIC_FILE_MODE)


def _load_private(path: Path) -> rsa.RSAPrivateKey:
    """The RSA key at ``path``.  OpenSSL's consistency check of the key (about 50 ms, once per
    publish) is skipped: every signature made with it is verified against its public part instead
    (:func:`_checked`), which finds a damaged key as surely and costs a fraction of a millisecond."""
    try:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError) as e:
        raise RepositoryError(
            f"{path}: cannot load the private key ({e}); restore it from your backup"
        ) from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise RepositoryError(f"{path}: not an RSA key")
    return key


def load_certificate_der(path: Path) -> bytes:
    refuse_if_writable(path, "the repository certificate", RepositoryError)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise RepositoryError(f"{path}: cannot load the certificate ({e})") from e
    return cert.public_bytes(serialization.Encoding.DER)


def _damaged(path: Path) -> RepositoryError:
    return RepositoryError(
        f"{path}: the key makes signatures its own public key does not accept: it is damaged; "
        "restore it from your backup"
    )


def _checked(key: rsa.RSAPrivateKey, path: Path, signature: bytes, message: bytes) -> bytes:
    """``signature``, once it verifies with the key's public part (a damaged key signs wrongly)."""
    try:
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise _damaged(path) from None
    return signature


def sign_manifest_hash(key_path: Path, hash_hex: str) -> bytes:
    """RSA PKCS#1 v1.5 with SHA-1 over the ASCII hex string (EVP_SignInit(EVP_sha1()))."""
    key = _load_private(key_path)
    message = hash_hex.encode()
    return _checked(key, key_path, key.sign(message, padding.PKCS1v15(), hashes.SHA1()), message)


def sign_raw_pkcs1(key_path: Path, message: bytes) -> bytes:
    """``RSA_private_encrypt`` with PKCS#1 type-1 padding: EM = 00 01 FF..FF 00 || message."""
    key = _load_private(key_path)
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    k = (n.bit_length() + 7) // 8
    if len(message) > k - 11:
        raise RepositoryError("message too long for the master key")
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(message)) + b"\x00" + message
    sig = pow(int.from_bytes(em, "big"), numbers.d, n)
    if pow(sig, numbers.public_numbers.e, n) != int.from_bytes(em, "big"):  # see _load_private
        raise _damaged(key_path)
    return sig.to_bytes(k, "big")
