"""Real ReFrame runs of checks/gpu on a real GPU stack build (slow; about 15 s build + 3 s checks a target).

One instance per accelerator target, marked ``arch_<cpu>_<ccXY>`` (``pytest -m arch_zen4_cc90``);
without ``-m`` only the accelerator targets of ``$EESSI_PIPELINE_CHECK_TARGETS`` run (default: the
zen4 ones, next to the CPU targets CI checks).  The GPU stack is built into a temporary state dir
(``gpu build``), then ReFrame runs the smoke checks of every GPU module, the device query and the
bandwidth check.  On a host without an NVIDIA GPU the two device checks are skipped by ReFrame and
here, with the reason; the gate policy (``software-accel``) then refuses the accelerator tarball.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from eessi_pipeline.arch.accel import AccelError, query_nvidia_smi
from eessi_pipeline.checks.runner import ChecksOutcome
from eessi_pipeline.cli import main
from eessi_pipeline.gpu.checks import run_gpu_checks
from eessi_pipeline.matrix import AccelTarget, load_matrix
from eessi_pipeline.pytest_plugin import check_targets

pytestmark = [pytest.mark.slow]

MATRIX = load_matrix()
ACCEL = MATRIX.accel_targets()
DEVICE_CHECKS = ("gpu_device_query_check", "gpu_bandwidth_check")
SMOKE_MODULES = ("CUDA/13.5.37-pypi", "GPUBandwidth/0.1-CUDA-13.5.37-pypi")


def _why_no_gpu() -> str:
    try:
        acc = query_nvidia_smi()
    except AccelError as e:
        return str(e)
    return "" if acc.subdir else "; ".join(acc.notes)


def _param(at: AccelTarget) -> Any:
    return pytest.param(at, id=at.name, marks=getattr(pytest.mark, at.marker))


def _selected(config: pytest.Config, at: AccelTarget) -> bool:
    expr = config.getoption("markexpr") or ""
    return at.marker in expr or at.name in check_targets() or at.cpu.name in check_targets()


@pytest.fixture(scope="module", params=[_param(at) for at in ACCEL])
def gpu_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, eessi_run_dir: Path
) -> tuple[AccelTarget, ChecksOutcome, Path]:
    """The GPU stack built (in a temporary state dir) and checked; ReFrame's files, its report among
    them, go to ``<run dir>/gpu-<target>/`` (``--eessi-run-dir DIR`` keeps them for a gate record)."""
    at: AccelTarget = request.param
    if not _selected(request.config, at):
        pytest.skip(f"{at.name}: select it with -m {at.marker} (or $EESSI_PIPELINE_CHECK_TARGETS)")
    state = tmp_path_factory.mktemp(f"gpu-{at.name}")
    out = io.StringIO()
    rc = main(["--state-dir", str(state), "gpu", "build", "--target", at.name, "--json"], out)
    assert rc == 0, f"gpu build --target {at.name} failed"
    prefix = Path(json.loads(out.getvalue())["prefix"])
    return at, run_gpu_checks(at, prefix, eessi_run_dir / f"gpu-{at.name}"), state


def test_gpu_reframe_run_is_complete(gpu_run: tuple[AccelTarget, ChecksOutcome, Path]) -> None:
    at, outcome, _ = gpu_run
    names = sorted(c.name for c in outcome.result.cases)
    assert names == sorted([*DEVICE_CHECKS, *(f"gpu_module_smoke_check %module={m}" for m in SMOKE_MODULES)])
    assert not outcome.result.failures, outcome.result.failures
    assert all(c.system == f"eessi_local:{at.name}" for c in outcome.result.cases)


@pytest.mark.parametrize("module", SMOKE_MODULES)
def test_gpu_module_smoke(gpu_run: tuple[AccelTarget, ChecksOutcome, Path], module: str) -> None:
    _, outcome, _ = gpu_run
    case = next(c for c in outcome.result.cases if c.name == f"gpu_module_smoke_check %module={module}")
    assert case.result == "pass", case.fail_reason


@pytest.mark.parametrize("check", DEVICE_CHECKS)
def test_gpu_device_case(gpu_run: tuple[AccelTarget, ChecksOutcome, Path], check: str) -> None:
    at, outcome, _ = gpu_run
    case = next(c for c in outcome.result.cases if c.name == check)
    if case.result == "skip":
        pytest.skip(f"no usable NVIDIA GPU here ({_why_no_gpu()}): ReFrame skipped {check} for {at.name}")
    assert case.result == "pass", case.fail_reason
    if check == "gpu_bandwidth_check":
        assert {p.metric for p in case.perf} == {"Copy", "Triad"}
        assert all(p.reference is not None and p.ok for p in case.perf), case.perf


def test_gpu_checks_command_reports_each_case(gpu_run: tuple[AccelTarget, ChecksOutcome, Path]) -> None:
    at, _, state = gpu_run
    out = io.StringIO()
    rc = main(["--state-dir", str(state), "gpu", "checks", "--target", at.name, "--json"], out)
    data = json.loads(out.getvalue())
    assert rc == 0 and data["target"] == at.name
    results = {c["name"]: c["result"] for c in data["cases"]}
    assert results[f"gpu_module_smoke_check %module={SMOKE_MODULES[0]}"] == "pass"
    assert set(results) >= set(DEVICE_CHECKS)
