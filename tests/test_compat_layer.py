"""The real layer of each CPU family this host runs, built once per run with the debian backend
(``compat_layer`` fixture), passes every acceptance property; each test would fail if its property broke.

The families: this host's, and every family with a package set whose programs this host runs under
qemu-user (binfmt_misc; ``bash setup.sh`` registers it): on x86_64, the aarch64 layer is built from
Debian's arm64 packages and checked under emulation.  Each family's tests carry the markers of that
family's targets (``pytest -m arch_aarch64_generic`` runs the aarch64 layer's) and its id in brackets
(``[aarch64]``, ``[aarch64-<tool>]``); ``--eessi-compat-family`` keeps one family only (a gated run).
Slow the first time (the builds: x86_64 about 20 s, aarch64 about 40 s here), then each layer is
reused while its inputs are unchanged; the aarch64 checks take about 2 minutes under emulation."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tarfile
from pathlib import Path

import archspec.cpu
import pytest

from eessi_pipeline.arch.emulation import ELF_MACHINES, EMULATION_ENV, emulation_enabled, probe
from eessi_pipeline.compat.acceptance import (
    Acceptance,
    Manifest,
    expected_cpu,
    listing_verdict,
    maps_paths,
    parse_list_output,
)
from eessi_pipeline.compat.backend import BuildRequest, get_backend
from eessi_pipeline.compat.elf import MACHINES, read_elf
from eessi_pipeline.compat.fixtures import CompatLayer, layer_families
from eessi_pipeline.compat.pack import pack_layer, read_meta
from eessi_pipeline.compat.packageset import load_package_set
from eessi_pipeline.compat.rfm_runner import run_checks
from eessi_pipeline.compat.runner import LayerView
from eessi_pipeline.compat.state import ensure_layer
from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.errors import BuildNodeError
from eessi_pipeline.matrix import load_matrix
from eessi_pipeline.proc import run

HOST_FAMILY = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
LOADERS = {
    "aarch64": "lib/ld-linux-aarch64.so.1",
    "x86_64": "lib64/ld-linux-x86-64.so.2",
}  # Debian's PT_INTERP
PACKAGE_SETS = Path(__file__).resolve().parent.parent / "matrices" / "compat"
TARGETS = load_matrix().targets

#: this host's family first, then every other family with a package set that emulation could run
EMULATED = sorted(
    p.stem for p in PACKAGE_SETS.glob("*.yaml") if p.stem in ELF_MACHINES.keys() - {HOST_FAMILY}
)
FAMILIES = [HOST_FAMILY, *EMULATED]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="the debian backend needs a Debian host"),
]


def _unavailable(family: str) -> str:
    """Why this host cannot build and run ``family``'s layer ('' when it can)."""
    if not (PACKAGE_SETS / f"{family}.yaml").exists():
        return f"no package set for this host's family {family}"
    if family == HOST_FAMILY:
        return ""
    if not emulation_enabled(os.environ):
        return f"the {family} layer runs here only under emulation, and {EMULATION_ENV}=off"
    try:
        probe(family)
    except BuildNodeError as e:
        return f"the {family} layer runs here only under emulation: {e}"
    return ""


def _marks(family: str) -> list[pytest.MarkDecorator]:
    """The layer is part of every stack of its family: `pytest -m arch_<target>` runs its tests too."""
    reason = _unavailable(family)
    return [
        *(getattr(pytest.mark, t.marker) for t in TARGETS if t.family == family),
        pytest.mark.skipif(bool(reason), reason=reason),
    ]


def _tools(family: str) -> tuple:
    return load_package_set(family).tools if (PACKAGE_SETS / f"{family}.yaml").exists() else ()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test runs once per family (``[family]``), the tool test once per family and tool, the
    emulation test once per emulated family."""
    families = layer_families(metafunc.config, FAMILIES)
    if "emulated_family" in metafunc.fixturenames:  # the emulation's own properties
        params = [pytest.param(f, marks=_marks(f), id=f) for f in families if f != HOST_FAMILY]
        nothing = pytest.param("", marks=pytest.mark.skip(reason="no emulated family in this run"), id="none")
        metafunc.parametrize("emulated_family", params or [nothing], scope="module")
    elif "tool" in metafunc.fixturenames:
        params = [
            pytest.param(f, t, marks=_marks(f), id=f"{f}-{t.label[:40]}") for f in families for t in _tools(f)
        ]
        metafunc.parametrize(("family", "tool"), params, scope="module")
    elif "family" in metafunc.fixturenames:
        metafunc.parametrize(
            "family", [pytest.param(f, marks=_marks(f), id=f) for f in families], scope="module"
        )


@pytest.fixture(scope="module")
def layer(compat_layer, family: str) -> CompatLayer:
    return compat_layer(family)


@pytest.fixture(scope="module")
def acceptance(layer: CompatLayer) -> Acceptance:
    """The checks, expecting the CPU :func:`~eessi_pipeline.compat.acceptance.expected_cpu` names."""
    return Acceptance(layer.view, Manifest.read(layer.staging))


def test_layer_build_layout(layer: CompatLayer, family: str) -> None:
    v = layer.spec.version
    assert layer.staging.as_posix().endswith(f"compat/versions/{v}/compat/linux/{family}")
    assert layer.prefix.startswith("/cvmfs/") and layer.prefix.endswith(
        f"/versions/{v}/compat/linux/{family}"
    )
    assert (layer.staging / "startprefix").is_file()
    assert {"libc6", "bash", "coreutils", "python3.11", "lmod", "pypi:archspec"} <= set(layer.record.packages)


def test_layer_binaries_carry_the_layer_loader_and_runpath(layer: CompatLayer, family: str) -> None:
    info = read_elf(layer.staging / "bin/bash")
    assert info is not None and info.interpreter == f"{layer.prefix}/{LOADERS[family]}"
    assert info.runpath and all(p.startswith(layer.prefix + "/") for p in info.runpath)
    assert not (layer.staging / LOADERS[family]).readlink().is_absolute()  # relocated: stays in the layer


def test_layer_elf_files_are_all_of_the_family(layer: CompatLayer, family: str) -> None:
    """Every ELF file of the layer (programs, libraries, objects) is for the family's machine (e_machine)."""
    machines: dict[int, list[str]] = {}
    for path in layer.staging.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as fh:
            header = fh.read(20)
        if header[:4] == b"\x7fELF" and len(header) == 20:
            machines.setdefault(int.from_bytes(header[18:20], "little"), []).append(str(path))
    assert set(machines) == {MACHINES[family]}, {m: paths[:3] for m, paths in machines.items()}
    assert len(machines[MACHINES[family]]) > 300


def test_layer_startprefix_runs_a_command(acceptance: Acceptance) -> None:
    r = acceptance.check_startprefix()
    assert r.ok, r.detail


def test_layer_libc_and_ldso_come_from_layer_per_proc_maps(acceptance: Acceptance, family: str) -> None:
    r = acceptance.check_loader()
    assert r.ok, r.detail
    assert f"/lib/{family}-linux-gnu/libc.so.6" in r.detail and acceptance.prefix in r.detail


def test_layer_maps_under_emulation_are_the_emulated_programs(compat_layer, emulated_family: str) -> None:
    """Under qemu-user a process's own /proc/self/maps is the emulated program's (the layer's files, no
    emulator), which is what the loader and locale checks read; the kernel's view of the same process,
    read by another process through /proc/<pid>/maps, maps the registered emulator as well."""
    layer = compat_layer(emulated_family)
    emulator = os.path.realpath(probe(emulated_family).interpreter)
    script = 'cat /proc/self/maps; echo @@KERNEL; cat "/proc/$$/maps"; true'  # true: bash stays the parent
    result = layer.view.run([f"{layer.prefix}/startprefix", "bash", "-c", script], timeout=120)
    own, _, kernel = result.stdout.partition("@@KERNEL")
    own_paths, kernel_paths = maps_paths(own), maps_paths(kernel)
    assert own_paths[0].startswith(f"{layer.prefix}/") and own_paths[0].endswith("/cat"), own_paths[:3]
    assert f"{layer.prefix}/lib/{emulated_family}-linux-gnu/libc.so.6" in own_paths
    assert all(p.startswith(f"{layer.prefix}/") for p in own_paths), own_paths  # no emulator, no host file
    assert emulator in kernel_paths and kernel_paths[0] == f"{layer.prefix}/bin/bash", kernel_paths[:3]


def test_layer_no_elf_resolves_a_host_library(acceptance: Acceptance) -> None:
    r = acceptance.check_no_host_libraries()
    assert r.ok, r.detail
    assert int(r.detail.split()[0]) > 300  # every ELF file was listed, not a handful


def _binary_outside(layer: CompatLayer, family: str, tmp_path: Path) -> Path:
    """A program of ``family`` that finds its libc outside the layer: natively an unrelocated copy of the
    host's /bin/true; for an emulated family (the host has no libc of it) a copy of the layer's
    ``true`` whose RUNPATH names a directory outside the layer holding a copy of the layer's libc."""
    program = tmp_path / "true"
    if family == HOST_FAMILY:
        shutil.copy("/bin/true", program)
        return program
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy(layer.staging / f"lib/{family}-linux-gnu/libc.so.6", libdir / "libc.so.6")
    shutil.copy(layer.staging / "bin/true", program)
    run(["patchelf", "--set-rpath", str(libdir), str(program)], timeout=60)
    return program


def test_layer_listing_catches_a_host_binary(
    layer: CompatLayer, family: str, acceptance: Acceptance, tmp_path: Path
) -> None:
    """The ld.so --list check is not blind: a program that resolves its libc outside the layer fails it."""
    loader = f"{layer.prefix}/{LOADERS[family]}"
    result = layer.view.run(
        [
            f"{layer.prefix}/bin/bash",
            "-c",
            f'printf "@@ELF %s\\n" "$1"; "{loader}" --list "$1"; echo "@@RC $?"',
            "bash",
            str(_binary_outside(layer, family, tmp_path)),
        ],
        timeout=60,
    )
    verdict = listing_verdict(parse_list_output(result.stdout), layer.prefix, 1)
    assert not verdict.ok and "libc.so.6 => " in verdict.detail and "a host path" in verdict.detail


def test_layer_lmod_module_avail_works(acceptance: Acceptance) -> None:
    r = acceptance.check_lmod()
    assert r.ok, r.detail


def test_layer_archspec_cpu_runs_with_layer_python(acceptance: Acceptance, family: str) -> None:
    """Natively the layer's archspec names this host's microarchitecture; under qemu-user (7.2: the guest
    reads the host's x86 /proc/cpuinfo) it names the family's generic root, ``aarch64``."""
    r = acceptance.check_archspec()
    assert r.ok, r.detail
    want = str(archspec.cpu.host().name) if family == HOST_FAMILY else family
    assert expected_cpu(family).name == want and r.detail.startswith(f"archspec cpu: {want}, ")


def test_layer_has_a_utf8_locale(acceptance: Acceptance) -> None:
    r = acceptance.check_locale()
    assert r.ok, r.detail


def test_layer_python_searches_only_the_layer(acceptance: Acceptance) -> None:
    r = acceptance.check_python_paths()
    assert r.ok, r.detail


def test_layer_host_symlinks_point_at_host_files(acceptance: Acceptance) -> None:
    r = acceptance.check_host_links()
    assert r.ok, r.detail
    assert "etc/passwd -> /etc/passwd" in r.detail


def test_layer_is_read_only_in_its_view(layer: CompatLayer) -> None:
    result = layer.view.run(
        [f"{layer.prefix}/startprefix", "touch", f"{layer.prefix}/x"], timeout=60, check=False
    )
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_layer_every_tool_of_the_package_set_runs(acceptance: Acceptance, tool) -> None:
    r = acceptance.check_tool(tool.command, tool.args, tool.expect)
    assert r.ok, r.detail


def test_layer_is_reused_while_inputs_are_unchanged(layer: CompatLayer, family: str) -> None:
    again = ensure_layer(get_backend("debian"), BuildRequest(layer.spec, load_package_set(family)))
    assert again.reused and again.reason == "inputs unchanged"
    assert again.record.inputs_digest == layer.record.inputs_digest


def test_layer_packs_into_an_ingestible_tarball_with_meta(
    layer: CompatLayer, family: str, tmp_path: Path
) -> None:
    packed = pack_layer(layer.spec, epoch=1700000000, into=tmp_path)
    v = layer.spec.version
    assert packed.tarball.name == f"eessi-{v}-compat-linux-{family}-1700000000.tar.gz"
    report = check_tarball(packed.tarball, expected_version=v)
    assert report.content_roots == (f"{v}/compat/linux/{family}",)
    with tarfile.open(packed.tarball) as tar:
        passwd = tar.getmember(f"{v}/compat/linux/{family}/etc/passwd")
        assert passwd.issym() and passwd.linkname == "/etc/passwd"
        assert tar.getmember(f"{v}/compat/linux/{family}/startprefix").isfile()
    meta = read_meta(packed.meta)
    assert (
        meta["payload"]["filename"] == packed.tarball.name and meta["payload"]["sha256sum"] == packed.sha256
    )
    assert meta["payload"]["size"] == packed.tarball.stat().st_size and set(meta["uploader"]) == {
        "username",
        "ip",
        "hostname",
    }


def test_layer_reframe_checks_all_pass(layer: CompatLayer, family: str, eessi_run_dir: Path) -> None:
    """Its report stays in the run dir (``reframe-compat/<family>``): ``eessi-pipeline run`` hands it to
    the layer's gate record."""
    out = eessi_run_dir / "reframe-compat" / family
    verdict = run_checks(layer.view, out)
    report = json.loads((out / "report.json").read_text())
    assert report["session_info"]["num_cases"] > 0
    assert verdict.ok, verdict.detail
    names = {c.name.split()[0] for c in verdict.cases}
    assert {
        "compat_startprefix",
        "compat_tool",
        "compat_loaded_libc",
        "compat_no_host_libraries",
        "compat_lmod",
        "compat_archspec",
        "compat_utf8_locale",
        "compat_host_symlink",
    } <= names


def test_layer_reframe_checks_fail_on_a_broken_layer(layer: CompatLayer, family: str, tmp_path: Path) -> None:
    """The ReFrame checks can fail: a copy of the layer without its libc fails them (and the verdict)."""
    broken = tmp_path / family
    shutil.copytree(layer.staging, broken, symlinks=True)
    (broken / f"lib/{family}-linux-gnu/libc.so.6").unlink()
    verdict = run_checks(LayerView.for_host(broken, layer.prefix), tmp_path / "rfm")
    assert not verdict.ok and verdict.num_cases > 0
    assert any(c.result == "fail" for c in verdict.cases)
