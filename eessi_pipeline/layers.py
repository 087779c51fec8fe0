"""The parts of ``eessi-pipeline run`` that give the repository EESSI's three layers.

* **compatibility layer**: the family's layer is built or reused (as ``eessi-pipeline compat build``,
  in ``<state>/compat``), and when the repository does not hold exactly this layer yet it is packed and
  gated by its own acceptance tests (``tests/test_compat_layer.py``: properties, tools, ``/proc`` maps,
  ``ld.so --list`` of every ELF file, and the ReFrame checks of ``checks/compat``), the signed record
  staged for ``publish``, which ingests compat tarballs before init and software.  Which layer the
  repository holds is told by ``etc/eessi-compat/identity.json`` in the layer (its inputs digest).
* **host_injections**: EESSI's variant symlink at the repository root,
  ``host_injections -> $(EESSI_HOST_INJECTIONS:-/opt/eessi)``; each client expands it (see
  :mod:`eessi_pipeline.cvmfs.variant`), so a site keeps drivers, MPI overrides and its own
  installations in a local directory that the stack finds at ``/cvmfs/<repo>/host_injections``.

Decisions (:func:`identity_json`, :func:`compat_pytest_argv`, :func:`use_spec`) are pure.
"""

from __future__ import annotations

import json
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks.smoke import SmokeTable
from .compat.backend import BuildRequest, get_backend
from .compat.layout import LayerSpec
from .compat.pack import pack_layer
from .compat.packageset import load_package_set
from .compat.state import ensure_layer
from .cvmfs.catalog import Node
from .cvmfs.reader import open_repository
from .cvmfs.repository import Repository, publisher_lock
from .errors import PipelineError
from .gate.staging import Staging
from .matrix import PROJECT_ROOT
from .proc import run_echoed
from .report import stream as report_stream

COMPAT_TESTS = "tests/test_compat_layer.py"
COMPAT_BACKEND = "debian"
IDENTITY = "etc/eessi-compat/identity.json"
IDENTITY_SUFFIX = ".identity"  # beside a gated tarball in <state>/compat/tarballs: the layer it holds
HOST_INJECTIONS = "/host_injections"
HOST_INJECTIONS_TARGET = "$(EESSI_HOST_INJECTIONS:-/opt/eessi)"
ENTRY_POINTS = ("bash", "lmod/bash")


class CompatGateFailed(PipelineError):
    """The compatibility layer's own acceptance tests did not pass."""


@dataclass(frozen=True, slots=True)
class CompatStep:
    """What the compat step did: the layer's prefix and identity, and the tarball it gated (if any)."""

    prefix: str
    identity: str
    reused: bool  # the staged layer was reused (inputs unchanged)
    tarball: Path | None  # None: the repository already holds this layer

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "identity": self.identity,
            "reused": self.reused,
            "tarball": str(self.tarball) if self.tarball else None,
        }


def identity_json(identity: str, spec: LayerSpec) -> bytes:
    """The file that tells which layer a repository holds (pure)."""
    data = {"inputs_digest": identity, "version": spec.version, "family": spec.family, "prefix": spec.prefix}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def compat_pytest_argv(python: str, tarball: Path, state_dir: Path, run_dir: Path, family: str) -> list[str]:
    """The gated pytest run of a compat tarball (pure): the tests of ``family``'s layer only (the record
    holds no other family's results; under emulation for a family not the host's), its ReFrame report."""
    return [
        python, "-m", "pytest", COMPAT_TESTS, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs",
        f"--junitxml={run_dir / 'junit.xml'}", f"--eessi-run-dir={run_dir}",
        f"--eessi-compat-state={state_dir}", f"--eessi-compat-family={family}",
        f"--eessi-gate-tarball={tarball}", "--eessi-gate-stage",
        f"--eessi-gate-reframe-report={run_dir / 'reframe-compat' / family / 'report.json'}",
    ]  # fmt: skip


def published_identity(state_dir: Path, repository: str, spec: LayerSpec) -> str | None:
    """The inputs digest of the layer the repository holds at ``spec``'s place, or None."""
    repo = Repository(state_dir, repository)
    if not repo.exists:
        return None
    with open_repository(repo.paths.web_root / repository) as reader:
        try:
            data = json.loads(reader.read_file(f"/versions/{spec.relpath}/{IDENTITY}"))
        except (PipelineError, ValueError):
            return None
    value = data.get("inputs_digest") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def gate_compat(
    state_dir: Path,
    repository: str,
    version: str,
    family: str,
    run_dir: Path,
    env: dict[str, str],
    say: Callable[[str], None],
) -> CompatStep:
    """Build or reuse the family's layer; unless the repository holds it, pack, test, record and stage it."""
    spec = LayerSpec.create(version, family, state_dir, repository=repository)
    result = ensure_layer(get_backend(COMPAT_BACKEND), BuildRequest(spec, load_package_set(family)))
    identity = result.record.inputs_digest
    how = "reused (inputs unchanged)" if result.reused else "built"
    if published_identity(state_dir, repository, spec) == identity:
        say(f"compat layer {spec.prefix}: {how}; the repository already has this layer, nothing to publish")
        return CompatStep(spec.prefix, identity, result.reused, None)
    waiting = staged_with_identity(state_dir, spec, identity)
    if waiting is not None:  # a run that stopped after the gate: that record still stands
        say(f"compat layer {spec.prefix}: {how}; {waiting.name} is already tested and staged for publish")
        return CompatStep(spec.prefix, identity, result.reused, waiting)
    marker = spec.staging / IDENTITY
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(identity_json(identity, spec))
    packed = pack_layer(spec)
    say(f"compat layer {spec.prefix}: {how}; {packed.tarball.name}: {COMPAT_TESTS} + ReFrame checks, gate")
    tests_dir = run_dir / "compat"
    tests_dir.mkdir(parents=True, exist_ok=True)
    argv = compat_pytest_argv(sys.executable, packed.tarball, state_dir, tests_dir, spec.family)
    done = run_echoed(argv, timeout=1800, echo=report_stream(), cwd=PROJECT_ROOT, env=env)
    if done.returncode != 0:
        raise CompatGateFailed(
            f"the compatibility layer's acceptance tests failed (pytest exit {done.returncode}): "
            f"see {tests_dir / 'junit.xml'}"
        )
    Path(f"{packed.tarball}{IDENTITY_SUFFIX}").write_text(identity + "\n", encoding="utf-8")
    return CompatStep(spec.prefix, identity, result.reused, packed.tarball)


def staged_with_identity(state_dir: Path, spec: LayerSpec, identity: str) -> Path | None:
    """A compat tarball of this layer that an earlier run gated and staged, still waiting for publish."""
    prefix = f"eessi-{spec.version}-compat-linux-{spec.family}-"
    for item in Staging(state_dir).list(("new", "approved")):
        if not item.name.startswith(prefix):
            continue
        mark = spec.tarball_dir / f"{item.name}{IDENTITY_SUFFIX}"
        if mark.is_file() and mark.read_text(encoding="utf-8").strip() == identity:
            return item.path
    return None


def ensure_host_injections(state_dir: Path, repository: str) -> int | None:
    """Publish ``/host_injections`` as EESSI's variant symlink when the repository lacks it.

    Returns the new revision, or None when the link was already there.
    """
    repo = Repository(state_dir, repository)
    with open_repository(repo.paths.web_root / repository) as reader:
        entry = reader.lookup(HOST_INJECTIONS)
        if entry is not None and entry.is_symlink and entry.symlink == HOST_INJECTIONS_TARGET:
            return None
    with publisher_lock(repo.paths):
        txn = repo.transaction()
        node = Node(HOST_INJECTIONS.lstrip("/"), stat.S_IFLNK | 0o777, int(time.time()),
                    symlink=HOST_INJECTIONS_TARGET)  # fmt: skip
        txn.put(HOST_INJECTIONS, node)
        return txn.commit().revision


def use_spec(
    repository: str,
    version: str,
    family: str,
    entry: str,
    modules: tuple[str, ...],
    smoke: SmokeTable,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What :mod:`eessi_pipeline.checks.procmaps` runs for one init entry point (pure): the layer's
    bash sources ``versions/<v>/init/<entry>``, lists and loads every module; then each module's smoke
    command runs in that environment.  ``env``: variables the session starts with (an emulated
    session presents another machine: ``EESSI_MACHINE_TYPE``, ``EESSI_PROC_CPUINFO``)."""
    prefix = f"/cvmfs/{repository}/versions/{version}"
    setup = [
        "set -e",
        f"source {prefix}/init/{entry}",
        'echo "MODULEPATH=$MODULEPATH"',
        'echo "host_injections -> $(readlink "$EESSI_CVMFS_REPO/host_injections")"',
        "module -t avail 2>&1",
        *(f"module load {m}" for m in modules),
        "module -t list 2>&1",
    ]
    return {
        "bash": f"{prefix}/compat/linux/{family}/bin/bash",
        "setup": "\n".join(setup) + "\n",
        "commands": [{"module": m, "command": smoke.check_for(m.split("/")[0]).command} for m in modules],
        "env": dict(env or {}),
    }
