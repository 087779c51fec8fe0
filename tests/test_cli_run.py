"""The pure parts of ``eessi-pipeline run``: what the use step runs from the client mount and judges."""

from __future__ import annotations

from eessi_pipeline.checks.smoke import load_smoke
from eessi_pipeline.cli_run import unmet_expectations, use_script

MODULES = ("zlib/1.2.13", "STREAM/5.10-hpcc-1.5.0", "SciPy-bundle/2023.07")


def test_use_script_sources_init_loads_every_module_then_runs_each_smoke_command() -> None:
    script = use_script("software.eessi.local", "2023.06", MODULES, load_smoke())
    lines = script.splitlines()
    assert lines[:2] == ["set -e", "source /cvmfs/software.eessi.local/versions/2023.06/init/bash"]
    loads = [i for i, line in enumerate(lines) if line.startswith("module load ")]
    assert [lines[i].split()[-1] for i in loads] == list(MODULES)
    assert "stream 8" in lines and lines.index("stream 8") > max(loads)
    assert any("EBROOTSCIPYMINBUNDLE" in line for line in lines)  # the bundle's own numpy is checked


def test_unmet_expectations_names_the_modules_whose_output_is_missing() -> None:
    smoke = load_smoke()
    good = "zlib ok 1.2.13\nSolution Validates: avg error less than 1e-13\nnumpy 1.25.1 bundle 6.0 8.0\n"
    assert unmet_expectations(good, MODULES, smoke) == []
    assert unmet_expectations(good.replace("bundle", "elsewhere:/usr/lib"), MODULES, smoke) == [
        "SciPy-bundle/2023.07"
    ]
    assert unmet_expectations("", MODULES[:2], smoke) == list(MODULES[:2])
