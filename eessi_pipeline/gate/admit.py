"""Admission to staging: only a well-formed, signed record of exactly this tarball, newer than
every decision already made on it, enters ``staging/new`` (``gate stage``, ``gate record --stage``).

Publish judges again (the policy, the age, approval); admission refuses early what could never
pass, so a poisoned record never reaches the queue and an old green record cannot be replayed
over a newer red one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GateRefused
from . import signing
from .decide import binding_problems, replay_problem
from .policy import Policy
from .record import load_record, sha256_file
from .staging import Staged, Staging


def admit(tarball: Path, record: Path, signature: Path, *, state_dir: Path, policy: Policy) -> Staged:
    """Validate ``record`` (schema, signature, binding to ``tarball``, history) and stage all three."""
    for f, what in ((tarball, "tarball"), (record, "gate record"), (signature, "signature")):
        if not f.is_file():
            raise GateRefused(
                f"cannot stage {tarball.name}: the {what} {f} does not exist (or is not a file)"
            )
    parsed = load_record(record)  # schema: refuses [] or a malformed or naive 'created'
    allowed = policy.allowed_signers_path(state_dir)
    check = signing.verify(record, signature, allowed, policy.signature_namespace)
    if not check.ok:
        raise GateRefused(f"cannot stage {tarball.name}: {check.reason}")
    problems = binding_problems(parsed, tarball.name, sha256_file(tarball), tarball.stat().st_size)
    if problems:
        raise GateRefused(f"cannot stage {tarball.name}: " + "; ".join(problems))
    staging = Staging(state_dir)
    digest = sha256_file(record)
    replay = replay_problem(parsed.created_at, digest, staging.history(tarball.name))
    if replay is not None:
        raise GateRefused(f"cannot stage {tarball.name}: {replay}")
    item = staging.stage(tarball, record, signature)
    if item.state != "ingested":
        staging.remember(tarball.name, "staged", parsed.created, digest)
    return item
