"""pytest side of the gate: a test run writes the signed gate record of what it tested.

Two ways to name the tarball:

* ``pytest … --eessi-gate-tarball T [--eessi-gate-reframe-report R]``: the record of ``T``;
* ``pytest -m arch_<target> --eessi-gate``: every tarball a test of this run announced with
  :func:`announce` (the software acceptance tests announce the build's tarball and the ReFrame
  report of its checks), one record each.

At the end of the session the outcome of every test that ran (pass, fail, skip, error) goes into
``<T>.gate.json``, signed with the build-node key and, with ``--eessi-gate-stage``, staged for
``eessi-pipeline publish``.  Under pytest-xdist the controller writes it: workers' reports carry
the outcomes and the announcements (as user properties) to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ..errors import PipelineError
from ..settings import resolve_settings
from .policy import load_policy
from .record import CaseResult
from .write import RECORDS_FILE, WrittenRecord, write_record

ARTIFACT_PROPERTY = "eessi_gate_artifact"
KEY_ENV = "EESSI_PIPELINE_GATE_KEY"


def announce(item: pytest.Item, tarball: Path, reframe_report: Path | None) -> None:
    """Tell the gate recorder (in this process or the xdist controller) what this test checked.

    ``item`` is the test (``request.node``); the announcement travels as one of its user properties.
    """
    value = {"tarball": str(tarball), "reframe_report": str(reframe_report) if reframe_report else None}
    item.user_properties.append((ARTIFACT_PROPERTY, json.dumps(value, sort_keys=True)))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eessi-pipeline gate")
    group.addoption(
        "--eessi-gate", action="store_true", help="write and sign the record of every tarball the tests built"
    )
    group.addoption(
        "--eessi-gate-tarball", metavar="T", help="write and sign T.gate.json from this run's results"
    )
    group.addoption(
        "--eessi-gate-reframe-report", metavar="JSON", help="ReFrame report to include in the record"
    )
    group.addoption("--eessi-gate-target", metavar="SUBDIR", help="tested target (default: from the tarball)")
    group.addoption("--eessi-gate-stage", action="store_true", help="also stage the tarball for publishing")
    group.addoption(
        "--eessi-gate-key",
        metavar="FILE",
        help=f"SSH private key to sign with (default: ${KEY_ENV}, else the state dir's build-node key)",
    )


def pytest_configure(config: pytest.Config) -> None:
    wanted = config.getoption("--eessi-gate") or config.getoption("--eessi-gate-tarball")
    if wanted and not hasattr(config, "workerinput"):
        config.pluginmanager.register(GateRecorder(config), "eessi-gate-recorder")


class GateRecorder:
    """Collects every test's outcome and the announced artifacts, then writes the records."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, str] = {}
        self.artifacts: dict[str, str | None] = {}  # tarball -> ReFrame report
        self.lines: list[tuple[str, dict[str, bool]]] = []  # for the terminal summary

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == ARTIFACT_PROPERTY:
                item = json.loads(str(value))
                tarball = item["tarball"]
                self.artifacts[tarball] = item["reframe_report"] or self.artifacts.get(tarball)
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

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The gate's lines, in their own section after the progress output (never glued to it)."""
        if self.lines:
            terminalreporter.section("eessi-pipeline gate", sep="-")
            for line, markup in self.lines:
                terminalreporter.write_line(line, **markup)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        def say(line: str, **markup: bool) -> None:
            self.lines.append((line, markup))

        try:
            written = self._write()
        except PipelineError as e:
            say(f"eessi-pipeline: no gate record: {e}", red=True)
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        run_dir = self.config.getoption("--eessi-run-dir", default=None)
        if run_dir:  # for `eessi-pipeline test`, which ran this session
            listing = [
                {"record": str(w.path), "tarball": w.record.tarball, "state": w.state} for w in written
            ]
            Path(run_dir, RECORDS_FILE).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
        failed = sum(1 for o in self.results.values() if o in ("failed", "error"))
        for w in written:
            staged = {"": "", "new": ", staged", "ingested": ", already published"}.get(
                w.state, f", {w.state}"
            )
            counts = f"{len(self.results)} results, {failed} failed{staged}"
            say(f"eessi-pipeline: gate record {w.path} ({counts})")

    def _targets(self) -> list[tuple[Path, Path | None]]:
        config = self.config
        explicit = config.getoption("--eessi-gate-tarball")
        if explicit:
            report = config.getoption("--eessi-gate-reframe-report")
            return [(Path(explicit), Path(report) if report else None)]
        if not self.artifacts:
            raise PipelineError(
                "--eessi-gate: no test of this run built a tarball; select a target's acceptance tests "
                "(pytest -m arch_<target>) or name one with --eessi-gate-tarball"
            )
        return [(Path(t), Path(r) if r else None) for t, r in sorted(self.artifacts.items())]

    def _write(self) -> list[WrittenRecord]:
        config = self.config
        tests = tuple(CaseResult(node, outcome) for node, outcome in sorted(self.results.items()))
        settings = resolve_settings()
        policy = load_policy(None)
        target = config.getoption("--eessi-gate-target") or None
        key_opt = config.getoption("--eessi-gate-key") or os.environ.get(KEY_ENV)
        key = Path(key_opt) if key_opt else None
        stage = bool(config.getoption("--eessi-gate-stage"))
        state, repository = settings.state_dir, settings.repository
        return [
            write_record(
                tarball,
                tests,
                state_dir=state,
                repository=repository,
                policy=policy,
                reframe_report=report,
                target=target,
                key=key,
                stage=stage,
            )
            for tarball, report in self._targets()
        ]
