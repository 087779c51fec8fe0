"""The ``.cvmfswhitelist``: creation time, expiry, repository name, certificate fingerprints."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ..errors import RepositoryError
from .manifest import SignedText, split_signed

_FPR = re.compile(r"^([0-9A-F]{2}(?::[0-9A-F]{2}){19})(?:[ \t#].*)?$")
STAMP = "%Y%m%d%H%M%S"


@dataclass(frozen=True, slots=True)
class Whitelist:
    created: dt.datetime
    expires: dt.datetime
    name: str
    fingerprints: tuple[str, ...]

    def body(self) -> bytes:
        lines = [self.created.strftime(STAMP), "E" + self.expires.strftime(STAMP), "N" + self.name]
        lines += list(self.fingerprints)
        return "".join(line + "\n" for line in lines).encode()

    def expired(self, now: dt.datetime) -> bool:
        """cvmfs compares year, month, day and hour only."""
        trunc = now.replace(minute=0, second=0, microsecond=0)
        return self.expires.replace(minute=0, second=0, microsecond=0) < trunc


def parse_whitelist(raw: bytes) -> tuple[Whitelist, SignedText]:
    signed = split_signed(raw, ".cvmfswhitelist")
    lines = signed.body.decode("utf-8", "replace").splitlines()
    if len(lines) < 3:
        raise RepositoryError(".cvmfswhitelist: fewer than three lines (created, E<expiry>, N<name>)")
    try:
        created = dt.datetime.strptime(lines[0].strip(), STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        created = dt.datetime.fromtimestamp(0, dt.UTC)  # cvmfs ignores this line's content
    if not lines[1].startswith("E"):
        raise RepositoryError(".cvmfswhitelist: second line must be E<YYYYMMDDhhmmss> (the expiry)")
    try:
        expires = dt.datetime.strptime(lines[1][1:].strip(), STAMP).replace(tzinfo=dt.UTC)
    except ValueError as e:
        raise RepositoryError(f".cvmfswhitelist: bad expiry {lines[1]!r}") from e
    if not lines[2].startswith("N"):
        raise RepositoryError(".cvmfswhitelist: third line must be N<repository name>")
    fprs = tuple(m.group(1) for line in lines[3:] if (m := _FPR.match(line.strip())))
    return Whitelist(created, expires, lines[2][1:], fprs), signed
