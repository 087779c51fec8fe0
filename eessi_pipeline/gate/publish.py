"""Publish what the gate accepts: verify signature, hash and policy; ingest in a safe order; audit.

Compat tarballs go first, then init, scripts and software, oldest first. A refused tarball
moves to ``rejected`` with its reasons and leaves the repository untouched; an accepted one
is ingested and moves to ``ingested``. Every outcome is appended to ``<state>/audit.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..compat.elf import ELF_MAGIC, parse_elf
from ..cvmfs.cvmfs_server import CvmfsServerBackend
from ..cvmfs.reader import open_repository
from ..cvmfs.repository import Repository
from ..cvmfs.tarcheck import check_tarball
from ..errors import PipelineError
from ..locks import try_lock
from ..trust import append_line
from . import signing
from .decide import Decision, TarballFacts, decide, replay_problem
from .policy import Policy
from .record import GateRecord, load_record, sha256_file
from .staging import Staged, Staging

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    tarball: str
    accepted: bool
    reasons: tuple[str, ...]
    revision_before: int | None
    revision_after: int | None
    dry_run: bool = False
    skipped: bool = False  # another publisher has it: not a failure, not audited here

    def line(self) -> str:
        if self.skipped:
            return f"{self.tarball}: skipped: {'; '.join(self.reasons)}"
        if self.dry_run:
            verdict = "would publish" if self.accepted else "would refuse"
        else:
            at = f" as revision {self.revision_after}" if self.revision_after is not None else ""
            verdict = f"published{at}" if self.accepted else "refused"
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.tarball}: {verdict}{why}"


# What EESSI keeps directly in a software subdir: a path component from this set ends the subdir.
SUBDIR_CONTENT = frozenset({"modules", "software", ".lmod", "reprod"})


def software_roots(names: Iterable[str], version: str) -> tuple[str, ...]:
    """The distinct ``<version>/software/<os>/<subdir>`` that member names install into (pure).

    A path below ``<version>/software/`` that is neither inside a subdir's content nor a parent
    directory of one counts as a root of its own, so the gate reports it as out of place.
    """
    roots: set[str] = set()
    loose: set[str] = set()
    for name in names:
        parts = name.strip("/").removeprefix("./").split("/")
        if parts[:2] != [version, "software"] or len(parts) < 3:
            continue
        cut = next((i for i in range(4, len(parts)) if parts[i] in SUBDIR_CONTENT), None)
        if cut is None:
            loose.add("/".join(parts))
        else:
            roots.add("/".join(parts[:cut]))
    strays = {p for p in loose if not any(r == p or r.startswith(p + "/") for r in roots)}
    return tuple(sorted(roots | strays))


def repository_needs(
    interpreters: Iterable[str], members: Iterable[str], repository: str, base_dir: str = "versions"
) -> tuple[str, ...]:
    """The paths inside the repository (``/versions/…``) that ELF interpreters point at and the
    tarball itself (ingested at ``base_dir``) does not bring: what must already be published for its
    programs to start (pure)."""
    prefix = f"/cvmfs/{repository}/"
    inside = {f"{base_dir}/{m.strip('/').removeprefix('./')}" for m in members}
    return tuple(sorted({"/" + i.removeprefix(prefix) for i in interpreters
                         if i.startswith(prefix) and i.removeprefix(prefix) not in inside}))  # fmt: skip


def _scan_software(path: Path) -> tuple[list[str], set[str]]:
    """Member names, and the ELF interpreters (``PT_INTERP``) of its regular files."""
    names: list[str] = []
    interpreters: set[str] = set()
    with tarfile.open(path) as tar:
        for member in tar:
            names.append(member.name)
            if not member.isfile() or member.size < 64:
                continue
            fh = tar.extractfile(member)
            if fh is None or fh.read(4) != ELF_MAGIC:
                continue
            info = parse_elf(ELF_MAGIC + fh.read())
            if info is not None and info.interpreter:
                interpreters.add(info.interpreter)
    return names, interpreters


def facts_of(path: Path, repository: str) -> TarballFacts:
    report = check_tarball(path, repository=repository)
    name = report.name
    roots = report.content_roots
    needs: tuple[str, ...] = ()
    if name.content_type == "software":
        members, interpreters = _scan_software(path)
        other = tuple(r for r in roots if not r.startswith(f"{name.version}/software/"))
        roots = tuple(sorted(other + software_roots(members, name.version)))
        needs = repository_needs(interpreters, members, repository)
    named = "/".join([name.arch, *name.rest]) if name.arch and name.content_type == "software" else ""
    return TarballFacts(path.name, sha256_file(path), path.stat().st_size, name.content_type,
                        name.version, roots, named, needs)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Judgement:
    decision: Decision
    record_digest: str  # "" when the record could not be read
    facts: TarballFacts | None  # None when the tarball could not be read
    record: GateRecord | None = None


def _why(e: Exception) -> str:
    """One line for a refusal; an error the readers did not expect names its type."""
    text = str(e).splitlines()[0] if str(e) else ""
    return text if isinstance(e, PipelineError) and text else f"unreadable ({type(e).__name__}: {text})"


def judge(
    item: Staged, repo: Repository, policy: Policy, now: dt.datetime, staging: Staging | None = None
) -> Judgement:
    """The gate's decision on one staged item; never raises for anything wrong with the item."""
    try:
        record = load_record(item.record)
        digest = sha256_file(item.record)
    except Exception as e:  # whatever a hostile item raises refuses that item only
        return Judgement(Decision(False, (_why(e),)), "", None)
    try:
        facts = facts_of(item.path, repo.paths.name)
    except Exception as e:  # as above: a hostile tarball never stops the queue
        return Judgement(Decision(False, (_why(e),)), digest, None, record)
    if staging is not None:
        try:
            replay = replay_problem(record.created_at, digest, staging.history(item.name))
        except PipelineError as e:
            replay = str(e)
        if replay is not None:
            return Judgement(Decision(False, (replay,)), digest, facts, record)
    allowed = policy.allowed_signers_path(repo.paths.state_dir)
    sig = signing.verify(item.record, item.signature, allowed, policy.signature_namespace)
    return Judgement(
        decide(facts, record, sig, policy, now, approved=item.state == "approved"), digest, facts, record
    )


class IngestTarget(Protocol):
    """Where accepted tarballs go: the embedded Stratum 0 or a real one through ``cvmfs_server``."""

    def revision(self) -> int | None: ...

    def has(self, path: str) -> bool | None:
        """Whether the published repository has ``path`` (``/versions/…``); None: cannot tell."""
        ...

    def ingest(self, tarball: Path, sha256: str | None = None) -> int | None:
        """Ingest at ``versions`` (refusing bytes whose SHA-256 is not ``sha256``, the gate record's, where
        the target can tell); return the revision after (None when it cannot be read)."""
        ...


@dataclass(frozen=True, slots=True)
class EmbeddedTarget:
    repo: Repository

    def revision(self) -> int | None:
        return self.repo.manifest().revision if self.repo.exists else None

    def has(self, path: str) -> bool | None:
        if not self.repo.exists:
            return False
        with open_repository(self.repo.paths.web_root / self.repo.paths.name) as reader:
            return reader.lookup(path) is not None

    def ingest(self, tarball: Path, sha256: str | None = None) -> int | None:
        # one pass: the bytes checked (every tarcheck rule) and hashed are the bytes published
        return self.repo.ingest(tarball, "versions", check=True, expected_sha256=sha256).revision


@dataclass(frozen=True, slots=True)
class CvmfsServerTarget:
    """A real Stratum 0: ``cvmfs_server ingest`` here or over SSH; the revision is read from the
    published manifest at ``manifest_source`` (the Stratum 0's URL or ``/srv/cvmfs/<repo>``)."""

    backend: CvmfsServerBackend
    manifest_source: str | None = None

    def revision(self) -> int | None:
        if not self.manifest_source:
            return None
        try:
            with open_repository(self.manifest_source) as reader:
                return reader.manifest.revision
        except PipelineError as e:
            log.warning("cannot read the revision of %s: %s", self.manifest_source, e)
            return None

    def has(self, path: str) -> bool | None:
        if not self.manifest_source:
            return None
        try:
            with open_repository(self.manifest_source) as reader:
                return reader.lookup(path) is not None
        except PipelineError as e:
            log.warning("cannot look up %s in %s: %s", path, self.manifest_source, e)
            return None

    def ingest(self, tarball: Path, sha256: str | None = None) -> int | None:
        self.backend.ingest(tarball, "versions")
        return self.revision()


def publish(
    state_dir: Path, repository: str, policy: Policy, names: list[str] | None = None, *,
    dry_run: bool = False, now: dt.datetime | None = None, target: IngestTarget | None = None,
) -> list[Outcome]:  # fmt: skip
    now = now or dt.datetime.now(dt.UTC)
    staging = Staging(state_dir)
    repo = Repository(state_dir, repository)
    into: IngestTarget = target if target is not None else EmbeddedTarget(repo)
    eligible = ("new", "approved")
    items = [s for s in staging.list(eligible) if not names or s.name in {Path(n).name for n in names}]
    missing = [n for n in names or [] if Path(n).name not in {s.name for s in items}]
    outcomes: list[Outcome] = [Outcome(Path(n).name, False, ("not staged (or already published/rejected)",),
                                       None, None, dry_run) for n in missing]  # fmt: skip
    claims = staging.root / "claims"
    for item in items:
        # One publisher per tarball: the claim is an flock held from judgement to the final move.
        with try_lock(claims / f"{item.name}.lock") as holder:
            if holder is not None:
                outcomes.append(Outcome(item.name, False, (f"already being published by {holder}",), None,
                                        None, dry_run, skipped=True))  # fmt: skip
                continue
            current = staging.find(item.name)
            if current is None or current.state not in eligible:
                where = current.state if current else "gone"
                why = f"already handled by another publisher ({where})"
                outcomes.append(Outcome(item.name, False, (why,), None, None, dry_run, skipped=True))
                continue
            outcomes.append(_publish_one(current, staging, repo, into, policy, now, dry_run, state_dir))
    return outcomes


def _publish_one(
    item: Staged, staging: Staging, repo: Repository, into: IngestTarget, policy: Policy, now: dt.datetime,
    dry_run: bool, state_dir: Path,
) -> Outcome:  # fmt: skip
    judgement = judge(item, repo, policy, now, staging)
    decision, digest = judgement.decision, judgement.record_digest
    before = into.revision()
    if dry_run:
        return Outcome(item.name, decision.accept, decision.reasons, before, before, True)
    if not decision.accept:
        awaiting = policy.require_approval and item.state == "new" and len(decision.reasons) == 1 and \
            "requires approval" in decision.reasons[0]  # fmt: skip
        if not awaiting:
            staging.move(item, "rejected", "; ".join(decision.reasons))
            _remember(staging, item.name, "refused", judgement)
        outcome = Outcome(item.name, False, decision.reasons, before, before)
    elif judgement.facts and (missing := [p for p in judgement.facts.needs if into.has(p) is False]):
        why = (f"its programs need {', '.join(missing)}, which the repository does not have yet: publish "
               "that (the compatibility layer) first")  # fmt: skip
        outcome = Outcome(item.name, False, (why,), before, before)  # stays staged: nothing is wrong with it
    else:
        try:
            after = into.ingest(item.path, judgement.record.sha256 if judgement.record else None)
        except PipelineError as e:
            outcome = Outcome(item.name, False, (f"ingest failed: {str(e).splitlines()[0]}",), before,
                              into.revision())  # fmt: skip
        else:
            staging.move(item, "ingested", f"revision {after}")
            _remember(staging, item.name, "ingested", judgement)
            outcome = Outcome(item.name, True, (), before, after)
    _audit(state_dir, outcome, digest, now)
    return outcome


def _remember(staging: Staging, name: str, outcome: str, judgement: Judgement) -> None:
    """A decision on a readable record enters the tarball's history (an unreadable one has no time)."""
    if judgement.record is not None:
        staging.remember(name, outcome, judgement.record.created, judgement.record_digest)


def _audit(state_dir: Path, outcome: Outcome, record_digest: str, now: dt.datetime) -> None:
    entry = {
        "time": now.isoformat(timespec="seconds"), "tarball": outcome.tarball,
        "gate_record_sha256": record_digest,
        "outcome": "ingested" if outcome.accepted else "refused", "reasons": list(outcome.reasons),
        "revision_before": outcome.revision_before, "revision_after": outcome.revision_after,
    }  # fmt: skip
    append_line(Path(state_dir) / "audit.jsonl", json.dumps(entry, sort_keys=True) + "\n")
