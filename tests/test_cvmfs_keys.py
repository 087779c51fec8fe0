"""Signing keys: loaded without OpenSSL's slow consistency check, so every signature is verified
against the key's public part before it is used; a damaged key is refused, never used to sign."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from eessi_pipeline.cvmfs.keys import KeyPaths, create_keys, sign_manifest_hash, sign_raw_pkcs1
from eessi_pipeline.errors import RepositoryError


def _damage(path: Path) -> None:
    """Rewrite the key at ``path`` with its private exponents changed (the modulus and primes kept): it
    still parses, but what it signs no longer verifies (OpenSSL's fallback from a wrong CRT result
    uses ``d``, which is wrong too)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d - 2, n.dmp1 - 2, n.dmq1 - 2, n.iqmp, n.public_numbers)
    damaged = bad.private_key(unsafe_skip_rsa_key_validation=True)
    pem = damaged.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    paths = KeyPaths(tmp_path / "keys", "software.eessi.local")
    create_keys(paths)
    return paths


def test_manifest_signature_verifies_with_the_certificate_key(keys: KeyPaths) -> None:
    digest = hashlib.sha1(b"manifest body").hexdigest()
    signature = sign_manifest_hash(keys.key, digest)
    key = serialization.load_pem_private_key(keys.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    key.public_key().verify(signature, digest.encode(), padding.PKCS1v15(), hashes.SHA1())


def test_damaged_repository_key_is_refused_before_it_signs(keys: KeyPaths) -> None:
    _damage(keys.key)
    with pytest.raises(RepositoryError, match=r"software\.eessi\.local\.key: .*damaged.*backup"):
        sign_manifest_hash(keys.key, hashlib.sha1(b"manifest body").hexdigest())


def test_raw_whitelist_signature_round_trips_and_damaged_master_key_is_refused(keys: KeyPaths) -> None:
    message = hashlib.sha1(b"whitelist").hexdigest().encode()
    signature = sign_raw_pkcs1(keys.master_key, message)
    key = serialization.load_pem_private_key(keys.master_key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pub = key.public_key().public_numbers()
    em = pow(int.from_bytes(signature, "big"), pub.e, pub.n).to_bytes(len(signature), "big")
    assert em.endswith(b"\x00" + message) and em.startswith(b"\x00\x01\xff")
    _damage(keys.master_key)
    with pytest.raises(RepositoryError, match="damaged"):
        sign_raw_pkcs1(keys.master_key, message)
