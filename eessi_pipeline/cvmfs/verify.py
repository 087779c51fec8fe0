"""Signature checks of the manifest (.cvmfspublished) and the whitelist (.cvmfswhitelist).

* ``.cvmfspublished`` is signed with the repository key: a standard RSA PKCS#1 v1.5
  signature with a SHA-1 digest over the ASCII hex hash line; the public key is the one
  in the repository certificate (CAS object X).
* ``.cvmfswhitelist`` is signed with the master key by ``openssl pkeyutl -sign``: raw
  PKCS#1 v1.5 type-1 padding around the ASCII hex hash line, no DigestInfo, no digest.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import RepositoryError
from .common import fingerprint
from .manifest import SignedText


def load_certificate(pem: bytes, what: str = "repository certificate") -> x509.Certificate:
    """Parse a PEM X.509 certificate; RepositoryError when it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise RepositoryError(f"{what}: not a PEM X.509 certificate ({e})") from e


def certificate_fingerprint(pem: bytes) -> str:
    """The whitelist form of a certificate's fingerprint: SHA-1 of the DER, ``AB:CD:…``."""
    cert = load_certificate(pem)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _rsa_key(key: object, what: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise RepositoryError(f"{what}: the key is {type(key).__name__}, CVMFS signatures need an RSA key")
    return key


def verify_manifest_signature(signed: SignedText, certificate_pem: bytes) -> None:
    """Check the ``.cvmfspublished`` signature against the repository certificate's public key."""
    cert = load_certificate(certificate_pem)
    key = _rsa_key(cert.public_key(), "repository certificate")
    if not signed.signature:
        raise RepositoryError(".cvmfspublished: no signature bytes after the hash line; it is not signed")
    try:
        key.verify(signed.signature, signed.hash_hex.encode("ascii"), padding.PKCS1v15(), hashes.SHA1())
    except (InvalidSignature, ValueError) as e:
        fpr = fingerprint(cert.public_bytes(serialization.Encoding.DER))
        raise RepositoryError(
            ".cvmfspublished: the signature does not verify with the repository certificate "
            f"(fingerprint {fpr}); the manifest was altered or signed with another key"
        ) from e


def load_master_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """Parse the master public key (``/etc/cvmfs/keys/<name>.pub``, PEM)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise RepositoryError(f"master public key: not a PEM public key ({e})") from e
    return _rsa_key(key, "master public key")


def verify_whitelist_signature(signed: SignedText, master_public_key_pem: bytes) -> None:
    """Check the ``.cvmfswhitelist`` raw PKCS#1 type-1 signature with the master public key."""
    key = load_master_public_key(master_public_key_pem)
    if not signed.signature:
        raise RepositoryError(".cvmfswhitelist: no signature bytes after the hash line; it is not signed")
    try:
        recovered = key.recover_data_from_signature(signed.signature, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError) as e:
        raise RepositoryError(
            ".cvmfswhitelist: the signature does not verify with the master public key; the whitelist "
            "was altered or the key is not this repository's"
        ) from e
    if recovered != signed.hash_hex.encode("ascii"):
        raise RepositoryError(
            ".cvmfswhitelist: the signature does not verify with the master public key: it signs "
            f"{recovered[:64].decode('ascii', 'replace')!r}, not the hash line {signed.hash_hex!r}; "
            "the whitelist was altered after signing"
        )
