"""The staging area, like EESSI's staging repository: new → approved → ingested | rejected.

``<state>/staging/<state>/<tarball>`` with its companions (``.gate.json``, ``.gate.json.sig``,
``.meta.txt``); every move is appended to ``<state>/staging/moves.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import GateRefused
from ..trust import append_line, copy_file, ensure_dir, refuse_if_writable
from .decide import PastDecision
from .record import RECORD_SUFFIX, parse_created, sha256_file

STATES = ("new", "approved", "ingested", "rejected")
COMPANIONS = (RECORD_SUFFIX, RECORD_SUFFIX + ".sig", ".meta.txt", ".sig", ".meta.txt.sig")
_ORDER = {"compat": 0, "init": 1, "scripts": 2, "software": 3}
_STAMP = re.compile(r"-(\d{9,})\.tar(\.gz|\.zst)?$")


@dataclass(frozen=True, slots=True)
class Staged:
    name: str
    state: str
    path: Path

    @property
    def record(self) -> Path:
        return Path(f"{self.path}{RECORD_SUFFIX}")

    @property
    def signature(self) -> Path:
        return Path(f"{self.path}{RECORD_SUFFIX}.sig")

    def sort_key(self) -> tuple[int, int, str]:
        kind = self.name.split("-")[2] if self.name.count("-") >= 2 else ""
        m = _STAMP.search(self.name)
        return (_ORDER.get(kind, 9), int(m.group(1)) if m else 0, self.name)


class Staging:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "staging"

    def _dir(self, state: str) -> Path:
        return self.root / state

    def _ensure(self, state: str | None = None) -> Path:
        """Create staging (and ``state``) with fixed modes; refuse it if others could write it."""
        d = ensure_dir(self.root if state is None else self._dir(state))
        refuse_if_writable(self.root, "the staging area", GateRefused)
        if state is not None:
            refuse_if_writable(d, "the staging area", GateRefused)
        return d

    # ----- per-tarball history: what was staged and decided, so an old record cannot come back

    def _history_file(self, name: str) -> Path:
        return self.root / "history" / f"{Path(name).name}.jsonl"

    def history(self, name: str) -> tuple[PastDecision, ...]:
        path = self._history_file(name)
        if not path.exists():
            return ()
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                e = json.loads(line)
                out.append(PastDecision(str(e["outcome"]), parse_created(e["created"], f"{path}:{n}"),
                                        str(e["record_sha256"]), str(e["time"])))  # fmt: skip
            except (ValueError, KeyError, TypeError, GateRefused) as err:
                raise GateRefused(f"{path}:{n}: unreadable history entry ({err}); it is append-only: "
                                  "restore it from a backup") from err  # fmt: skip
        return tuple(out)

    def remember(self, name: str, outcome: str, created: str, record_sha256: str) -> None:
        """Append one history entry for tarball ``name`` (``created`` is the record's own time)."""
        ensure_dir(self.root / "history")
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "outcome": outcome,
                 "created": created, "record_sha256": record_sha256}  # fmt: skip
        append_line(self._history_file(name), json.dumps(entry, sort_keys=True) + "\n")

    def stage(self, tarball: Path, record: Path, signature: Path) -> Staged:
        """Copy a tarball and its signed gate record into ``new``.

        Staging the same tarball again (a new test run of unchanged bytes) is how a rebuild that was
        reused comes back: when it is already ingested nothing changes; when it is new, approved or
        rejected, the fresh record and signature replace the old ones and it is ``new`` again (an
        approval was given for the old record).  A different tarball under a staged name is refused.
        """
        for f in (tarball, record, signature):
            if not f.exists():
                raise GateRefused(f"cannot stage {tarball.name}: {f} does not exist")
        earlier = self.find(tarball.name)
        if earlier is not None:
            if sha256_file(earlier.path) != sha256_file(tarball):
                raise GateRefused(
                    f"{tarball.name} is already staged ({earlier.state}) with other contents; a rebuilt "
                    "tarball needs a new name (its timestamp)"
                )
            if earlier.state == "ingested":
                return earlier
            copy_file(record, earlier.record)
            copy_file(signature, earlier.signature)
            return earlier if earlier.state == "new" else self.move(earlier, "new", "tested again")
        dest = self._ensure("new")
        # The record and its signature are stored under the tarball's name whatever theirs was
        # (``gate stage --record FILE``): publish finds them by the tarball's name.
        copies = [(tarball, tarball.name), (record, tarball.name + RECORD_SUFFIX),
                  (signature, tarball.name + RECORD_SUFFIX + ".sig")]  # fmt: skip
        meta = Path(f"{tarball}.meta.txt")
        if meta.exists():
            copies.append((meta, meta.name))
        for src, name in copies[1:]:  # companions first: a tarball never appears without its record
            copy_file(src, dest / name)  # 0644: nobody else may change what is judged
        part = dest / f".{tarball.name}.part"
        copy_file(tarball, part)
        os.replace(part, dest / tarball.name)
        self._log(tarball.name, None, "new", "staged")
        return Staged(tarball.name, "new", dest / tarball.name)

    def list(self, states: tuple[str, ...] = STATES) -> list[Staged]:
        out = []
        for state in states:
            d = self._dir(state)
            if d.is_dir():
                out += [
                    Staged(p.name, state, p) for p in d.iterdir() if re.search(r"\.tar(\.gz|\.zst)?$", p.name)
                ]
        return sorted(out, key=Staged.sort_key)

    def find(self, name: str) -> Staged | None:
        return next((s for s in self.list() if s.name == Path(name).name), None)

    def move(self, item: Staged, state: str, reason: str) -> Staged:
        if state not in STATES:
            raise GateRefused(f"unknown staging state {state!r}")
        dest = self._ensure(state)
        for suffix in ("", *COMPANIONS):
            src = Path(f"{item.path}{suffix}")
            if src.exists():
                os.replace(src, dest / src.name)
        self._log(item.name, item.state, state, reason)
        return Staged(item.name, state, dest / item.name)

    def approve(self, name: str, who: str) -> Staged:
        item = self.find(name)
        if item is None:
            raise GateRefused(
                f"{name} is not staged; stage it first (`eessi-pipeline gate record … --stage`)"
            )
        if item.state != "new":
            raise GateRefused(f"{name} is {item.state}, only new tarballs can be approved")
        return self.move(item, "approved", f"approved by {who}")

    def _log(self, name: str, old: str | None, new: str, reason: str) -> None:
        self._ensure()
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "tarball": name, "from": old,
                 "to": new, "reason": reason}  # fmt: skip
        append_line(self.root / "moves.jsonl", json.dumps(entry, sort_keys=True) + "\n")
