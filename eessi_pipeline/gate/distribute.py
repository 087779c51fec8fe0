"""After a publish into the embedded Stratum 0: snapshot the Stratum 1, run the post-publish checks.

Both only when the Stratum services run; the checks (``pytest <checks> --infra-config``, testinfra
against the live network) are recorded in ``<state>/audit.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .. import proc
from ..cvmfs.replica import snapshot
from ..errors import PublishError
from ..extras import has_module, install_hint
from ..matrix import PROJECT_ROOT
from ..report import say
from ..services import stratum1
from ..services.stack import Stack
from ..trust import refuse_if_writable


def distribute(state_dir: Path, repository: str, checks: str) -> None:
    """After an ingest: snapshot the Stratum 1 and run the post-publish checks, when the network is up."""
    statuses = {s.name: s for s in Stack(state_dir).status()}
    if not all(n in statuses and statuses[n].running for n in ("stratum0", "stratum1")):
        say(
            "publish",
            "the Stratum services are not running: no snapshot and no post-publish checks "
            "(start them with `eessi-pipeline stratum up`)",
        )
        return
    key_file = state_dir / "keys" / f"{repository}.pub"
    s0 = f"{statuses['stratum0'].url}/{repository}"
    replica = stratum1.Stratum1Paths(state_dir).replica(repository)
    refuse_if_writable(key_file, "the master public key", PublishError)
    result = snapshot(s0, replica, key_file.read_bytes())
    stratum1.write_info(state_dir)
    say("publish", f"Stratum 1 at revision {result.revision}")
    if not checks:
        return
    if not (has_module("pytest") and has_module("testinfra")):
        say("publish", f"post-publish checks ({checks}) skipped: {install_hint('testinfra')}")
        _audit(state_dir, {"post_publish_checks": checks, "revision": result.revision, "outcome": "skipped"})
        return
    settings: dict[str, Any] = {
        "repository": repository,
        "stratum0": s0,
        "stratum1": [f"{statuses['stratum1'].url}/{repository}"],
        "master_key": str(key_file),
    }
    proxy = statuses.get("proxy")
    if proxy is not None and proxy.running:
        settings["proxy"] = proxy.url
    config = state_dir / "infra.yaml"
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML
    argv = [
        sys.executable,
        "-m",
        "pytest",
        checks,
        "--infra-config",
        str(config),
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    done = proc.run(argv, timeout=600, check=False, cwd=PROJECT_ROOT)  # the policy's path is the checkout's
    verdict = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode}):\n{done.tail(15)}"
    say("publish", f"post-publish checks ({checks}) {verdict}")
    entry = {"post_publish_checks": checks, "revision": result.revision,
             "outcome": "passed" if done.returncode == 0 else "failed"}  # fmt: skip
    _audit(state_dir, entry)


def _audit(state_dir: Path, entry: dict[str, Any]) -> None:
    with (state_dir / "audit.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
