"""Real EasyBuild builds of the CI stack through the /cvmfs overlay (slow; kept in CI: about 20 s a target).

Per target: modules load with Lmod at the overlay's /cvmfs path and their programs run (STREAM prints
its Triad figure, the SciPy-bundle's own NumPy imports and computes), a second build reuses, the
tarball passes check_tarball and holds only new files under the target's subdir, and the host's /cvmfs
is untouched.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.driver import BuildPlan, ensure_build, module_check_argv
from eessi_pipeline.software.stacks import load_stacks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]


def _host_cvmfs() -> list[tuple[str, int]]:
    root = Path("/cvmfs")
    if not root.exists():
        return []
    return sorted(
        (str(p), p.lstat().st_mtime_ns) for p in [root, *root.rglob("*")] if not str(p).count("/") > 4
    )


@pytest.fixture(scope="module")
def cvmfs_before():
    return _host_cvmfs()


@pytest.mark.parametrize("target", ["x86_64_generic", "zen4"])
def test_build_ci_stack_modules_load_and_programs_run(
    software_build, host_cpu, eessi_matrix, target, cvmfs_before
):
    from eessi_pipeline.arch.select import check_build_node

    if not check_build_node(host_cpu, eessi_matrix.target(target), eessi_matrix).ok:
        pytest.skip(f"this host cannot build {target} natively")
    result = software_build(target)
    script = (
        "module load zlib STREAM SciPy-bundle && stream 128 && "
        "python3 -c 'import numpy; print(\"numpy\", numpy.__version__, float(numpy.linspace(0, 1, 5).sum()))' && "
        'python3 -c \'import numpy; print("from", numpy.__file__)\' && echo "root $EBROOTSCIPYMINBUNDLE" && '
        "test -f $EBROOTZLIB/lib/libz.so && module -t list 2>&1"
    )
    out = result.overlay.run(module_check_argv(result.plan.prefix, script), timeout=120).stdout
    triad = re.search(r"^Triad: ([0-9.]+) GB/s$", out, re.M)
    assert triad and float(triad.group(1)) > 0
    assert "numpy 1.25.1 2.5" in out
    root = re.search(r"^root (/cvmfs/\S+/software/SciPy-bundle/2023\.07)$", out, re.M)
    assert root and f"from {root.group(1)}/lib/python3.11/site-packages/numpy/" in out
    assert "zlib/1.2.13" in out and "STREAM/5.10-hpcc-1.5.0" in out and "SciPy-bundle/2023.07" in out
    assert _host_cvmfs() == cvmfs_before


@pytest.mark.parametrize("target", ["x86_64_generic"])
def test_build_tarball_passes_check_and_holds_only_new_files(software_build, target):
    result = software_build(target)
    report = check_tarball(result.tarball, expected_version="2023.06", repository="software.eessi.local")
    assert report is not None
    with tarfile.open(result.tarball) as tar:
        names = tar.getnames()
    assert names == sorted(names)
    top = "2023.06/software/linux/x86_64/generic/"
    assert all(n.startswith(top) for n in names)
    assert f"{top}modules/all/STREAM/5.10-hpcc-1.5.0.lua" in names
    assert f"{top}software/SciPy-bundle/2023.07/lib" in names and f"{top}.lmod/cache/spiderT.lua" in names
    assert f"{top}modules/all/SciPy-bundle/2023.07.lua" in names
    assert not any("/.locks" in n or "/.wh." in n for n in names)
    upper_files = {
        p.relative_to(result.overlay.upper / "versions").as_posix()
        for p in (result.overlay.upper / "versions").rglob("*")
    }
    assert set(names) <= upper_files
    meta = Path(str(result.tarball) + ".meta.txt").read_text()
    assert result.tarball.name in meta and "sha256sum" in meta


def test_build_second_build_reuses(software_build, tmp_path):
    first = software_build("x86_64_generic")
    matrix, stacks = load_matrix(), load_stacks()
    plan = BuildPlan.create(
        matrix,
        stacks,
        matrix.target("x86_64_generic"),
        "2023.06",
        "software.eessi.local",
        first.plan.state.parent,
    )
    again = ensure_build(plan, stacks)
    assert again.reused and again.tarball == first.tarball and again.inputs_digest == first.inputs_digest
