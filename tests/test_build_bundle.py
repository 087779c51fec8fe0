"""Bundles (``exts_list``) in the easyconfig reader and the source plan: SciPy-bundle's wheels."""

from __future__ import annotations

from pathlib import Path

import pytest

from eessi_pipeline.errors import BuildError
from eessi_pipeline.software.easyconfig import Extension, parse_easyconfig
from eessi_pipeline.software.sources import plan_sources
from eessi_pipeline.software.stacks import load_stacks

SHA_A, SHA_B = "a" * 64, "b" * 64


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "B-1.eb"
    p.write_text("easyblock = 'Bundle'\nname = 'B-x'\nversion = '1'\ntoolchain = SYSTEM\n" + body)
    return p


def test_bundle_extension_sources_resolve_against_the_extension(tmp_path):
    p = _write(
        tmp_path,
        "exts_default_options = {'source_tmpl': '%(name)s-%(version)s.tar.gz'}\n"
        "exts_list = [\n"
        "    ('numpy', '1.25.1', {'sources': ['%(name)s-%(version)s-cp311.whl'], 'checksums': ['"
        + SHA_A
        + "']}),\n"
        "    ('six', '1.16.0', {'checksums': ['" + SHA_B + "']}),\n"
        "    ('plain', '2'),\n"
        "]\n",
    )
    ec = parse_easyconfig(p)
    assert ec.extensions == (
        Extension("numpy", "1.25.1"),
        Extension("six", "1.16.0"),
        Extension("plain", "2"),
    )
    assert [(s.filename, s.sha256) for s in ec.sources] == [
        ("numpy-1.25.1-cp311.whl", SHA_A),
        ("six-1.16.0.tar.gz", SHA_B),
        ("plain-2.tar.gz", None),
    ]
    assert ec.module == "B-x/1" and ec.source_dir == "b/B-x"  # extension sources live with the bundle


@pytest.mark.parametrize(
    ("exts", "message"),
    [
        ("['numpy']", r"exts_list\[0\] \(numpy\) has no version and no source"),
        ("[('numpy',)]", r"exts_list\[0\] is not \(name, version\[, \{options\}\]\)"),
        ("[('numpy', '1', 'x')]", r"exts_list\[0\] is not \(name, version"),
        (
            "[('numpy', '1', {'sources': ['a', 'b'], 'checksums': ['" + SHA_A + "']})]",
            r"exts_list \(numpy\): 2 source\(s\) but 1 checksum\(s\)",
        ),
        (
            "[('numpy', '1', {'checksums': ['short']})]",
            r"exts_list \(numpy\): checksums\[0\] is not a sha256",
        ),
    ],
    ids=["name-only", "no-version", "options-not-dict", "checksum-count", "bad-checksum"],
)
def test_bundle_bad_extension_is_refused_naming_it(tmp_path, exts, message):
    with pytest.raises(BuildError, match=message):
        parse_easyconfig(_write(tmp_path, f"exts_list = {exts}\n"))


def test_scipy_bundle_installs_numpy_from_a_checksummed_wheel_of_pypi():
    stacks = load_stacks()
    ci = stacks.stack("2023.06", "ci")
    (bundle,) = [ec for ec in ci.easyconfigs if ec.name == "SciPy-bundle"]
    assert bundle.module == "SciPy-bundle/2023.07" and Extension("numpy", "1.25.1") in bundle.extensions
    text = bundle.path.read_text()
    assert "easyblock = 'Bundle'" in text and "'easyblock': 'PythonPackage'" in text
    wanted = {w.filename: w for w in plan_sources((bundle,), stacks)}
    wheel = wanted["numpy-1.25.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    assert wheel.subdir == "s/SciPy-bundle" and wheel.sha256 and len(wheel.sha256) == 64
    assert [(p.kind, p.what) for p in wheel.providers] == [("pypi", "numpy==1.25.1")]


def test_no_stack_names_the_plain_numpy_module_any_more():
    stacks = load_stacks()
    for f in stacks.stack_files:
        assert not [m for m in stacks.stack(f.version, f.name).modules if m.startswith("numpy/")], f.name
