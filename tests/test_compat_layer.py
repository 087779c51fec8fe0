"""The real layer of this host's CPU family (x86_64, aarch64), built once per run with the debian backend
(``compat_layer`` fixture), passes every acceptance property; each test would fail if its property broke.
Slow the first time (the build, about 20 s here; the issue allows 5 minutes), then the layer is reused
while its inputs are unchanged."""

from __future__ import annotations

import json
import platform
import shutil
import tarfile
from pathlib import Path

import archspec.cpu
import pytest

from eessi_pipeline.compat.acceptance import Acceptance, Manifest, listing_verdict, parse_list_output
from eessi_pipeline.compat.backend import BuildRequest, get_backend
from eessi_pipeline.compat.elf import read_elf
from eessi_pipeline.compat.fixtures import CompatLayer
from eessi_pipeline.compat.pack import pack_layer, read_meta
from eessi_pipeline.compat.packageset import load_package_set
from eessi_pipeline.compat.rfm_runner import run_checks
from eessi_pipeline.compat.runner import LayerView
from eessi_pipeline.compat.state import ensure_layer
from eessi_pipeline.cvmfs.tarcheck import check_tarball
from eessi_pipeline.matrix import load_matrix

FAMILY = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
TRIPLET = f"{FAMILY}-linux-gnu"
LOADER = {"aarch64": "lib/ld-linux-aarch64.so.1"}.get(
    FAMILY, "lib64/ld-linux-x86-64.so.2"
)  # Debian's PT_INTERP
PACKAGE_SETS = Path(__file__).resolve().parent.parent / "matrices" / "compat"

pytestmark = [
    # the layer is part of every stack of its family: `pytest -m arch_<target>` runs these tests too
    *(getattr(pytest.mark, t.marker) for t in load_matrix().targets if t.family == FAMILY),
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PACKAGE_SETS / f"{FAMILY}.yaml").exists(),
        reason=f"no package set for this host's family {FAMILY}",
    ),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="the debian backend needs a Debian host"),
]


@pytest.fixture(scope="module")
def layer(compat_layer) -> CompatLayer:
    return compat_layer(FAMILY)


@pytest.fixture(scope="module")
def acceptance(layer: CompatLayer) -> Acceptance:
    return Acceptance(layer.view, Manifest.read(layer.staging), expected_cpu=str(archspec.cpu.host().name))


def test_layer_build_layout(layer: CompatLayer) -> None:
    v = layer.spec.version
    assert layer.staging.as_posix().endswith(f"compat/versions/{v}/compat/linux/{FAMILY}")
    assert layer.prefix.startswith("/cvmfs/") and layer.prefix.endswith(
        f"/versions/{v}/compat/linux/{FAMILY}"
    )
    assert (layer.staging / "startprefix").is_file()
    assert {"libc6", "bash", "coreutils", "python3.11", "lmod", "pypi:archspec"} <= set(layer.record.packages)


def test_layer_binaries_carry_the_layer_loader_and_runpath(layer: CompatLayer) -> None:
    info = read_elf(layer.staging / "bin/bash")
    assert info is not None and info.interpreter == f"{layer.prefix}/{LOADER}"
    assert info.runpath and all(p.startswith(layer.prefix + "/") for p in info.runpath)
    assert not (layer.staging / LOADER).readlink().is_absolute()  # relocated: it stays inside the layer


def test_layer_startprefix_runs_a_command(acceptance: Acceptance) -> None:
    r = acceptance.check_startprefix()
    assert r.ok, r.detail


def test_layer_libc_and_ldso_come_from_layer_per_proc_maps(acceptance: Acceptance) -> None:
    r = acceptance.check_loader()
    assert r.ok, r.detail
    assert f"/lib/{TRIPLET}/libc.so.6" in r.detail and acceptance.prefix in r.detail


def test_layer_no_elf_resolves_a_host_library(acceptance: Acceptance) -> None:
    r = acceptance.check_no_host_libraries()
    assert r.ok, r.detail
    assert int(r.detail.split()[0]) > 300  # every ELF file was listed, not a handful


def test_layer_listing_catches_a_host_binary(
    layer: CompatLayer, acceptance: Acceptance, tmp_path: Path
) -> None:
    """The ld.so --list check is not blind: an unrelocated copy of a host binary resolves the host's libc."""
    host_true = tmp_path / "true"
    shutil.copy("/bin/true", host_true)
    loader = f"{layer.prefix}/{LOADER}"
    result = layer.view.run(
        [
            f"{layer.prefix}/bin/bash",
            "-c",
            f'printf "@@ELF %s\\n" "$1"; "{loader}" --list "$1"; echo "@@RC $?"',
            "bash",
            str(host_true),
        ],
        timeout=60,
    )
    verdict = listing_verdict(parse_list_output(result.stdout), layer.prefix, 1)
    assert not verdict.ok and "a host path" in verdict.detail


def test_layer_lmod_module_avail_works(acceptance: Acceptance) -> None:
    r = acceptance.check_lmod()
    assert r.ok, r.detail


def test_layer_archspec_cpu_runs_with_layer_python(acceptance: Acceptance) -> None:
    r = acceptance.check_archspec()
    assert r.ok, r.detail


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


@pytest.mark.parametrize(
    "tool",
    load_package_set(FAMILY).tools if (PACKAGE_SETS / f"{FAMILY}.yaml").exists() else (),
    ids=lambda t: t.label[:40],
)
def test_layer_every_tool_of_the_package_set_runs(acceptance: Acceptance, tool) -> None:
    r = acceptance.check_tool(tool.command, tool.args, tool.expect)
    assert r.ok, r.detail


def test_layer_is_reused_while_inputs_are_unchanged(layer: CompatLayer) -> None:
    again = ensure_layer(get_backend("debian"), BuildRequest(layer.spec, load_package_set(FAMILY)))
    assert again.reused and again.reason == "inputs unchanged"
    assert again.record.inputs_digest == layer.record.inputs_digest


def test_layer_packs_into_an_ingestible_tarball_with_meta(layer: CompatLayer, tmp_path: Path) -> None:
    packed = pack_layer(layer.spec, epoch=1700000000, into=tmp_path)
    v = layer.spec.version
    assert packed.tarball.name == f"eessi-{v}-compat-linux-{FAMILY}-1700000000.tar.gz"
    report = check_tarball(packed.tarball, expected_version=v)
    assert report.content_roots == (f"{v}/compat/linux/{FAMILY}",)
    with tarfile.open(packed.tarball) as tar:
        passwd = tar.getmember(f"{v}/compat/linux/{FAMILY}/etc/passwd")
        assert passwd.issym() and passwd.linkname == "/etc/passwd"
        assert tar.getmember(f"{v}/compat/linux/{FAMILY}/startprefix").isfile()
    meta = read_meta(packed.meta)
    assert (
        meta["payload"]["filename"] == packed.tarball.name and meta["payload"]["sha256sum"] == packed.sha256
    )
    assert meta["payload"]["size"] == packed.tarball.stat().st_size and set(meta["uploader"]) == {
        "username",
        "ip",
        "hostname",
    }


def test_layer_reframe_checks_all_pass(layer: CompatLayer, eessi_run_dir: Path) -> None:
    """Its report stays in the run dir: ``eessi-pipeline run`` hands it to the layer's gate record."""
    out = eessi_run_dir / "reframe-compat"
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


def test_layer_reframe_checks_fail_on_a_broken_layer(layer: CompatLayer, tmp_path: Path) -> None:
    """The ReFrame checks can fail: a copy of the layer without its loader fails them (and the verdict)."""
    broken = tmp_path / FAMILY
    shutil.copytree(layer.staging, broken, symlinks=True)
    (broken / f"lib/{TRIPLET}/libc.so.6").unlink()
    verdict = run_checks(LayerView.for_host(broken, layer.prefix), tmp_path / "rfm")
    assert not verdict.ok and verdict.num_cases > 0
    assert any(c.result == "fail" for c in verdict.cases)
