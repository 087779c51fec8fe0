"""pytest side of the gate: ``pytest -m arch_<target> --eessi-gate-tarball T`` writes the gate record.

At the end of the session the outcome of every test that ran (pass, fail, skip, error) is
written into ``<T>.gate.json``, signed with the build-node key and, with
``--eessi-gate-stage``, staged for ``eessi-pipeline publish``.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path

import pytest

from ..arch.cpuinfo import read_host_cpu
from ..arch.select import select_target
from ..errors import PipelineError
from ..matrix import load_matrix
from ..settings import resolve_settings
from . import signing
from .policy import load_policy
from .publish import facts_of
from .record import RECORD_SUFFIX, CaseResult, ReframeSummary, make_record, summarise_reframe
from .staging import Staging


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eessi-pipeline gate")
    group.addoption(
        "--eessi-gate-tarball", metavar="T", help="write and sign T.gate.json from this run's results"
    )
    group.addoption(
        "--eessi-gate-reframe-report", metavar="JSON", help="ReFrame report to include in the record"
    )
    group.addoption("--eessi-gate-target", metavar="SUBDIR", help="tested target (default: from the tarball)")
    group.addoption("--eessi-gate-stage", action="store_true", help="also stage the tarball for publishing")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--eessi-gate-tarball") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(GateRecorder(config), "eessi-gate-recorder")


class GateRecorder:
    """Collects every test's outcome (xdist workers report to the controller) and writes the record."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome: str
        if report.when == "call":
            outcome = report.outcome
        elif report.outcome == "failed":
            outcome = "error"  # setup or teardown failed
        elif report.when == "setup" and report.outcome == "skipped":
            outcome = "skipped"
        else:
            return
        if self.results.get(report.nodeid) not in ("failed", "error"):
            self.results[report.nodeid] = outcome

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        try:
            path = self._write()
        except PipelineError as e:
            if reporter is not None:
                reporter.write_line(f"eessi-pipeline: no gate record: {e}", red=True)
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        if reporter is not None:
            failed = sum(1 for o in self.results.values() if o in ("failed", "error"))
            reporter.write_line(
                f"eessi-pipeline: gate record {path} ({len(self.results)} results, {failed} failed)"
            )

    def _write(self) -> Path:
        config = self.config
        tarball = Path(config.getoption("--eessi-gate-tarball"))
        tests = tuple(CaseResult(node, outcome) for node, outcome in sorted(self.results.items()))
        settings = resolve_settings()
        policy = load_policy(None)
        facts = facts_of(tarball, settings.repository)
        reframe: ReframeSummary | None = None
        report_opt = config.getoption("--eessi-gate-reframe-report")
        if report_opt:
            raw = Path(report_opt).read_bytes()
            reframe = summarise_reframe(json.loads(raw), raw)
        target = config.getoption("--eessi-gate-target") or ""
        if not target and facts.content_roots and facts.content_type in ("software", "compat"):
            target = facts.content_roots[0].split("/", 3)[3]
        matrix = load_matrix(None)
        host = select_target(read_host_cpu(None), matrix).subdir
        digests = {"matrix": matrix.sha256, "policy": policy.sha256}
        record = make_record(tarball, facts.content_type, target, host, tests, reframe, digests)
        path = Path(f"{tarball}{RECORD_SUFFIX}")
        path.write_bytes(record.canonical())
        key = settings.state_dir / "keys" / "build-node"
        allowed = policy.allowed_signers_path(settings.state_dir)
        identity = f"{getpass.getuser()}@{socket.gethostname()}"
        signing.ensure_signing_key(key, identity, allowed, policy.signature_namespace)
        sig = signing.sign(key, path, policy.signature_namespace)
        if config.getoption("--eessi-gate-stage"):
            Staging(settings.state_dir).stage(tarball, path, sig)
        return path
