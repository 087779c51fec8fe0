"""The pure parts of ``eessi-pipeline run``: what the use step runs from the client mount and judges."""

from __future__ import annotations

from eessi_pipeline.checks.smoke import load_smoke
from eessi_pipeline.cli.run import unmet_expectations

MODULES = ("zlib/1.2.13", "STREAM/5.10-hpcc-1.5.0", "SciPy-bundle/2023.07")


def test_unmet_expectations_names_the_modules_whose_output_is_missing() -> None:
    smoke = load_smoke()
    good = "zlib ok 1.2.13\nSolution Validates: avg error less than 1e-13\nnumpy 1.25.1 bundle 6.0 8.0\n"
    assert unmet_expectations(good, MODULES, smoke) == []
    assert unmet_expectations(good.replace("bundle", "elsewhere:/usr/lib"), MODULES, smoke) == [
        "SciPy-bundle/2023.07"
    ]
    assert unmet_expectations("", MODULES[:2], smoke) == list(MODULES[:2])
