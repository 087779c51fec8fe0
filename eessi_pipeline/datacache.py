"""Validated data files, remembered by content: a file checked once is not parsed and checked again.

Parsing YAML and loading jsonschema cost ~70 ms, more than everything else ``eessi-pipeline
detect`` does.  After a file passed its schema, its validated form (schema defaults filled in) is
kept as JSON under ``$XDG_CACHE_HOME/eessi-pipeline/validated/`` (default ``~/.cache/…``), named
by the SHA-256 of the file's bytes, the schema's bytes and the program version.  Any change to
any of them is a miss, so the cache can never answer for other bytes.  A cache entry is written
only when the file read the same before and after it was checked.  A cache that cannot be read or
written is simply not used; ``EESSI_PIPELINE_NO_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import atomic_write

NO_CACHE_ENV = "EESSI_PIPELINE_NO_CACHE"
SCHEMAS = Path(__file__).resolve().parent / "schemas"  # package data, shipped with the modules
MAX_CACHED_BYTES = 4 * 1024 * 1024  # larger files are checked every time, never cached


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "/root")) / ".cache")
    return Path(base) / "eessi-pipeline" / "validated"


def cache_key(data: bytes, kind: str) -> str:
    """What a validated form depends on: the file, the schema and the program (pure but for the
    schema file, which ships with the package)."""
    schema = (SCHEMAS / f"{kind}.schema.json").read_bytes()
    h = hashlib.sha256()
    for part in (__version__.encode(), kind.encode(), schema, data):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _read_small(path: Path) -> bytes | None:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CACHED_BYTES + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_CACHED_BYTES else None


def load_validated(
    path: Path, kind: str, check: Callable[[Path], dict[str, Any]], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """``check(path)`` (parse + validate, raising on problems), or its remembered result for the
    same bytes.  Returns the validated data and the bytes it stands for (None if not read)."""
    env = os.environ if environ is None else environ
    before = _read_small(path)
    if before is None or env.get(NO_CACHE_ENV):
        return check(path), before
    entry = cache_dir(env) / f"{kind}-{cache_key(before, kind)}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(cached, dict):
            return cached, before
    except (OSError, ValueError):
        pass  # a miss, or an entry that is not ours: check the file
    data = check(path)
    if _read_small(path) == before:
        _store(entry, data)
    return data, before


def _store(entry: Path, data: dict[str, Any]) -> None:
    try:
        text = json.dumps(data, sort_keys=True)
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(entry, text, 0o600, durable=False)  # a lost entry is only a miss
    except (OSError, TypeError, ValueError):
        pass  # not JSON-able or not writable: the next load checks the file again
