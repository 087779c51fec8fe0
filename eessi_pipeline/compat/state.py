"""Build once, reuse while the inputs are unchanged: the inputs digest, the build record, the lock.

The **inputs digest** covers everything that shapes a layer: backend, stack version,
family, prefix, the package-set file, the source of the modules that build the layer,
and the host's release (the debian backend takes that release's packages).  The
**record** (``<state>/compat/records/<version>-linux-<family>.json``) is written last,
after the new tree has replaced the old one, so a record always describes a complete
layer.  One builder at a time per layer: :func:`ensure_layer` holds an ``flock`` on
``<record>.lock`` (it dies with its process, so it is never stale); whoever waits on it
finds the record fresh and reuses the layer.  That is how the pytest fixture builds a
layer once per run while several xdist workers ask for it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompatError
from .backend import Backend, BuildRequest
from .layout import LayerSpec

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
DEFAULT_LOCK_TIMEOUT = 1800.0


def host_release(os_release: Path = Path("/etc/os-release")) -> str:
    """``ID VERSION_ID`` of the host (e.g. ``debian 12``); the kernel's name when there is no os-release."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in os_release.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip('"')
    if "ID" in fields:
        return f"{fields['ID']} {fields.get('VERSION_ID', '')}".strip()
    return platform.system().lower()


def inputs(backend: Backend, request: BuildRequest, release: str) -> dict[str, Any]:
    """The inputs that decide what a build produces (pure apart from reading the files named)."""
    spec, pset = request.spec, request.packages
    code = hashlib.sha256()
    for path in sorted(backend.code_files()):
        code.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "backend": backend.name,
        "version": spec.version,
        "family": spec.family,
        "prefix": spec.prefix,
        "package_set": str(pset.path),
        "package_set_sha256": pset.sha256,
        "code_sha256": code.hexdigest(),
        "host_release": release,
    }


def digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """What was built, from which inputs, how long each step took."""

    inputs_digest: str
    inputs: Mapping[str, Any]
    staging: str
    prefix: str
    packages: Mapping[str, str]
    facts: Mapping[str, Any]
    timings: Mapping[str, float]
    built_at: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "inputs_digest": self.inputs_digest,
            "inputs": dict(self.inputs),
            "staging": self.staging,
            "prefix": self.prefix,
            "packages": dict(self.packages),
            "facts": dict(self.facts),
            "timings": dict(self.timings),
            "built_at": self.built_at,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRecord:
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"record format {data.get('format')!r}, expected {RECORD_FORMAT}")
        return cls(
            inputs_digest=str(data["inputs_digest"]),
            inputs=dict(data["inputs"]),
            staging=str(data["staging"]),
            prefix=str(data["prefix"]),
            packages=dict(data["packages"]),
            facts=dict(data["facts"]),
            timings={k: float(v) for k, v in data["timings"].items()},
            built_at=str(data["built_at"]),
            seconds=float(data["seconds"]),
        )


def read_record(spec: LayerSpec) -> BuildRecord | None:
    """The layer's record, or None when it is missing or unreadable (then the layer is rebuilt)."""
    try:
        return BuildRecord.from_json(json.loads(spec.record_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        if spec.record_path.exists():
            log.warning("ignoring the unreadable build record %s (%s)", spec.record_path, e)
        return None


def write_record(spec: LayerSpec, record: BuildRecord) -> None:
    spec.record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(spec.record_path)


def reusable(record: BuildRecord | None, want: str, spec: LayerSpec) -> str | None:
    """Why the staged layer cannot be reused (None: it can)."""
    if record is None:
        return "no build record"
    if record.inputs_digest != want:
        return "its inputs changed"
    if not (spec.staging / "startprefix").is_file():
        return f"the staged tree {spec.staging} is missing or incomplete"
    return None


@contextlib.contextmanager
def layer_lock(spec: LayerSpec, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the layer's build lock; wait up to ``timeout`` seconds for another builder."""
    spec.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.lock_path.open("a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise CompatError(
                        f"{spec.lock_path} is held by {holder} for more than {timeout:.0f} s; wait for that "
                        "build to finish, or stop it"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class LayerResult:
    spec: LayerSpec
    record: BuildRecord
    reused: bool
    reason: str  # why it was built (or "inputs unchanged")


def _replace_tree(work: Path, staging: Path) -> None:
    """Put the finished ``work`` tree at ``staging``; the old tree (if any) is removed afterwards."""
    staging.parent.mkdir(parents=True, exist_ok=True)
    old = staging.with_name(staging.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if staging.exists():
        staging.rename(old)
    work.rename(staging)
    if old.exists():
        shutil.rmtree(old)


def ensure_layer(
    backend: Backend,
    request: BuildRequest,
    *,
    force: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    release: str | None = None,
) -> LayerResult:
    """Reuse the staged layer when its inputs are unchanged, else build it (under the layer's lock)."""
    spec = request.spec
    data = inputs(backend, request, release or host_release())
    want = digest(data)
    with layer_lock(spec, lock_timeout):
        record = read_record(spec)
        why = "--force" if force else reusable(record, want, spec)
        if why is None and record is not None:
            log.info("reusing the layer at %s: inputs unchanged", spec.staging)
            return LayerResult(spec, record, True, "inputs unchanged")
        backend.preflight(request)
        log.info("building the %s layer %s (%s)", backend.name, spec.staging, why)
        work = spec.staging.with_name(spec.staging.name + ".new")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        start = time.monotonic()
        try:
            outcome = backend.build(request, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _replace_tree(work, spec.staging)
        record = BuildRecord(
            inputs_digest=want,
            inputs=data,
            staging=str(spec.staging),
            prefix=spec.prefix,
            packages=dict(outcome.packages),
            facts=dict(outcome.facts),
            timings=dict(outcome.timings),
            built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            seconds=round(time.monotonic() - start, 1),
        )
        write_record(spec, record)
        return LayerResult(spec, record, False, why or "")
