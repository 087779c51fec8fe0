"""The EESSI test-suite's NumPy test on the built SciPy-bundle (slow; real build, real ReFrame).

Per target (``pytest -m arch_<target>``, by default the targets CI builds): the test-suite 1.1.0
(PyPI ``eessi-testsuite``) runs its ``EESSI_NumPy`` test at scale ``1_core`` with small matrices
through the configuration the pipeline generates, inside the build overlay; at least one case runs,
every case passes, and the NumPy that ran is the bundle's (its version, its module).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eessi_pipeline.checks.rfmconfig import TargetPrefix
from eessi_pipeline.checks.testsuite import run_testsuite

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]
pytest.importorskip(
    "eessi.testsuite", reason="the EESSI test-suite is not installed (eessi-testsuite==1.1.0)"
)


def test_testsuite_numpy_runs_and_passes_on_the_bundle(software_target, software_build, tmp_path) -> None:
    built = software_build(software_target.name)
    (bundle,) = [ec for ec in built.plan.stack.easyconfigs if ec.name == "SciPy-bundle"]
    (numpy,) = [ext for ext in bundle.extensions if ext.name == "numpy"]
    outcome = run_testsuite(
        built.overlay, TargetPrefix(software_target, built.plan.prefix, built.plan.compat_prefix), tmp_path
    )
    result = outcome.result
    assert result.num_cases > 0 and result.cases, result.failures
    assert result.ok and outcome.returncode == 0, result.failures
    assert all(c.result == "pass" and c.name.startswith("EESSI_NumPy ") for c in result.cases)
    assert {p.metric for c in result.cases for p in c.perf} == {"dot", "svd", "cholesky", "eigendec", "inv"}
    (case,) = json.loads(outcome.paths.report.read_text(encoding="utf-8"))["runs"][-1]["testcases"]
    assert case["scale"] == "1_core" and case["modules"] == [bundle.module]
    stdout = (Path(case["outputdir"]) / "rfm_job.out").read_text(encoding="utf-8")
    assert f"NumPy version: {numpy.version}\n" in stdout
    assert "Dotted two 512x512 matrices in" in stdout
