"""``eessi-pipeline run [--target NAME]``: the whole flow for one target on the embedded defaults.

What the README's main job (``bash setup.sh``) runs, and what the end-to-end test runs:

1. the embedded repository exists (``repo init`` once) and the Stratum services run (``stratum up``);
2. the compatibility layer of the target's family: built or reused, and unless the repository holds it,
   gated by its own tests (``tests/test_compat_layer.py`` with its ReFrame checks), see
   :mod:`eessi_pipeline.layers`;
3. the init scripts: ``init build``, their tests (``tests/test_initscript.py``) with the gate;
4. the target's software: ``eessi-pipeline test --target`` — build on the compatibility layer (reused
   when unchanged), tarball checks, ReFrame smoke and performance checks — with the gate;
5. ``publish``: only what the gate accepts is ingested (compat, init, then software), the repository
   root gets EESSI's ``host_injections`` variant symlink once, then the Stratum 1 snapshot and the
   post-publish infra checks;
6. use: in a private mount namespace the client mounts ``/cvmfs/<repo>`` through squid and the
   Stratum 1; for each init entry point (``init/bash``, ``init/lmod/bash``) the layer's bash sources it,
   lists and loads every module of the stack, and runs each module's smoke command
   (``matrices/smoke.yaml``), whose expected output must appear; every process of it is sampled
   (``/proc/<pid>/maps``, :mod:`eessi_pipeline.checks.procmaps`) and may map files of ``/cvmfs/<repo>``
   only;
7. the services stop again unless ``--keep-running``.

Each step prints ``[run] …`` progress on stderr; a failed step stops the run with its reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..acceptance import TestRunFailed, failure_line, pipeline_env, run_acceptance
from ..arch.cpuinfo import read_host_cpu
from ..arch.emulation import Emulator, emulators_for, machine_cpuinfo, probe
from ..arch.select import require_build_node, select_from_environ
from ..checks.procmaps import session_problems
from ..checks.smoke import SmokeTable, load_smoke
from ..cvmfs.client import ClientConfig
from ..cvmfs.nsrun import run_mounted
from ..cvmfs.reader import open_repository
from ..cvmfs.repository import Repository
from ..errors import GateRefused, PipelineError
from ..extras import require
from ..gate.distribute import distribute
from ..gate.policy import load_policy
from ..gate.publish import publish
from ..initscript import build_init_tarball
from ..initscript import render as render_init
from ..layers import ENTRY_POINTS, ensure_host_injections, gate_compat, use_spec
from ..matrix import PROJECT_ROOT, Matrix, Target, load_matrix
from ..proc import run_echoed
from ..services.plans import resolve_ports
from ..services.stack import Stack
from ..settings import Settings, resolve_settings
from ..software.stacks import load_stacks
from .options import add_json, add_setting, add_stack_version

INIT_TESTS = "tests/test_initscript.py"


def _say(msg: str) -> None:
    sys.stderr.write(f"[run] {msg}\n")
    sys.stderr.flush()


def unmet_expectations(output: str, modules: tuple[str, ...], smoke: SmokeTable) -> list[str]:
    """The modules whose smoke pattern the output lacks (pure)."""
    return [
        m for m in modules if not re.search(smoke.check_for(m.split("/")[0]).expect, output, re.MULTILINE)
    ]


def _init_published(settings: Settings, matrix: Matrix, version: str) -> bool:
    """Does the repository already hold exactly the init scripts this matrix renders?"""
    repo = Repository(settings.state_dir, settings.repository)
    if not repo.exists:
        return False
    wanted = render_init(matrix, version, settings.repository)
    with open_repository(repo.paths.web_root / settings.repository) as reader:
        try:
            return all(reader.read_file(f"/versions/{version}/init/{n}") == d for n, d in wanted.items())
        except PipelineError:
            return False


def _gate_init(settings: Settings, matrix: Matrix, version: str, run_dir: Path) -> Path | None:
    if _init_published(settings, matrix, version):
        _say("init scripts: the repository already has these; nothing to build")
        return None
    tarball = build_init_tarball(matrix, version, settings.repository, settings.state_dir / "tarballs")
    argv = [
        sys.executable, "-m", "pytest", INIT_TESTS, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        f"--junitxml={run_dir / 'init-junit.xml'}", f"--eessi-gate-tarball={tarball}", "--eessi-gate-stage",
    ]  # fmt: skip
    _say(f"init scripts: {tarball.name}: {INIT_TESTS}")
    done = run_echoed(argv, timeout=900, echo=sys.stderr, cwd=PROJECT_ROOT, env=pipeline_env(settings))
    if done.returncode != 0:
        raise TestRunFailed(f"the init script tests failed (pytest exit {done.returncode}); see {run_dir}")
    return tarball


def _client_config(settings: Settings, stack: Stack) -> ClientConfig:
    statuses = {s.name: s for s in stack.status()}
    proxy = statuses.get("proxy")
    return ClientConfig(
        settings.repository,
        (statuses["stratum1"].url,),
        settings.state_dir / "client-cache",
        settings.state_dir / "keys" / f"{settings.repository}.pub",
        proxy.url if proxy is not None and proxy.running else None,
    )


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    require("pytest", "`eessi-pipeline run` (its gate runs the acceptance tests)")
    settings = resolve_settings(version=args.version, state_dir=getattr(args, "state_dir", None),
                                repository=args.repo)  # fmt: skip
    matrix = load_matrix()
    version = settings.version or matrix.default_version
    host = read_host_cpu(None)
    target: Target | None = (
        matrix.target(args.target)
        if args.target
        else select_from_environ(host, matrix, version, os.environ).target
    )
    if target is None:
        raise PipelineError("the matrix builds no target for this host's CPU family: nothing to run")
    require_build_node(host, target, matrix, version, emulators_for(host, target))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = settings.state_dir / "runs" / f"{target.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    repo = Repository(settings.state_dir, settings.repository)
    if not repo.exists:
        repo.init()
        _say(f"created the embedded repository {settings.repository} in {settings.state_dir}")
    stack = Stack(settings.state_dir)
    started = not all(s.running for s in stack.status())
    if started:  # on the ports of the environment (or the defaults), as `stratum up` chooses them
        stack = Stack(settings.state_dir, resolve_ports())
        stack.up()
        _say("Stratum 0, Stratum 1 and the squid proxy are up (loopback only)")
    summary: dict[str, Any] = {
        "target": target.name,
        "repository": settings.repository,
        "run_dir": str(run_dir),
    }
    try:
        compat = gate_compat(settings.state_dir, settings.repository, version, target.family, run_dir,
                             pipeline_env(settings), _say)  # fmt: skip
        summary["compat"] = compat.to_json()
        _gate_init(settings, matrix, version, run_dir)
        _say(
            f"software for {target.subdir} on {compat.prefix}: build, tarball and ReFrame checks, gate record"
        )
        tested = run_acceptance(settings, target, run_dir, stage=True)
        summary["test"] = tested
        if tested["returncode"] != 0:
            raise TestRunFailed(failure_line(target, tested))
        _say("publish: the gate judges every staged tarball")
        policy = load_policy(None)
        outcomes = publish(settings.state_dir, settings.repository, policy, None)
        for o in outcomes:
            _say(o.line())
        summary["published"] = [{"tarball": o.tarball, "accepted": o.accepted, "reasons": list(o.reasons),
                                 "revision": o.revision_after} for o in outcomes]  # fmt: skip
        refused = [o for o in outcomes if not o.accepted]
        if refused:
            raise GateRefused("; ".join(o.line() for o in refused))
        ingested = {o.tarball.split("-")[2] for o in outcomes}
        for layer in ("compat", "init", "software"):
            if layer not in ingested:
                _say(f"{layer}: nothing new to publish (the repository already has it)")
        revision = ensure_host_injections(settings.state_dir, settings.repository)
        summary["host_injections_revision"] = revision
        if revision is not None:
            _say(
                f"host_injections: published the variant symlink at the repository root (revision {revision})"
            )
        distribute(settings.state_dir, settings.repository, policy.post_publish_checks)
        summary["use"] = _use(settings, stack, target, version, run_dir)
    finally:
        if started and not args.keep_running:
            stack.down()
            _say("services stopped (use --keep-running to keep them)")
    if args.json:
        out.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        out.write(summary["use"]["output"])
    return 0


def _use(settings: Settings, stack: Stack, target: Target, version: str, run_dir: Path) -> dict[str, Any]:
    """Each init entry point as a user meets it, from the client mount; every process sampled."""
    modules = load_stacks().stack_for(version, target).modules
    smoke = load_smoke()
    config = _client_config(settings, stack)
    allowed = [f"/cvmfs/{settings.repository}"]
    session = emulated_session(target.family)
    if session.emulator is not None:
        allowed += session.emulator_files  # the kernel hands every Arm program to qemu-user: it maps qemu
        shown = " ".join(f"{k}={v}" for k, v in sorted(session.env.items()))
        _say(f"use: an {target.family} machine under {session.emulator.label} ({shown})")
    entries: dict[str, Any] = {}
    for entry in ENTRY_POINTS:
        _say(f"use: /cvmfs/{settings.repository} mounted by the client in a private namespace; "
             f"init/{entry}, module avail, load, smoke commands, /proc/<pid>/maps of each")  # fmt: skip
        spec = use_spec(settings.repository, version, target.family, entry, modules, smoke, session.env)
        name = entry.replace("/", "-")
        spec_file, out_file = run_dir / f"use-{name}.spec.json", run_dir / f"use-{name}.json"
        spec_file.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        out_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "eessi_pipeline.checks.procmaps", str(spec_file), str(out_file)]
        done = run_mounted(config, settings.state_dir, argv, capture=True, timeout=900)
        if done.returncode != 0 or not out_file.exists():
            raise PipelineError(
                f"init/{entry}: the session from the client mount did not run (exit {done.returncode}): "
                f"{(done.stdout + done.stderr).strip().splitlines()[-3:]}"
            )
        result = json.loads(out_file.read_text(encoding="utf-8"))
        output = session_output(result)
        problems = session_problems(result, allowed, setup_data_dirs(target.family))
        problems += [f"init/{entry}: {line}" for line in error_lines(result["setup"]["output"])]
        unmet = unmet_expectations(output, modules, smoke)
        if unmet:
            problems.append(f"{', '.join(unmet)} did not print what matrices/smoke.yaml expects")
        if problems:
            raise PipelineError(
                f"init/{entry} from the client mount: {'; '.join(problems[:5])} (see {out_file})"
            )
        entries[entry] = {"output": output, "result": str(out_file)}
    return {"output": entries["bash"]["output"], "modules": list(modules), "entries": entries}


@dataclass(frozen=True, slots=True)
class Session:
    """How a client session presents the target's machine: natively, or emulated with an Arm cpuinfo."""

    emulator: Emulator | None = None
    env: dict[str, str] = field(default_factory=dict)
    emulator_files: tuple[str, ...] = ()


def emulated_session(family: str) -> Session:
    """A native session for this host's family; for another family, its emulator and machine files."""
    if family == read_host_cpu(None).family:
        return Session()
    emulator = probe(family)  # BuildNodeError with the fix when none is registered
    cpuinfo = machine_cpuinfo(family)
    env = {"EESSI_MACHINE_TYPE": family, "EESSI_PROC_CPUINFO": str(cpuinfo)}
    files = tuple(sorted({emulator.interpreter, os.path.realpath(emulator.interpreter)}))
    return Session(emulator, env, files)


def setup_data_dirs(family: str) -> tuple[str, ...]:
    """Host data the setup shell may have mapped before sourcing the init script (pure): the layer's
    Debian glibc has the host's locale and gconv directories compiled in; once the init script has
    set ``LOCPATH`` and ``GCONV_PATH``, every command it starts uses the layer's (checked)."""
    return ("/usr/lib/locale", f"/usr/lib/{family}-linux-gnu/gconv")


def session_output(result: dict[str, Any]) -> str:
    """What the user saw: the setup's output, then each smoke command and its output (pure)."""
    parts = [result["setup"]["output"]]
    for c in result["commands"]:
        parts += [f"$ {c['command']}\n", c["run"]["output"]]
    return "".join(parts)


_ERROR = re.compile(r"(?i)\b(error|warning)\b|not found|no such file")


def error_lines(output: str) -> list[str]:
    """Lines of an init's output that report a problem (pure)."""
    return [line.strip() for line in output.splitlines() if _ERROR.search(line)]


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="the whole flow for one target: build, test, gate, publish, distribute, use from a client"
    )
    p.add_argument("--target", metavar="NAME", help="target name or subdir (default: this host's)")
    add_stack_version(p)
    add_setting(p, "repository")
    add_setting(p, "state_dir")
    p.add_argument("--keep-running", action="store_true", help="leave the Stratum services running")
    add_json(p, "print a JSON summary")
    p.set_defaults(handler=cmd_run)
