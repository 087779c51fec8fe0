"""Reuse: the inputs digest, the build record, the lock that makes concurrent callers build once."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from eessi_pipeline.compat.backend import BuildOutcome, BuildRequest, LayerPlan
from eessi_pipeline.compat.layout import LayerSpec
from eessi_pipeline.compat.packageset import load_package_set
from eessi_pipeline.compat.state import digest, ensure_layer, host_release, inputs, read_record
from eessi_pipeline.errors import CompatError


class FakeBackend:
    """Writes a tiny tree; counts builds; can be told to fail or to be slow."""

    name = "fake"

    def __init__(self, code: Path, delay: float = 0.0, fail: bool = False) -> None:
        self.code, self.delay, self.fail, self.builds = code, delay, fail, 0
        self._lock = threading.Lock()

    def code_files(self) -> tuple[Path, ...]:
        return (self.code,)

    def plan(self, request: BuildRequest) -> LayerPlan:
        return LayerPlan(self.name, request.spec, ())

    def preflight(self, request: BuildRequest) -> None:
        return None

    def build(self, request: BuildRequest, work: Path) -> BuildOutcome:
        with self._lock:
            self.builds += 1
        time.sleep(self.delay)
        if self.fail:
            raise CompatError("fake build failed")
        (work / "startprefix").write_text(f"build {self.builds}\n")
        return BuildOutcome({"pkg": "1"}, {"n": self.builds}, {"all": self.delay})


@pytest.fixture
def request_(tmp_path: Path) -> BuildRequest:
    spec = LayerSpec.create("2023.06", "x86_64", tmp_path / "state", repository="software.eessi.local")
    return BuildRequest(spec, load_package_set("x86_64"))


def test_state_builds_then_reuses_then_rebuilds_on_changed_inputs(
    tmp_path: Path, request_: BuildRequest
) -> None:
    code = tmp_path / "code.py"
    code.write_text("v1")
    backend = FakeBackend(code)
    first = ensure_layer(backend, request_, release="debian 12")
    assert not first.reused and first.reason == "no build record" and backend.builds == 1
    assert read_record(request_.spec) == first.record and first.record.packages == {"pkg": "1"}
    again = ensure_layer(backend, request_, release="debian 12")
    assert again.reused and backend.builds == 1
    code.write_text("v2")  # the backend's code changed
    assert ensure_layer(backend, request_, release="debian 12").reason == "its inputs changed"
    assert ensure_layer(backend, request_, release="debian 13").reason == "its inputs changed"
    assert backend.builds == 3
    assert ensure_layer(backend, request_, release="debian 13", force=True).reason == "--force"
    (request_.spec.staging / "startprefix").unlink()
    assert "missing or incomplete" in ensure_layer(backend, request_, release="debian 13").reason


def test_state_inputs_cover_prefix_and_package_set(tmp_path: Path, request_: BuildRequest) -> None:
    code = tmp_path / "c.py"
    code.write_text("x")
    b = FakeBackend(code)
    base = digest(inputs(b, request_, "debian 12"))
    other_prefix = dataclasses.replace(
        request_, spec=dataclasses.replace(request_.spec, prefix="/opt/other/x86_64")
    )
    assert digest(inputs(b, other_prefix, "debian 12")) != base
    other_set = dataclasses.replace(
        request_, packages=dataclasses.replace(request_.packages, sha256="0" * 64)
    )
    assert digest(inputs(b, other_set, "debian 12")) != base
    assert digest(inputs(b, request_, "debian 12")) == base


def test_state_concurrent_callers_build_once(tmp_path: Path, request_: BuildRequest) -> None:
    code = tmp_path / "c.py"
    code.write_text("x")
    backend = FakeBackend(code, delay=0.5)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_layer(backend, request_, release="r")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.builds == 1
    assert sorted(r.reused for r in results) == [False, True, True]


def test_state_failed_build_keeps_the_previous_layer(tmp_path: Path, request_: BuildRequest) -> None:
    code = tmp_path / "c.py"
    code.write_text("x")
    ensure_layer(FakeBackend(code), request_, release="r")
    code.write_text("y")
    with pytest.raises(CompatError, match="fake build failed"):
        ensure_layer(FakeBackend(code, fail=True), request_, release="r")
    assert (request_.spec.staging / "startprefix").read_text() == "build 1\n"
    assert not request_.spec.staging.with_name("x86_64.new").exists()


def test_state_lock_timeout_names_the_holder(tmp_path: Path, request_: BuildRequest) -> None:
    code = tmp_path / "c.py"
    code.write_text("x")
    slow = FakeBackend(code, delay=2.0)
    t = threading.Thread(target=lambda: ensure_layer(slow, request_, release="r"))
    t.start()
    time.sleep(0.5)
    with pytest.raises(CompatError, match=r"\.lock is held by pid \d+"):
        ensure_layer(FakeBackend(code), request_, release="r", lock_timeout=0.5)
    t.join()


def test_state_host_release_reads_os_release(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    assert host_release(f) == "debian 12"
