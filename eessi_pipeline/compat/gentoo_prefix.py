"""EESSI's production backend: Gentoo Prefix bootstrapped by the Ansible playbook in ``compat/ansible``.

The pipeline writes an inventory (the build host itself, ``ansible_connection=local``)
and the playbook's variables (``vars.json``: prefix, stack version, family, profile,
mirrors, the package set's Gentoo atoms, host files, locales), then runs
``ansible-playbook`` in a mount namespace where the work tree is writable at the
layer's final prefix: Gentoo Prefix, like the Debian backend's relocation, bakes the
prefix into everything it builds.

The bootstrap compiles the whole userland from source and downloads it from Gentoo's
mirrors and git repository: it takes hours and needs those hosts.  :meth:`preflight`
checks that ``ansible-playbook`` is installed and that the mirror answers, and fails
with the next step otherwise, before anything is written.  Everything else (inventory,
variables, the argument vectors, ``ansible-playbook --syntax-check``) is testable on any
machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CompatError
from ..proc import CommandFailed, run
from .backend import BuildOutcome, BuildRequest, LayerPlan, PlanStep
from .runner import LayerView

log = logging.getLogger(__name__)

NAME = "gentoo-prefix"
PLAYBOOK = "gentoo-prefix.yml"
BOOTSTRAP_URL = "https://gitweb.gentoo.org/repo/proj/prefix.git/plain/scripts/bootstrap-prefix.sh"
BOOTSTRAP_TIMEOUT = 12 * 3600.0
SYNTAX_TIMEOUT = 120.0
PROBE_TIMEOUT = 5.0
WHERE = (
    "run it on a build host of the layer's CPU family that can reach Gentoo's mirrors and git repository "
    "(EESSI runs it in its build container on such nodes), or build with --backend debian, the default, "
    "which works here"
)

Probe = Callable[[str], str | None]
"""Given a URL, None when its host answers, else why not."""


def playbook_path() -> Path:
    return Path(str(resources.files("eessi_pipeline.compat").joinpath("ansible", PLAYBOOK)))


def tcp_probe(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Open (and close) a TCP connection to the URL's host and port; None on success, else the reason."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return f"{url!r} names no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e.strerror or e})"


def set_name(version: str, family: str) -> str:
    """The portage set's name, as EESSI names its sets: ``eessi-<version>-linux-<family>``."""
    return f"eessi-{version}-linux-{family}"


def inventory_text(python: str = sys.executable) -> str:
    """The inventory: this build host, reached without SSH."""
    return f"[build_host]\nlocalhost ansible_connection=local ansible_python_interpreter={python}\n"


def playbook_vars(request: BuildRequest) -> dict[str, Any]:
    """The playbook's variables (pure)."""
    spec, pset = request.spec, request.packages
    return {
        "eprefix": spec.prefix,
        "eessi_version": spec.version,
        "family": spec.family,
        "gentoo_profile": pset.gentoo.profile,
        "gentoo_mirror": pset.gentoo.mirror,
        "gentoo_repository": pset.gentoo.repository,
        "package_set_name": set_name(spec.version, spec.family),
        "atoms": list(pset.gentoo_atoms),
        "host_files": list(pset.host_files),
        "locales": list(pset.locales),
        "bootstrap_url": BOOTSTRAP_URL,
        "jobs": request.jobs,
    }


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else next to this Python (a virtual environment that is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def playbook_argv(
    inventory: Path,
    variables: Path,
    playbook: Path,
    *,
    syntax_check: bool = False,
    program: str | None = None,
) -> list[str]:
    exe = program or find_tool("ansible-playbook") or "ansible-playbook"
    argv = [exe, "-i", str(inventory), "-e", f"@{variables}", str(playbook)]
    return [*argv, "--syntax-check"] if syntax_check else argv


def write_inputs(request: BuildRequest, directory: Path) -> tuple[Path, Path]:
    """Write ``inventory.ini`` and ``vars.json`` into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    inventory = directory / "inventory.ini"
    inventory.write_text(inventory_text(), encoding="utf-8")
    variables = directory / "vars.json"
    variables.write_text(
        json.dumps(playbook_vars(request), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return inventory, variables


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_LOCAL_TEMP", str(Path(env.get("TMPDIR", "/tmp")) / "eessi-pipeline-ansible"))
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_RETRY_FILES_ENABLED"] = "0"
    return env


def syntax_check(request: BuildRequest, directory: Path) -> str:
    """Run ``ansible-playbook --syntax-check`` on the playbook with generated inputs; return its output."""
    if find_tool("ansible-playbook") is None:
        raise CompatError(_missing_ansible())
    inventory, variables = write_inputs(request, directory)
    try:
        result = run(
            playbook_argv(inventory, variables, playbook_path(), syntax_check=True),
            timeout=SYNTAX_TIMEOUT,
            env=ansible_env(),
        )
    except CommandFailed as e:
        raise CompatError(f"the Gentoo Prefix playbook fails ansible's syntax check: {e}") from e
    return result.stdout


def _missing_ansible() -> str:
    return (
        "the gentoo-prefix backend runs ansible-playbook, which is not on PATH; install ansible-core "
        "(pip install 'ansible-core>=2.17,<2.18') in the pipeline's environment"
    )


class GentooPrefixBackend:
    """Build a layer with Gentoo Prefix through the project's Ansible playbook."""

    name = NAME

    def __init__(self, probe: Probe | None = None) -> None:
        self._probe = probe or tcp_probe

    def code_files(self) -> tuple[Path, ...]:
        return (Path(__file__), playbook_path())

    def workdir(self, request: BuildRequest) -> Path:
        return request.spec.compat_dir / "gentoo" / f"{request.spec.version}-linux-{request.spec.family}"

    def plan(self, request: BuildRequest) -> LayerPlan:
        spec, pset = request.spec, request.packages
        wd = self.workdir(request)
        argv = playbook_argv(wd / "inventory.ini", wd / "vars.json", playbook_path())
        steps = (
            PlanStep("inputs", f"write {wd / 'inventory.ini'} and {wd / 'vars.json'}"),
            PlanStep(
                "bootstrap",
                f"bootstrap Gentoo Prefix at {spec.prefix} from {pset.gentoo.mirror} (hours), profile "
                f"{pset.gentoo.profile or '(bootstrap default)'}",
                " ".join(argv),
            ),
            PlanStep(
                "package set",
                f"emerge @{set_name(spec.version, spec.family)}: {len(pset.gentoo_atoms)} atoms "
                f"({', '.join(pset.gentoo_atoms[:5])}, …)",
            ),
            PlanStep("finish", f"locales {', '.join(pset.locales)}; host links {', '.join(pset.host_files)}"),
            PlanStep("stage", f"replace {spec.staging}"),
        )
        return LayerPlan(NAME, spec, steps, (f"needs Gentoo's mirrors: {WHERE}",))

    def preflight(self, request: BuildRequest) -> None:
        if find_tool("ansible-playbook") is None:
            raise CompatError(_missing_ansible())
        gentoo = request.packages.gentoo
        for url in (gentoo.mirror, gentoo.repository, BOOTSTRAP_URL):
            why = self._probe(url)
            if why is not None:
                raise CompatError(
                    f"the gentoo-prefix backend needs Gentoo's mirrors, and {url} is out of reach from this "
                    f"machine ({why}); {WHERE}"
                )

    def build(self, request: BuildRequest, work: Path) -> BuildOutcome:
        self.preflight(request)
        wd = self.workdir(request)
        inventory, variables = write_inputs(request, wd)
        view = LayerView(work, request.spec.prefix, as_root=os.geteuid() == 0, writable=True)
        start = time.monotonic()
        try:
            view.run(
                playbook_argv(inventory, variables, playbook_path()),
                timeout=BOOTSTRAP_TIMEOUT,
                env=ansible_env(),
            )
        except CommandFailed as e:
            raise CompatError(f"the Gentoo Prefix playbook failed: {e}\nits inputs are in {wd}") from e
        packages = {a: "" for a in request.packages.gentoo_atoms}
        return BuildOutcome(
            packages, {"playbook": str(playbook_path())}, {"playbook": time.monotonic() - start}
        )
