"""A real build of the default ``ci`` stack: the software layer runs on the compatibility layer (slow).

``x86_64_generic`` is built with its default stack, which links to the x86_64 compatibility layer; the
build is the one ``software_build`` makes (same state dir), the layer the one ``compat_layer("x86_64")``
builds (shared state, built once).  Checked:
STREAM's ELF interpreter is the layer's loader; in the build's namespace (overlay plus the layer at its
prefix) the layer's loader resolves every library of STREAM and zlib inside the layer or the stack, and
``stream 8`` validates with only the layer's loader, libc and libgomp loaded; the modules still load with
Lmod; NumPy's manylinux files are linked too and import with the layer's python3, whose maps show only
the layer and the stack; a second build reuses
and its inputs name the layer; a second plan finds nothing to change; the upper dir and the host's
/cvmfs stay clean.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

from eessi_pipeline.compat.elf import read_elf
from eessi_pipeline.compat.fixtures import compat_state_dir
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.software.compatlink import plan_for_upper
from eessi_pipeline.software.driver import BuildPlan, BuildResult, ensure_build, module_check_argv
from eessi_pipeline.software.fixtures import build_state_dir
from eessi_pipeline.software.overlay import OverlayView
from eessi_pipeline.software.stacks import load_stacks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel overlay at /cvmfs needs root"),
]

TARGET = "x86_64_generic"
REPO = "software.eessi.local"
STREAM = "software/STREAM/5.10-hpcc-1.5.0/bin/stream"


def _plan(pytestconfig: pytest.Config) -> BuildPlan:
    matrix = load_matrix()
    return BuildPlan.create(
        matrix,
        load_stacks(),
        matrix.target(TARGET),
        "2023.06",
        REPO,
        build_state_dir(pytestconfig),
        compat_state=compat_state_dir(pytestconfig),
    )


@pytest.fixture(scope="module")
def compat_build(pytestconfig, host_cpu, eessi_matrix) -> BuildResult:
    from eessi_pipeline.arch.select import check_build_node

    if not check_build_node(host_cpu, eessi_matrix.target(TARGET), eessi_matrix).ok:
        pytest.skip(f"this host cannot build {TARGET} natively")
    return ensure_build(_plan(pytestconfig), load_stacks())


@pytest.fixture(scope="module")
def layer(compat_build):
    from eessi_pipeline.software.compatlink import ensure_layer_link

    spec = compat_build.plan.compat_spec
    assert spec is not None
    return ensure_layer_link(spec)


def _upper_file(result: BuildResult, rel: str) -> Path:
    return result.overlay.upper / result.plan.prefix.removeprefix(result.overlay.mount).lstrip("/") / rel


def test_compat_build_stream_interpreter_is_the_layer_loader(compat_build, layer):
    info = read_elf(_upper_file(compat_build, STREAM))
    assert info is not None and info.interpreter == layer.loader
    assert layer.loader.startswith(f"/cvmfs/{REPO}/versions/2023.06/compat/linux/x86_64/")
    own = f"{compat_build.plan.prefix}/software/STREAM/5.10-hpcc-1.5.0/lib"
    assert info.rpath[0] == own and "$ORIGIN" in info.rpath  # EasyBuild's entries stay first
    assert info.rpath[-len(layer.library_dirs) :] == layer.library_dirs


def test_compat_build_loader_resolves_libc_inside_the_layer(compat_build, layer):
    stream = f"{compat_build.plan.prefix}/{STREAM}"
    out = compat_build.overlay.run([layer.loader, "--list", stream], timeout=60).stdout
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+) \(", out, re.M))
    assert resolved["libc.so.6"].startswith(layer.prefix + "/")
    assert resolved["libgomp.so.1"].startswith(layer.prefix + "/")
    assert all(p.startswith(layer.prefix + "/") for p in resolved.values()), out


def test_compat_build_stream_validates_with_the_layer_libraries_only(compat_build, layer):
    script = "module load STREAM && LD_DEBUG=libs stream 8 2>&1 && module -t list 2>&1"
    out = compat_build.overlay.run(module_check_argv(compat_build.plan.prefix, script), timeout=120).stdout
    assert "Solution Validates" in out and "STREAM/5.10-hpcc-1.5.0" in out
    loaded = re.findall(r"calling init: (\S+)", out)
    assert {Path(p).name for p in loaded} >= {"ld-linux-x86-64.so.2", "libc.so.6", "libgomp.so.1"}
    assert all(p.startswith(layer.prefix + "/") for p in loaded), loaded


def test_compat_build_zlib_and_numpy_wheel_linked_numpy_imports_on_the_layer_python(compat_build, layer):
    libz = read_elf(_upper_file(compat_build, "software/zlib/1.2.13/lib/libz.so.1.2.13"))
    assert libz is not None and libz.interpreter is None and libz.rpath[-1] == layer.library_dirs[-1]
    site = "software/SciPy-bundle/2023.07/lib/python3.11/site-packages"
    umath = read_elf(
        _upper_file(compat_build, f"{site}/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so")
    )
    assert umath is not None and umath.rpath == ("$ORIGIN/../../numpy.libs", *layer.library_dirs)
    # the layer's python3 imports it, and every object of that process is the layer's or the stack's
    maps = "import numpy; print('numpy', numpy.__version__, float(numpy.ones((8, 8)).sum())); print(open('/proc/self/maps').read())"
    script = f'module load SciPy-bundle && {layer.prefix}/usr/bin/python3 -c "{maps}"'
    out = compat_build.overlay.run(module_check_argv(compat_build.plan.prefix, script), timeout=120).stdout
    assert "numpy 1.25.1 64.0" in out
    objects = {
        line.split()[-1] for line in out.splitlines() if ".so" in line and line.split()[-1].startswith("/")
    }
    assert any("_multiarray_umath" in o for o in objects) and any("/libc.so.6" in o for o in objects)
    assert all(o.startswith((layer.prefix + "/", compat_build.plan.prefix + "/")) for o in objects), objects


def test_compat_build_second_plan_changes_nothing(compat_build, layer):
    view = compat_build.overlay
    assert isinstance(view, OverlayView)
    below = compat_build.plan.prefix.removeprefix(view.mount).strip("/") + "/software"
    plan = plan_for_upper(view, below, "x86_64", layer)
    assert not plan.edits and not plan.problems
    assert {"stream", "libz.so.1.2.13"} <= {Path(f).name for f in plan.linked}
    assert any("_multiarray_umath" in f for f in plan.linked)


def test_compat_build_reuses_and_its_inputs_name_the_layer(compat_build, layer, pytestconfig):
    again = ensure_build(_plan(pytestconfig), load_stacks())
    assert again.reused and again.tarball == compat_build.tarball
    record = (compat_build.plan.target_dir / "record.json").read_text()
    assert layer.identity in record and '"compat_link"' in record


def test_compat_build_tarball_and_upper_hold_only_the_software(compat_build):
    upper = compat_build.overlay.upper
    assert not (upper / "versions" / "2023.06" / "compat").exists()
    with tarfile.open(compat_build.tarball) as tar:
        names = tar.getnames()
    assert all(n.startswith("2023.06/software/linux/x86_64/generic/") for n in names)
    assert f"2023.06/software/linux/x86_64/generic/{STREAM}" in names
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:  # field 5: the mount point
        points = [line.split()[4] for line in fh if len(line.split()) > 4]
    assert not [p for p in points if p == f"/cvmfs/{REPO}" or p.startswith(f"/cvmfs/{REPO}/")]
    # The build's own files never reach the host's /cvmfs, and with nothing mounted there (another xdist
    # worker's test may mount below it) not even a directory of the repository is on the host's disk.
    # When either fails, the message shows what the host has there.
    built = f"/cvmfs/{REPO}/versions/2023.06/software/linux/x86_64/generic/{STREAM}"
    cvmfs_mounts = [p for p in points if p == "/cvmfs" or p.startswith("/cvmfs/")]
    assert not os.path.exists(built), (built, cvmfs_mounts, sorted(os.listdir(f"/cvmfs/{REPO}")))
    if not cvmfs_mounts:
        versions = f"/cvmfs/{REPO}/versions"
        assert not os.path.exists(versions), (versions, sorted(os.listdir(f"/cvmfs/{REPO}")))
