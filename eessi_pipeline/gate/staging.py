"""The staging area, like EESSI's staging repository: new → approved → ingested | rejected.

``<state>/staging/<state>/<tarball>`` with its companions (``.gate.json``, ``.gate.json.sig``,
``.meta.txt``); every move is appended to ``<state>/staging/moves.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import GateRefused
from .record import RECORD_SUFFIX, sha256_file

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
            shutil.copy2(record, earlier.record)
            shutil.copy2(signature, earlier.signature)
            return earlier if earlier.state == "new" else self.move(earlier, "new", "tested again")
        dest = self._dir("new")
        dest.mkdir(parents=True, exist_ok=True)
        for src in (tarball, record, signature, *[Path(f"{tarball}{s}") for s in (".meta.txt",)]):
            if src.exists():
                shutil.copy2(src, dest / src.name)
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
        dest = self._dir(state)
        dest.mkdir(parents=True, exist_ok=True)
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
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "tarball": name, "from": old,
                 "to": new, "reason": reason}  # fmt: skip
        with (self.root / "moves.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
