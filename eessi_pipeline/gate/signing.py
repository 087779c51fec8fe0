"""SSH signatures of gate records, as EESSI signs tarballs: ``ssh-keygen -Y sign|verify``.

``.sig`` files made here verify with EESSI's ``sign_verify_file_ssh.sh`` and the other way
round: namespace ``eessi-pipeline``, an ``allowed_signers`` file of
``<identity> namespaces="eessi-pipeline" <key>`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import GateRefused, TrustError
from ..trust import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, ensure_dir, refuse_if_writable, write_file

NAMESPACE = "eessi-pipeline"


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    ok: bool
    identity: str
    reason: str = ""


def sign_argv(key: Path, file: Path, namespace: str = NAMESPACE) -> list[str]:
    return ["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, str(file)]


def find_principals_argv(allowed: Path, sig: Path) -> list[str]:
    return ["ssh-keygen", "-Y", "find-principals", "-f", str(allowed), "-s", str(sig)]


def verify_argv(allowed: Path, identity: str, sig: Path, namespace: str = NAMESPACE) -> list[str]:
    return ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", identity, "-n", namespace, "-s", str(sig)]


def ensure_signing_key(key: Path, identity: str, allowed: Path, namespace: str = NAMESPACE) -> None:
    """Create an ed25519 build-node key if missing and list it in ``allowed`` (never overwrites a key).

    The key directory is 0755, the key 0600, its ``.pub`` and ``allowed`` 0644, whatever the umask.
    """
    if not key.exists():
        ensure_dir(key.parent)
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", identity, "-f", str(key)], timeout=30)
        key.chmod(PRIVATE_FILE_MODE)
        Path(f"{key}.pub").chmod(PUBLIC_FILE_MODE)
    pub = Path(f"{key}.pub").read_text().split()
    line = f'{identity} namespaces="{namespace}" {pub[0]} {pub[1]}\n'
    if allowed.exists():
        refuse_if_writable(allowed, "the allowed_signers file", GateRefused)
    existing = allowed.read_text() if allowed.exists() else ""
    if f"{pub[0]} {pub[1]}" not in existing:
        ensure_dir(allowed.parent)
        write_file(allowed, (existing + line).encode(), PUBLIC_FILE_MODE)


def sign(key: Path, file: Path, namespace: str = NAMESPACE) -> Path:
    sig = Path(f"{file}.sig")
    sig.unlink(missing_ok=True)
    proc.run(sign_argv(key, file, namespace), timeout=60)
    return sig


def verify(file: Path, sig: Path, allowed: Path, namespace: str = NAMESPACE) -> SignatureCheck:
    """Who signed ``file`` (from ``allowed``) and whether the signature holds; never raises for a bad one."""
    if not sig.exists():
        return SignatureCheck(
            False, "", f"{sig.name} is missing: sign the record with `eessi-pipeline gate record`"
        )
    if not allowed.exists():
        return SignatureCheck(False, "", f"allowed_signers file {allowed} does not exist")
    try:
        refuse_if_writable(allowed, "the allowed_signers file")
    except TrustError as e:
        return SignatureCheck(False, "", str(e))
    found = proc.run(find_principals_argv(allowed, sig), timeout=60, check=False)
    identity = found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else ""
    if not identity:
        return SignatureCheck(False, "", f"{sig.name}: the signer is not in {allowed}")
    with file.open("rb") as fh:
        checked = proc.run(
            verify_argv(allowed, identity, sig, namespace), timeout=60, check=False, stdin_file=fh
        )
    if checked.returncode != 0:
        detail = checked.stderr.strip() or checked.stdout.strip()
        reason = f"{sig.name}: signature of {identity} does not verify ({detail})"
        return SignatureCheck(False, identity, reason)
    return SignatureCheck(True, identity)


def require(file: Path, sig: Path, allowed: Path, namespace: str = NAMESPACE) -> str:
    check = verify(file, sig, allowed, namespace)
    if not check.ok:
        raise GateRefused(check.reason)
    return check.identity
